//! The untyped shape of a workflow, as the builders produce it and the tables store it.
//!
//! The typed builders ([`super::Chain`], [`super::Group`], [`super::Chord`]) check at compile
//! time that each step's input is the previous one's output; what they build is this tree of
//! [`Spec`]s, which [`flatten`] numbers in preorder into the rows of `workflow_nodes` (see the
//! migration `0021_workflows.sql` for why preorder).

use serde::{Deserialize, Serialize};

use super::WorkflowError;

/// Most members of one group (a chord's header included).
pub const MAX_GROUP: usize = 100_000;
/// Most nodes in one workflow (every step, chain and group counts one).
pub const MAX_NODES: usize = 250_000;

/// What a failed member does to its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFailure {
    /// The group fails once every member has finished; what follows it does not run.
    Fail,
    /// The group completes with every member's outcome, failures included.
    Collect,
}

impl OnFailure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Collect => "collect",
        }
    }
}

/// Enqueue options of one step, stored on its node until the step is reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepOptions {
    pub queue: String,
    pub priority: i16,
    pub max_attempts: i32,
    pub timeout_ms: Option<i32>,
}

/// One node of a workflow before it is stored. Opaque outside the jobs module: build it with
/// the typed builders.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Spec(pub(crate) Node);

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Job {
        kind: &'static str,
        params: serde_json::Value,
        options: StepOptions,
    },
    Chain(Vec<Spec>),
    Group {
        members: Vec<Spec>,
        on_failure: OnFailure,
    },
}

/// One row of `workflow_nodes`, as inserted.
#[derive(Debug)]
pub(crate) struct NodeRow {
    pub node: i32,
    pub parent: Option<i32>,
    pub parent_type: Option<&'static str>,
    pub position: i32,
    pub last: bool,
    pub subtree_end: i32,
    pub node_type: &'static str,
    pub kind: Option<&'static str>,
    pub params: Option<serde_json::Value>,
    pub options: Option<serde_json::Value>,
    pub on_failure: Option<&'static str>,
    pub remaining: Option<i32>,
}

impl Spec {
    /// Checks the bounds of the "bad input" list: no empty group (an empty chain cannot
    /// be built), no group over [`MAX_GROUP`], no workflow over [`MAX_NODES`]. A cycle cannot
    /// be built: every node is moved into its parent, so the shape is always a tree.
    pub(crate) fn validate(&self) -> Result<(), WorkflowError> {
        let mut nodes = 0usize;
        let mut stack = vec![self];
        while let Some(Spec(node)) = stack.pop() {
            nodes += 1;
            if nodes > MAX_NODES {
                return Err(WorkflowError::TooManySteps(self.count()));
            }
            match node {
                Node::Job { .. } => {}
                Node::Chain(steps) => stack.extend(steps),
                Node::Group { members, .. } => {
                    if members.is_empty() {
                        return Err(WorkflowError::EmptyGroup);
                    }
                    if members.len() > MAX_GROUP {
                        return Err(WorkflowError::GroupTooLarge(members.len()));
                    }
                    stack.extend(members);
                }
            }
        }
        Ok(())
    }

    fn count(&self) -> usize {
        match &self.0 {
            Node::Job { .. } => 1,
            Node::Chain(children)
            | Node::Group {
                members: children, ..
            } => 1 + children.iter().map(Spec::count).sum::<usize>(),
        }
    }

    /// A short readable name: `chain(fetch → parse → store)`, `group(resize × 100)`.
    pub(crate) fn describe(&self) -> String {
        let mut name = self.describe_inner();
        if name.len() > 200 {
            let mut cut = 197;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name.truncate(cut);
            name.push('…');
        }
        name
    }

    fn describe_inner(&self) -> String {
        match &self.0 {
            Node::Job { kind, .. } => (*kind).to_owned(),
            Node::Chain(steps) => {
                let names: Vec<String> = steps.iter().take(6).map(Spec::describe_inner).collect();
                let more = if steps.len() > 6 { " → …" } else { "" };
                format!("chain({}{more})", names.join(" → "))
            }
            Node::Group { members, .. } => {
                let first = members
                    .first()
                    .map(Spec::describe_inner)
                    .unwrap_or_default();
                if members.iter().all(|m| m.describe_inner() == first) {
                    format!("group({first} × {})", members.len())
                } else {
                    let names: Vec<String> =
                        members.iter().take(4).map(Spec::describe_inner).collect();
                    let more = if members.len() > 4 { ", …" } else { "" };
                    format!("group({}{more})", names.join(", "))
                }
            }
        }
    }
}

