//! Shared helpers for the integration tests: fixture paths, converted models (made once per test
//! binary), and the Hugging Face reference outputs.
#![allow(dead_code)]

/// The fuzz targets' checks (also `include!`d by the fuzz crate).
pub mod fuzz_checks;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gpt2q_convert::convert::{convert, Options, Quant, Weighting};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn checkpoint_dir() -> PathBuf {
    fixtures().join("tiny-gpt2")
}

/// Fixed creation time so converted files are byte-for-byte reproducible.
pub const EPOCH: u64 = 1_795_824_000;

/// Converts the tiny fixture checkpoint with `quant` into this test binary's temp dir, once.
pub fn converted(quant: Quant) -> PathBuf {
    static CELLS: [OnceLock<PathBuf>; 5] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let idx = match quant {
        Quant::F32 => 0,
        Quant::F16 => 1,
        Quant::Q8 => 2,
        Quant::Q4 => 3,
        Quant::Q4Pure => 4,
    };
    CELLS[idx]
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "tiny-{}-{}.g2q",
                quant.name(),
                std::process::id()
            ));
            let opts = Options {
                quant,
                force: true,
                name: Some("tiny-gpt2".into()),
                created_epoch: Some(EPOCH),
                weighting: Weighting::default(),
            };
            convert(&checkpoint_dir(), &out, &opts, &mut |_, _, _| {})
                .expect("conversion succeeds");
            out
        })
        .clone()
}

pub fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let text =
            std::fs::read_to_string(fixtures().join("tiny-gpt2.json")).expect("reference json");
        serde_json::from_str(&text).expect("valid json")
    })
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array of floats")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

/// True when running for aarch64 or 32-bit ARM (under qemu emulation in CI): long runs are cut short there.
pub const EMULATED: bool = cfg!(any(target_arch = "aarch64", target_arch = "arm"));

/// A `Command` for the `gpt2q` binary under test. Cross-compiled test runs (see
/// `scripts/test-aarch64.sh`) set `GPT2Q_TEST_RUNNER` to the emulator, e.g. `qemu-aarch64`,
/// because the kernel cannot exec a foreign binary without binfmt_misc.
pub fn gpt2q_command() -> std::process::Command {
    let exe = env!("CARGO_BIN_EXE_gpt2q");
    let mut command = match std::env::var("GPT2Q_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut c = std::process::Command::new(parts.next().unwrap_or_default());
            c.args(parts).arg(exe);
            c
        }
        _ => std::process::Command::new(exe),
    };
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GPT2Q_MODEL");
    command
}

/// True when the tests run under user-mode emulation, where only correctness is checked and
/// the slowest measurements are trimmed.
pub fn emulated() -> bool {
    std::env::var_os("GPT2Q_TEST_RUNNER").is_some()
}
