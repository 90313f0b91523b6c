//! A workflow drawn as a graph, laid out on the server for an inline SVG (no script or CDN
//! needed to see it; `static/js/ops.js` only recolours it as states change).
//!
//! The layout follows the tree: a chain's children go left to right with an arrow between
//! each two; a group's members are stacked, fanned out from a fork point and back into a join
//! point, inside a dashed frame coloured with the group's state. A step is a box with its
//! kind and state, linked to its job. Shapes are data for the template (askama escapes their
//! text), not markup built here.

use std::collections::HashMap;

use crate::jobs::workflow::NodeStatus;

/// Most nodes drawn; a bigger workflow is shown as the outline only (a group of 1,000 members
/// would make a drawing 50,000 pixels tall).
pub(super) const MAX_DRAWN: usize = 200;

const BOX_W: i32 = 150;
const BOX_H: i32 = 44;
/// Space between a chain's children (room for the arrow).
const CHAIN_GAP: i32 = 36;
/// Space between a group's members.
const GROUP_GAP: i32 = 12;
/// Width of a group's fork and join fans; room inside its frame.
const FAN: i32 = 28;
const PAD: i32 = 8;

/// A step: one job.
pub(super) struct StepBox {
    pub node: i32,
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
    pub kind: String,
    pub state: String,
    pub job_id: Option<i64>,
}

impl StepBox {
    pub fn cx(&self) -> i32 {
        self.x + self.w / 2
    }

    pub fn label_y(&self) -> i32 {
        self.y + 18
    }

    pub fn state_y(&self) -> i32 {
        self.y + 35
    }

    /// Kind names can be long; the full name is in the box's tooltip.
    pub fn short_kind(&self) -> String {
        if self.kind.chars().count() <= 20 {
            self.kind.clone()
        } else {
            format!("{}…", self.kind.chars().take(19).collect::<String>())
        }
    }
}

/// A group's frame.
pub(super) struct Frame {
    pub node: i32,
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
    pub state: String,
}

/// A line; `arrow` ends it with an arrowhead.
pub(super) struct Edge {
    pub x1: i32,
    pub y1: i32,
    pub x2: i32,
    pub y2: i32,
    pub arrow: bool,
}

/// The whole drawing.
pub(super) struct Graph {
    pub width: i32,
    pub height: i32,
    pub boxes: Vec<StepBox>,
    pub frames: Vec<Frame>,
    pub edges: Vec<Edge>,
}

/// Lays out `nodes` (in preorder, the root first, as `workflow::status` returns them); `None`
/// when there is nothing to draw or too much.
pub(super) fn draw(nodes: &[NodeStatus]) -> Option<Graph> {
    if nodes.is_empty() || nodes.len() > MAX_DRAWN {
        return None;
    }
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        if let Some(parent) = node.parent {
            children.entry(parent).or_default().push(i);
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(|&i| nodes[i].position);
    }
    let layout = Layout {
        nodes,
        children: &children,
    };
    let (width, height) = layout.size(0);
    let mut graph = Graph {
        width: width + 2 * PAD,
        height: height + 2 * PAD,
        boxes: Vec::new(),
        frames: Vec::new(),
        edges: Vec::new(),
    };
    layout.place(0, PAD, PAD, &mut graph);
    Some(graph)
}

struct Layout<'a> {
    nodes: &'a [NodeStatus],
    children: &'a HashMap<i32, Vec<usize>>,
}