/// Numbers the tree in preorder into rows. Call [`Spec::validate`] first.
pub(crate) fn flatten(root: &Spec) -> Vec<NodeRow> {
    let mut rows = Vec::new();
    push(root, None, 0, true, &mut rows);
    rows
}

/// Appends `spec` and its subtree; returns the subtree's last node number.
fn push(
    spec: &Spec,
    parent: Option<(i32, &'static str)>,
    position: i32,
    last: bool,
    rows: &mut Vec<NodeRow>,
) -> i32 {
    let node = rows.len() as i32;
    let base = NodeRow {
        node,
        parent: parent.map(|p| p.0),
        parent_type: parent.map(|p| p.1),
        position,
        last,
        subtree_end: node,
        node_type: "job",
        kind: None,
        params: None,
        options: None,
        on_failure: None,
        remaining: None,
    };
    let (children, node_type): (&[Spec], &'static str) = match &spec.0 {
        Node::Job {
            kind,
            params,
            options,
        } => {
            rows.push(NodeRow {
                kind: Some(kind),
                params: Some(params.clone()),
                options: Some(serde_json::to_value(options).unwrap_or_default()),
                ..base
            });
            return node;
        }
        Node::Chain(steps) => {
            rows.push(NodeRow {
                node_type: "chain",
                ..base
            });
            (steps, "chain")
        }
        Node::Group {
            members,
            on_failure,
        } => {
            rows.push(NodeRow {
                node_type: "group",
                on_failure: Some(on_failure.as_str()),
                remaining: Some(members.len() as i32),
                ..base
            });
            (members, "group")
        }
    };
    let mut end = node;
    for (i, child) in children.iter().enumerate() {
        end = push(
            child,
            Some((node, node_type)),
            i as i32,
            i + 1 == children.len(),
            rows,
        );
    }
    rows[node as usize].subtree_end = end;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: &'static str) -> Spec {
        Spec(Node::Job {
            kind,
            params: serde_json::Value::Null,
            options: StepOptions {
                queue: "default".into(),
                priority: 0,
                max_attempts: 1,
                timeout_ms: None,
            },
        })
    }

    #[test]
    fn preorder_numbering_makes_subtrees_ranges() {
        // chain(a, group(b, chain(c, d)), e)
        let tree = Spec(Node::Chain(vec![
            job("a"),
            Spec(Node::Group {
                members: vec![job("b"), Spec(Node::Chain(vec![job("c"), job("d")]))],
                on_failure: OnFailure::Fail,
            }),
            job("e"),
        ]));
        let rows = flatten(&tree);
        let shape: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.node,
                    r.parent,
                    r.position,
                    r.last,
                    r.subtree_end,
                    r.node_type,
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (0, None, 0, true, 7, "chain"),
                (1, Some(0), 0, false, 1, "job"),
                (2, Some(0), 1, false, 6, "group"),
                (3, Some(2), 0, false, 3, "job"),
                (4, Some(2), 1, true, 6, "chain"),
                (5, Some(4), 0, false, 5, "job"),
                (6, Some(4), 1, true, 6, "job"),
                (7, Some(0), 2, true, 7, "job"),
            ]
        );
        assert_eq!(rows[2].remaining, Some(2));
        assert_eq!(tree.describe(), "chain(a → group(b, chain(c → d)) → e)");
    }

    #[test]
    fn bounds_are_checked() {
        let empty = Spec(Node::Group {
            members: vec![],
            on_failure: OnFailure::Fail,
        });
        assert!(matches!(empty.validate(), Err(WorkflowError::EmptyGroup)));
        let huge = Spec(Node::Group {
            members: vec![job("a"); MAX_GROUP + 1],
            on_failure: OnFailure::Fail,
        });
        assert!(matches!(
            huge.validate(),
            Err(WorkflowError::GroupTooLarge(n)) if n == MAX_GROUP + 1
        ));
        let fits = Spec(Node::Group {
            members: vec![job("a"); MAX_GROUP],
            on_failure: OnFailure::Fail,
        });
        assert!(fits.validate().is_ok());
        assert_eq!(fits.describe(), "group(a × 100000)");
    }
}
