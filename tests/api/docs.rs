//! The docs against the repository and the binary:
//!
//! * every relative link in `README.md`, `docs/*.md` and `bench/*.md` names a file or folder
//!   of the repository, and a link to `#a-heading` of a Markdown file names a heading it has
//!   (GitHub's anchors); none leads outside the repository;
//! * the README stays an entrance of at most 200 lines;
//! * `docs/configuration.md` lists every flag and environment variable of the `hearth`
//!   binary's command line with its default, and every command with its arguments, and names
//!   no `HEARTH_*` variable, nor any `--flag` in its tables, that the binary lacks.
//!
//! The link check uses only the standard library, like `house.rs`, so that it reads the files
//! as they are on disk, with no Markdown crate's opinion in between.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Component, Path, PathBuf},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked.
fn checked_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    for folder in ["docs", "bench"] {
        let mut found: Vec<PathBuf> = fs::read_dir(root.join(folder))
            .unwrap_or_else(|e| panic!("{folder}/ is readable: {e}"))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// The text outside fenced code blocks, with inline code spans blanked out (their length
/// kept), so that neither a `](` nor a `#` in code is taken for Markdown.
fn prose(markdown: &str) -> String {
    let mut outside = String::new();
    let mut fence: Option<String> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|c| *c == '`' || *c == '~')
            .collect();
        match &fence {
            Some(open) if trimmed.starts_with(open.as_str()) && trimmed.trim() == marker => {
                fence = None;
            }
            Some(_) => {}
            None if marker.len() >= 3 => fence = Some(marker),
            None => outside.push_str(line),
        }
        outside.push('\n');
    }
    blank_code_spans(&outside)
}

/// Replaces every code span (a run of backticks up to the next run of the same length) with
/// spaces, keeping line breaks.
fn blank_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        let close = (i + run..chars.len()).find(|&j| {
            chars[j..].iter().take_while(|c| **c == '`').count() == run
                && (j == 0 || chars[j - 1] != '`')
        });
        match close {
            Some(j) => {
                for c in &chars[i..j + run] {
                    out.push(if *c == '\n' { '\n' } else { ' ' });
                }
                i = j + run;
            }
            None => {
                for _ in 0..run {
                    out.push('`');
                }
                i += run;
            }
        }
    }
    out
}

/// Every link target of `prose`: inline links and images `[text](target "title")`, and
/// reference definitions `[name]: target`.
fn link_targets(prose: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = prose;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let mut depth = 0usize;
        let end = after.char_indices().find(|&(_, c)| match c {
            '(' => {
                depth += 1;
                false
            }
            ')' if depth == 0 => true,
            ')' => {
                depth -= 1;
                false
            }
            '\n' => true,
            _ => false,
        });
        let inner = &after[..end.map_or(after.len(), |(i, _)| i)];
        let target = inner.split_whitespace().next().unwrap_or("");
        targets.push(
            target
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string(),
        );
        rest = after;
    }
    for line in prose.lines() {
        let line = line.trim_start();
        if let Some(definition) = line.strip_prefix('[')
            && let Some((_, target)) = definition.split_once("]:")
            && let Some(target) = target.split_whitespace().next()
        {
            targets.push(target.to_string());
        }
    }
    targets
}

/// GitHub's anchor for a heading's text: lower case, letters, digits, `-` and `_` kept,
/// spaces made `-`, everything else dropped; links and emphasis marks read as their text.
fn anchor(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // `[text](url)` reads as `text`.
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](") {
            Some(close) => {
                text.push_str(&after[..close]);
                let tail = &after[close + 2..];
                rest = tail.find(')').map_or("", |end| &tail[end + 1..]);
            }
            None => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings, with GitHub's `-1`, `-2` for repeated ones.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut found = BTreeSet::new();
    let mut fence: Option<String> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|c| *c == '`' || *c == '~')
            .collect();
        match &fence {
            Some(open) if trimmed.starts_with(open.as_str()) && trimmed.trim() == marker => {
                fence = None;
                continue;
            }
            Some(_) => continue,
            None if marker.len() >= 3 => {
                fence = Some(marker);
                continue;
            }
            None => {}
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&level) || !trimmed[level..].starts_with(' ') {
            continue;
        }
        let text = trimmed[level..].trim().trim_end_matches('#').trim();
        // Code spans keep their text in an anchor, without the backticks.
        let base = anchor(&text.replace('`', ""));
        let n = seen.entry(base.clone()).or_insert(0);
        found.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    found
}

