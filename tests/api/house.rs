//! The house rules of `src/`, read from the code's own `crate::` paths:
//!
//! * the platform (`db`, `jobs`, `channels`, `cache`, `web`, `config`, the server, the
//!   application API and the command line) never imports an app, nor the bundled composition;
//! * `jobs`, `channels` and `cache` never import `web` (nor what sits on top of it);
//! * `db` imports nothing of ours but its own settings (`config`);
//! * no two modules import each other, through any path (the graph of modules has no cycle).
//!
//! Only the standard library is used, so the checker can be compiled on its own against any
//! tree (`rustc --edition 2024 --test tests/api/house.rs`, with `HOUSE_SRC` naming the tree).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The platform floor: knows nothing of any app.
const PLATFORM: &[&str] = &[
    "application",
    "cache",
    "channels",
    "config",
    "db",
    "jobs",
    "server",
    "telemetry",
    "text",
    "tls",
    "web",
];

/// The platform's lower part: below `web` and everything built on it.
const BELOW_WEB: &[&str] = &["cache", "channels", "jobs"];

/// What sits on `web`: the lower platform must not reach it through these either.
const WEB_AND_ABOVE: &[&str] = &["web", "application", "server"];

/// Composition roots: they name the apps, and nothing imports them.
const ROOTS: &[&str] = &["bundled"];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Top-level module → the top-level modules its files name through `crate::`.
fn imports(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for entry in fs::read_dir(src).expect("src/ is readable") {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut used = BTreeSet::new();
        for file in rust_files(&path) {
            let code = strip_comments(&fs::read_to_string(&file).unwrap());
            used.extend(crate_paths(&code));
        }
        used.remove(&name);
        graph.insert(name, used);
    }
    graph
}

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(path)
            .unwrap()
            .flat_map(|e| rust_files(&e.unwrap().path()))
            .collect();
        files.sort();
        files
    } else if path.extension().is_some_and(|e| e == "rs") {
        vec![path.to_path_buf()]
    } else {
        Vec::new()
    }
}

/// Drops `//` and `/* */` comments (doc comments mention paths they do not use) and the
/// contents of string literals.
fn strip_comments(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                out.push('"');
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '"' && !escaped {
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The first segment after every `crate::`, reading `crate::{a, b::c}` groups.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut first = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && c == ',' {
                    if !item.is_empty() {
                        found.insert(std::mem::take(&mut item));
                    }
                    first = true;
                } else if first && (c.is_alphanumeric() || c == '_') {
                    item.push(c);
                } else if !item.is_empty() {
                    found.insert(std::mem::take(&mut item));
                    first = false;
                }
            }
            if !item.is_empty() {
                found.insert(item);
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                found.insert(ident);
            }
        }
    }
    // Items of lib.rs (re-exports such as `crate::App`) are not modules.
    found.retain(|name| name.chars().next().is_some_and(|c| c.is_lowercase()));
    found
}

/// Every broken rule, as a sentence.
fn violations(graph: &Graph) -> Vec<String> {
    let mut broken = Vec::new();
    let is_app = |m: &str| !PLATFORM.contains(&m) && !ROOTS.contains(&m);
    for (module, used) in graph {
        for target in used {
            if PLATFORM.contains(&module.as_str())
                && (is_app(target) || ROOTS.contains(&target.as_str()))
            {
                broken.push(format!("the platform module `{module}` imports `{target}`"));
            }
            if BELOW_WEB.contains(&module.as_str()) && WEB_AND_ABOVE.contains(&target.as_str()) {
                broken.push(format!(
                    "`{module}` imports `{target}`, which is built on `web`"
                ));
            }
            if module == "db" && target != "config" {
                broken.push(format!(
                    "`db` imports `{target}` (only its own settings, `config`)"
                ));
            }
            if ROOTS.contains(&target.as_str()) {
                broken.push(format!(
                    "`{module}` imports the composition root `{target}`"
                ));
            }
        }
    }
    broken.extend(cycles(graph));
    broken
}

/// One sentence per cycle found by a depth-first search, naming its path.
fn cycles(graph: &Graph) -> Vec<String> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut BTreeSet<String>,
    ) {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle: Vec<_> = path[start..].to_vec();
            cycle.push(node.to_owned());
            found.insert(format!("import cycle: {}", cycle.join(" → ")));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if graph.contains_key(next) {
                visit(next, graph, path, done, found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let (mut done, mut found) = (BTreeSet::new(), BTreeSet::new());
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found.into_iter().collect()
}

fn source_tree() -> PathBuf {
    std::env::var_os("HOUSE_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(option_env!("CARGO_MANIFEST_DIR").unwrap_or(".")).join("src"))
}

#[test]
fn the_house_rules_hold() {
    let graph = imports(&source_tree());
    assert!(
        graph.contains_key("web") && graph.contains_key("jobs"),
        "{graph:?}"
    );
    let broken = violations(&graph);
    assert!(
        broken.is_empty(),
        "house rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_imports_and_cycles() {
    let code = strip_comments(
        "use crate::{a::B, b, c::{d, e}}; // crate::comment\nfn f() { crate::f::g(); \"crate::s\"; }",
    );
    let paths: Vec<_> = crate_paths(&code).into_iter().collect();
    assert_eq!(paths, ["a", "b", "c", "f"]);

    let graph: Graph = [
        ("jobs".to_owned(), BTreeSet::from(["web".to_owned()])),
        (
            "web".to_owned(),
            BTreeSet::from(["jobs".to_owned(), "chat".to_owned()]),
        ),
        ("chat".to_owned(), BTreeSet::new()),
    ]
    .into();
    let broken = violations(&graph);
    assert!(
        broken.iter().any(|b| b.contains("`web` imports `chat`")),
        "{broken:?}"
    );
    assert!(
        broken.iter().any(|b| b.contains("`jobs` imports `web`")),
        "{broken:?}"
    );
    assert!(
        broken
            .iter()
            .any(|b| b.starts_with("import cycle: jobs → web → jobs")),
        "{broken:?}"
    );
}