impl Layout<'_> {
    fn kids(&self, i: usize) -> &[usize] {
        self.children
            .get(&self.nodes[i].node)
            .map_or(&[], Vec::as_slice)
    }

    /// Width and height of the subtree at `i`. (Sizes are recomputed while placing: fine for
    /// the few hundred nodes drawn.)
    fn size(&self, i: usize) -> (i32, i32) {
        let kids = self.kids(i);
        match self.nodes[i].node_type.as_str() {
            "chain" if !kids.is_empty() => {
                let sizes: Vec<_> = kids.iter().map(|&k| self.size(k)).collect();
                let width = sizes.iter().map(|s| s.0).sum::<i32>() + CHAIN_GAP * gaps(kids);
                (width, sizes.iter().map(|s| s.1).max().unwrap_or(BOX_H))
            }
            "group" if !kids.is_empty() => {
                let sizes: Vec<_> = kids.iter().map(|&k| self.size(k)).collect();
                let width = sizes.iter().map(|s| s.0).max().unwrap_or(BOX_W) + 2 * FAN;
                let height = sizes.iter().map(|s| s.1).sum::<i32>() + GROUP_GAP * gaps(kids);
                (width, height + 2 * PAD)
            }
            _ => (BOX_W, BOX_H),
        }
    }

    /// Places the subtree at `i` with its top left corner at (`x`, `y`).
    fn place(&self, i: usize, x: i32, y: i32, graph: &mut Graph) {
        let node = &self.nodes[i];
        let kids = self.kids(i);
        let (w, h) = self.size(i);
        let mid = y + h / 2;
        match node.node_type.as_str() {
            "chain" if !kids.is_empty() => {
                let mut at = x;
                for (n, &k) in kids.iter().enumerate() {
                    let (kw, kh) = self.size(k);
                    if n > 0 {
                        graph.edges.push(Edge {
                            x1: at - CHAIN_GAP,
                            y1: mid,
                            x2: at - 2,
                            y2: mid,
                            arrow: true,
                        });
                    }
                    self.place(k, at, mid - kh / 2, graph);
                    at += kw + CHAIN_GAP;
                }
            }
            "group" if !kids.is_empty() => {
                graph.frames.push(Frame {
                    node: node.node,
                    x,
                    y,
                    w,
                    h,
                    state: node.state.clone(),
                });
                let mut at = y + PAD;
                for &k in kids {
                    let (kw, kh) = self.size(k);
                    let kid_mid = at + kh / 2;
                    graph.edges.push(Edge {
                        x1: x,
                        y1: mid,
                        x2: x + FAN,
                        y2: kid_mid,
                        arrow: false,
                    });
                    graph.edges.push(Edge {
                        x1: x + FAN + kw,
                        y1: kid_mid,
                        x2: x + w,
                        y2: mid,
                        arrow: false,
                    });
                    self.place(k, x + FAN, at, graph);
                    at += kh + GROUP_GAP;
                }
            }
            _ => graph.boxes.push(StepBox {
                node: node.node,
                x,
                y,
                w,
                h,
                kind: node.kind.clone().unwrap_or_else(|| node.node_type.clone()),
                state: node.state.clone(),
                job_id: node.job_id,
            }),
        }
    }
}

fn gaps(kids: &[usize]) -> i32 {
    i32::try_from(kids.len().saturating_sub(1)).unwrap_or(i32::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node: i32, parent: Option<i32>, position: i32, node_type: &str) -> NodeStatus {
        NodeStatus {
            node,
            parent,
            position,
            node_type: node_type.into(),
            kind: (node_type == "job").then(|| format!("step{node}")),
            state: "pending".into(),
            job_id: None,
            error: None,
            started_at: None,
            finished_at: None,
        }
    }

    /// chain(a → group(b, c) → d): three columns, the group's members stacked.
    #[test]
    fn a_chain_with_a_group_lays_out_in_columns() {
        let nodes = [
            node(0, None, 0, "chain"),
            node(1, Some(0), 0, "job"),
            node(2, Some(0), 1, "group"),
            node(3, Some(2), 0, "job"),
            node(4, Some(2), 1, "job"),
            node(5, Some(0), 2, "job"),
        ];
        let graph = draw(&nodes).unwrap();
        let at = |n: i32| {
            let b = graph.boxes.iter().find(|b| b.node == n).unwrap();
            (b.x, b.y)
        };
        assert_eq!(graph.boxes.len(), 4);
        assert_eq!(graph.frames.len(), 1);
        assert!(at(1).0 < at(3).0 && at(3).0 == at(4).0 && at(4).0 < at(5).0);
        assert!(at(3).1 < at(4).1, "members stacked");
        assert_eq!(graph.edges.iter().filter(|e| e.arrow).count(), 2);
        // Every box lies inside the drawing.
        assert!(
            graph
                .boxes
                .iter()
                .all(|b| b.x + b.w <= graph.width && b.y + b.h <= graph.height)
        );
    }

    #[test]
    fn too_many_nodes_are_not_drawn() {
        let mut nodes = vec![node(0, None, 0, "group")];
        nodes.extend((1..=MAX_DRAWN as i32).map(|n| node(n, Some(0), n - 1, "job")));
        assert!(draw(&nodes).is_none());
        assert!(draw(&nodes[..MAX_DRAWN]).is_some());
    }
}
