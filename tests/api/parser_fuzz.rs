//! The parser fuzz targets in short mode, for `cargo test` on stable Rust: every file of
//! `fuzz/corpus/<target>/` through the target's harness (the same code cargo-fuzz runs, from
//! `fuzz/src/harness.rs`), then a few thousand inputs made by mutating the corpus with a
//! seeded generator. A failure prints the seed and saves the input under
//! `target/parser-fuzz/`; `HEARTH_FUZZ_SEED=<seed>` replays the same inputs. No database.
//!
//! The long mode is `scripts/fuzz` (coverage-guided, libFuzzer); inputs it finds worth keeping
//! are added to the corpus, so this test replays them from then on.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

#[path = "../../fuzz/src/harness.rs"]
mod harness;

/// Generated inputs per target, on top of the corpus.
const RUNS: usize = 3000;
/// Longest generated input, as libFuzzer's default `-max_len`.
const MAX_LEN: usize = 4096;

/// Pieces each target's syntax is made of, for mutations to insert.
fn dictionary(target: &str) -> &'static [&'static str] {
    match target {
        "cron" => &[
            "*",
            "/",
            "-",
            ",",
            "L",
            "W",
            "#",
            "?",
            "@daily",
            "@yearly",
            "MON",
            "SUN-SAT",
            "JAN",
            "59",
            "60",
            "0",
            "31",
            "7",
            "\n",
            "Europe/Paris",
            "America/New_York",
            " ",
        ],
        "config" => &[
            "|",
            ";",
            ",",
            ":",
            "=",
            "@",
            "cron:",
            "every:",
            "http://",
            "https://",
            "{}",
            "[",
            "%2C",
            "1s",
            "0ms",
            "99999999999d",
            "user:pw@",
            "?password=",
            "#",
            "[::1]",
        ],
        "names" => &[
            "!", ".", "-", "_", "@", " ", "\r\n", "\u{0}", "é", "É", "ß", "\u{301}",
        ],
        "csv_import" => &[
            "\"", "\"\"", ",", "\n", "\r\n", "\r", "title", "body", "publish", "Title", "yes",
            "\u{feff}", "\u{0}", "\u{e9}", " ", "x",
        ],
        "chat_frame" => &[
            "{\"type\":\"send\",\"body\":\"",
            "{\"type\":\"edit\",\"id\":1,\"body\":\"",
            "\"}",
            "@",
            "@ada",
            ".",
            "-",
            "\\u0000",
            "\\ud83d",
            "É",
            " ",
            "\\n",
        ],
        "doc_frame" => &[
            "{\"type\":\"update\",\"seq\":1,\"update\":\"",
            "{\"type\":\"sync\",\"sv\":\"",
            "\"}",
            "AQ",
            "AAA",
            "/",
            "+",
            "=",
            "////",
            "\\u",
            "null",
        ],
        "yrs_update" => &["\u{0}", "\u{1}", "\u{7f}", "\u{4}body", "\u{ff}"],
        "markdown" => &[
            "<script>",
            "</script>",
            "javascript:",
            "&#x09;",
            "&colon;",
            "[a](",
            ")",
            "<a href=",
            "\"",
            "'",
            "`",
            "<",
            ">",
            "\n\n",
            "    ",
            "|",
            "[^1]",
            "![",
            "<img src=x onerror=",
            "data:",
            "<!--",
            "-->",
            "<svg>",
            "\\",
            "*",
        ],
        _ => &[],
    }
}

