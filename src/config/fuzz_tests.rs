//! A fuzz test of config loading, run with the unit tests: watcher files from the
//! shipped examples and the `check` fixtures, mutated from a fixed seed a fixed number
//! of times. Loading must never panic, and every error it reports must name the file.

use std::path::Path;

use super::load_with_env;

/// How many mutated files are loaded; with the fixed seed, the same ones every run.
const CASES: usize = 1000;
const SEED: u64 = 0x6869_6768_7761_7465;

/// Watcher files to start from.
const CORPUS: &[&str] = &[
    include_str!("../../watchers/examples/local-to-file.yaml"),
    include_str!("../../watchers/examples/postgres-to-webhook.yaml"),
    include_str!("../../watchers/examples/s3-to-airflow.yaml"),
    include_str!("../../tests/fixtures/check/many-errors/watchers/d-env.yaml"),
    include_str!("../../tests/fixtures/check/many-errors/watchers/g-type-last.yaml"),
    include_str!("../../tests/fixtures/check/many-errors/watchers/h-batch.yaml"),
    include_str!("../../tests/fixtures/check/many-errors/watchers/k-several.yaml"),
];

/// Text that tends to reach odd corners of YAML, serde and the value types.
const TOKENS: &[&str] = &[
    "${",
    "${X:-",
    "${X:-${Y:-z}}",
    "}",
    "$${",
    "!!binary ",
    "&a ",
    "*a",
    "<<: *a",
    "? ",
    "--- ",
    "...",
    "18446744073709551615",
    "-1",
    "1e400",
    ".nan",
    ".inf",
    "0x10",
    "~",
    "null",
    "[[[[[[",
    "{{{{",
    "]]",
    "'",
    "\"",
    "\t",
    "\u{0}",
    "\u{feff}",
    "\r\n",
    "é",
    "**/*{a,b}[c]",
    "a[",
    "5x",
    "3651d",
    "type: s3\n",
    "type: webhook\n",
    "headers: {A: b, a: c}\n",
    "url: ftp://x\n",
    ": ",
    "- ",
    "|\n  x\n",
    ">\n",
    "#",
    "%YAML 1.2\n",
];

/// xorshift64: small, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A char boundary at or before `at`.
fn boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut text = text.to_string();
    for _ in 0..=rng.below(4) {
        let at = boundary(&text, rng.below(text.len() + 1));
        match rng.below(5) {
            0 => text.insert_str(at, TOKENS[rng.below(TOKENS.len())]),
            1 => {
                let end = boundary(&text, at + rng.below(20));
                text.replace_range(at..end, "");
            }
            2 => {
                let end = boundary(&text, at + rng.below(40));
                let copy = text[at..end].to_string();
                let to = boundary(&text, rng.below(text.len() + 1));
                text.insert_str(to, &copy);
            }
            3 => {
                let end = boundary(&text, at + 1);
                const CHARS: &[u8] = b"{}[]:,-#&*!|>'\" \n\t$%09az";
                let c = CHARS[rng.below(CHARS.len())] as char;
                text.replace_range(at..end, &c.to_string());
            }
            _ => text.insert_str(at, &"a".repeat(rng.below(3000))),
        }
    }
    text
}

#[test]
fn mutated_watcher_files_never_panic_and_every_error_names_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let watchers = dir.path().join("w");
    std::fs::create_dir(&watchers).expect("mkdir");
    let daemon = dir.path().join("highwater.yaml");
    std::fs::write(&daemon, format!("watchers_dir: {}\n", watchers.display())).expect("write daemon");
    let file = watchers.join("fuzzed.yaml");
    let env = |name: &str| (name == "X").then(|| "from-env".to_string());
    let mut rng = Rng(SEED);
    let (mut valid, mut invalid) = (0, 0);
    for case in 0..CASES {
        let original = CORPUS[rng.below(CORPUS.len())];
        let text = mutate(&mut rng, original);
        std::fs::write(&file, &text).expect("write watcher");
        let loaded = std::panic::catch_unwind(|| load_with_env(&daemon, &env));
        let Ok(loaded) = loaded else {
            panic!("case {case} panicked; the file was:\n{text}");
        };
        match loaded {
            Ok(_) => valid += 1,
            Err(errors) => {
                invalid += 1;
                for error in &errors.0 {
                    let named = [file.as_path(), daemon.as_path()].contains(&error.file.as_path());
                    assert!(
                        named && error.to_string().starts_with(&error.file.display().to_string()),
                        "case {case}: {error} does not name {}; the file was:\n{text}",
                        Path::new(&file).display()
                    );
                }
            }
        }
    }
    // The mutations reach both outcomes: the test exercises more than the parser's
    // first refusal.
    assert!(valid > 10 && invalid > 10, "{valid} valid, {invalid} invalid");
}
