//! Inputs saved from the fuzz targets in `fuzz/` (crashes once fixed, and small inputs that reach
//! deep into the parsers), replayed through the same checks (`tests/common/fuzz_checks.rs`) on
//! every test run, so a regression shows up without running the fuzzer. Add a file to
//! `tests/fixtures/fuzz/<target>/` to keep an input.

mod common;

use std::path::PathBuf;

use common::fuzz_checks;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = common::fixtures().join("fuzz").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no saved inputs in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn g2q_loader_inputs() {
    for (path, bytes) in inputs("g2q_loader") {
        println!("{}", path.display());
        fuzz_checks::g2q_loader(&bytes);
    }
}

#[test]
fn safetensors_json_inputs() {
    for (path, bytes) in inputs("safetensors_json") {
        println!("{}", path.display());
        fuzz_checks::safetensors_json(&bytes);
    }
}

#[test]
fn tokenizer_inputs() {
    let tok = fuzz_checks::default_tokenizer();
    for (path, bytes) in inputs("tokenizer") {
        println!("{}", path.display());
        fuzz_checks::tokenizer(&tok, &bytes);
    }
}