/// `path` with `.` and `..` resolved lexically; `None` when it climbs above its start.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// What is wrong with one link of `file` (relative to the repository), if anything.
fn check_link(root: &Path, file: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("an empty link".into());
    }
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path_part, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (target, None),
    };
    let relative = if path_part.is_empty() {
        file.to_path_buf()
    } else if path_part.starts_with('/') {
        return Some("an absolute path: write it relative to this file".into());
    } else {
        let Some(resolved) = normalise(&file.parent().unwrap().join(path_part)) else {
            return Some("leads outside the repository".into());
        };
        resolved
    };
    let on_disk = root.join(&relative);
    if !on_disk.exists() {
        return Some(format!("{} does not exist", relative.display()));
    }
    let fragment = fragment.filter(|f| !f.is_empty())?;
    if on_disk.extension().is_none_or(|ext| ext != "md") {
        return None;
    }
    let headings = anchors(&fs::read_to_string(&on_disk).unwrap());
    (!headings.contains(fragment)).then(|| {
        format!(
            "{} has no heading #{fragment} (its anchors: {})",
            relative.display(),
            headings.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

#[test]
fn every_relative_link_resolves() {
    let root = root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for path in checked_files(&root) {
        let file = path.strip_prefix(&root).unwrap().to_path_buf();
        let text = fs::read_to_string(&path).unwrap();
        for target in link_targets(&prose(&text)) {
            checked += 1;
            if let Some(problem) = check_link(&root, &file, &target) {
                broken.push(format!("{}: ({target}): {problem}", file.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "the docs link to each other: found only {checked} links"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The README is the entrance (issue #31): what Hearth is, the two commands, the map and its
/// rules, and links. What grows goes into a guide in `docs/`.
#[test]
fn the_readme_stays_an_entrance() {
    let lines = fs::read_to_string(root().join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines: move what is not the entrance into a guide in docs/"
    );
}

#[test]
fn the_link_checker_sees_what_is_broken() {
    let root = root();
    let readme = Path::new("README.md");
    assert_eq!(
        check_link(&root, readme, "docs/configuration.md#commands"),
        None
    );
    assert_eq!(check_link(&root, readme, "https://example.com/x"), None);
    assert!(check_link(&root, readme, "docs/nothing-here.md").is_some());
    assert!(check_link(&root, readme, "docs/configuration.md#no-such-heading").is_some());
    assert!(check_link(&root, readme, "../shared/peers/PROTOCOL.md").is_some());
    let docs = prose("[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n[d]: w.md\n");
    assert_eq!(link_targets(&docs), ["x.md", "w.md"]);
    assert_eq!(
        anchor("5. Settings: `main.rs`, [the guide](x.md)"),
        "5-settings-mainrs-the-guide"
    );
    assert_eq!(
        anchors("# A\n## A\n```\n# not a heading\n```\n"),
        BTreeSet::from(["a".to_string(), "a-1".to_string()])
    );
}

/// The cells of a table row, `\|` inside a cell kept as part of it.
fn cells(row: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = row.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells
        .into_iter()
        .map(|cell| cell.trim().to_string())
        .collect()
}

/// What is wrong with the default a setting's row gives (its third column), if anything: a
/// default the binary has must be there in code (`30s`); a switch that is off reads "off".
fn default_differs(arg: &clap::Arg, row: &str) -> Option<String> {
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .filter(|value| !value.is_empty())
        .collect();
    let documented = cells(row).get(2).cloned().unwrap_or_default();
    let expected = match defaults.as_slice() {
        [] => return None,
        [off] if off == "false" => "off".to_string(),
        values => format!("`{}`", values.join(",")),
    };
    (!documented.contains(&expected))
        .then(|| format!("the binary's default is {expected}, the row says {documented:?}"))
}

/// Every `word` of `text` that starts with `prefix` and runs on in `[A-Za-z0-9_-]`.
fn words_starting(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail[prefix.len()..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(tail.len(), |i| i + prefix.len());
        let word = tail[..end].trim_end_matches('-');
        if before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            && word.len() > prefix.len()
        {
            found.insert(word.to_string());
        }
        rest = &tail[prefix.len()..];
    }
    found
}

/// `line` names `flag` as a whole word (`--limit`, not `--limit-window`).
fn names_flag(line: &str, flag: &str) -> bool {
    words_starting(line, "--").contains(flag)
}

/// What the reference must say about one command: a table row naming it, with each of its
/// arguments.
fn check_command(
    command: &clap::Command,
    path: &str,
    doc: &str,
    flags: &mut BTreeSet<String>,
    missing: &mut Vec<String>,
) {
    let args: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|arg| !arg.is_global_set() && !["help", "version"].contains(&arg.get_id().as_str()))
        .collect();
    let subcommands: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|sub| sub.get_name() != "help")
        .collect();
    for arg in &args {
        if let Some(long) = arg.get_long() {
            flags.insert(format!("--{long}"));
        }
    }
    if subcommands.is_empty() {
        let start = format!("`{path}");
        let line = doc
            .lines()
            .filter(|line| line.starts_with('|'))
            .find(|line| {
                line.match_indices(&start).any(|(at, _)| {
                    matches!(line[at + start.len()..].chars().next(), Some(' ' | '`'))
                })
            });
        let Some(line) = line else {
            missing.push(format!("the command `{path}` has no row"));
            return;
        };
        for arg in args {
            let named = match arg.get_long() {
                Some(long) => names_flag(line, &format!("--{long}")),
                None => line.contains(&arg.get_id().as_str().to_uppercase()),
            };
            if !named {
                missing.push(format!(
                    "`{path}`'s row lacks its argument {}",
                    arg.get_id()
                ));
            }
        }
    }
    for sub in subcommands {
        let path = format!("{path} {}", sub.get_name());
        check_command(sub, &path, doc, flags, missing);
    }
}

#[test]
fn the_configuration_reference_matches_the_command_line() {
    let doc = fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let mut command = hearth::application::cli::command(&hearth::bundled::application());
    // Built, so that clap fills in what it derives (a switch's `false` default, say).
    command.build();
    let mut missing = Vec::new();
    let mut variables = BTreeSet::new();
    let mut flags = BTreeSet::from(["--help".to_string(), "--version".to_string()]);
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let flag = format!("--{long}");
        let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
        flags.insert(flag.clone());
        if ["help", "version"].contains(&arg.get_id().as_str()) {
            continue;
        }
        let row = doc.lines().find(|line| {
            line.starts_with('|')
                && line.contains(&format!("`{flag}`"))
                && env
                    .as_ref()
                    .is_none_or(|env| line.contains(&format!("`{env}`")))
        });
        match row {
            None => missing.push(format!(
                "the setting `{flag}` ({}) has no row naming both",
                env.as_deref().unwrap_or("no environment variable")
            )),
            Some(row) => {
                if let Some(problem) = default_differs(arg, row) {
                    missing.push(format!("the setting `{flag}`: {problem}"));
                }
            }
        }
        variables.extend(env);
    }
    check_command(&command, "hearth", &doc, &mut flags, &mut missing);
    for variable in words_starting(&doc, "HEARTH_") {
        if !variables.contains(&variable) {
            missing.push(format!(
                "{variable} is documented but the binary has no such setting"
            ));
        }
    }
    let rows = doc
        .lines()
        .filter(|line| line.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n");
    for flag in words_starting(&rows, "--") {
        if !flags.contains(&flag) {
            missing.push(format!(
                "{flag} is documented but the binary has no such flag"
            ));
        }
    }
    assert!(
        variables.len() > 40,
        "the binary's settings were not found: {variables:?}"
    );
    assert!(
        missing.is_empty(),
        "docs/configuration.md and the command line differ:\n{}",
        missing.join("\n")
    );
}