/// splitmix64: small, and the same sequence for a seed on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A corpus entry changed by one to eight mutations, as libFuzzer's do: bytes flipped,
/// inserted, deleted, repeated, tokens inserted, another entry spliced in.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], tokens: &[&str]) -> Vec<u8> {
    let mut input = corpus[rng.below(corpus.len())].clone();
    if rng.below(10) == 0 {
        input = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
    }
    for _ in 0..=rng.below(8) {
        let at = rng.below(input.len() + 1);
        match rng.below(7) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 => input.insert(at, rng.next() as u8),
            2 if at < input.len() => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            3 if at < input.len() => {
                let end = (at + 1 + rng.below(32)).min(input.len());
                let piece = input[at..end].repeat(1 + rng.below(8));
                input.splice(at..at, piece);
            }
            4 if !tokens.is_empty() => {
                let token = tokens[rng.below(tokens.len())].as_bytes();
                input.splice(at..at, token.iter().copied());
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                input.splice(at.., other[from..].iter().copied());
            }
            _ => {
                let interesting = [0, 0xFF, b'\n', b'\r', b'"', b',', b'0', 0x80, 0xC3];
                if at < input.len() {
                    input[at] = interesting[rng.below(interesting.len())];
                }
            }
        }
    }
    input.truncate(MAX_LEN);
    input
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The seed of this run: `HEARTH_FUZZ_SEED`, or a new one each run (printed on failure).
fn seed() -> u64 {
    match std::env::var("HEARTH_FUZZ_SEED") {
        Ok(seed) => seed
            .trim()
            .parse()
            .expect("HEARTH_FUZZ_SEED is a whole number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// Runs `input` through the harness; on a failure saves it and fails with how to replay it.
fn check(target: &str, run: harness::Target, input: &[u8], origin: &str) {
    if catch_unwind(AssertUnwindSafe(|| run(input))).is_ok() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/parser-fuzz");
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| {
            let path = dir.join(format!("{target}-{}", std::process::id()));
            std::fs::write(&path, input).map(|()| path)
        })
        .map_or_else(|e| format!("(not saved: {e})"), |p| p.display().to_string());
    panic!(
        "parser fuzz target {target} failed on {origin} (panic above); input saved to {saved}: {:?}",
        String::from_utf8_lossy(&input[..input.len().min(500)])
    );
}

/// The corpus, then `RUNS` mutated inputs.
fn fuzz(target: &str) {
    let run = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|&(_, run)| run)
        .expect("a target of the harness");
    let mut corpus = Vec::new();
    let entries = std::fs::read_dir(corpus_dir(target)).expect("the target has a corpus");
    for entry in entries {
        let path = entry.expect("a corpus entry").path();
        let input = std::fs::read(&path).expect("a readable corpus file");
        check(
            target,
            run,
            &input,
            &format!("corpus file {}", path.display()),
        );
        corpus.push(input);
    }
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ is empty");
    let seed = seed();
    // Each target its own stream, the same for a seed whichever tests run.
    let mut rng = Rng(seed ^ target.bytes().fold(0, |h, b| h * 31 + u64::from(b)));
    let tokens = dictionary(target);
    for i in 0..RUNS {
        let input = mutate(&mut rng, &corpus, tokens);
        check(
            target,
            run,
            &input,
            &format!("generated input {i} of HEARTH_FUZZ_SEED={seed}"),
        );
    }
}

#[test]
fn every_target_has_a_test_a_fuzz_binary_and_a_corpus() {
    let tests = include_str!("parser_fuzz.rs");
    let manifest = include_str!("../../fuzz/Cargo.toml");
    for (name, _) in harness::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
        assert!(
            tests.contains(&format!("fn {name}()")),
            "no test for {name}"
        );
        assert!(corpus_dir(name).is_dir(), "no fuzz/corpus/{name}/");
    }
}

#[test]
fn cron() {
    fuzz("cron");
}

#[test]
fn config() {
    fuzz("config");
}

#[test]
fn names() {
    fuzz("names");
}

#[test]
fn csv_import() {
    fuzz("csv_import");
}

#[test]
fn chat_frame() {
    fuzz("chat_frame");
}

#[test]
fn doc_frame() {
    fuzz("doc_frame");
}

#[test]
fn yrs_update() {
    fuzz("yrs_update");
}

#[test]
fn markdown() {
    fuzz("markdown");
}
