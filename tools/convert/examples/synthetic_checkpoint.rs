//! Writes a random GPT-2-shaped Hugging Face checkpoint, for measuring the converter
//! (scripts/bench-convert.sh):
//!
//! `cargo run --release -p gpt2q-convert --example synthetic_checkpoint -- OUT_DIR SHAPE [DTYPE]`
//!
//! SHAPE is small (124M), medium, large or xl; DTYPE is f32 (default), f16 or bf16. The tokenizer
//! files come from the repository's tiny fixture (GPT-2's vocabulary).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gpt2q_convert::synthetic::{write_checkpoint, Dtype, Shape};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(shape)) = (args.first(), args.get(1).and_then(|s| Shape::named(s))) else {
        eprintln!("usage: synthetic_checkpoint OUT_DIR small|medium|large|xl [f32|f16|bf16]");
        return ExitCode::from(2);
    };
    let dtype = match args.get(2).map(String::as_str) {
        None | Some("f32") => Dtype::F32,
        Some("f16") => Dtype::F16,
        Some("bf16") => Dtype::BF16,
        Some(other) => {
            eprintln!("unknown dtype {other:?}: expected f32, f16 or bf16");
            return ExitCode::from(2);
        }
    };
    let fixture: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-gpt2");
    match write_checkpoint(Path::new(dir), shape, dtype, 1, &fixture) {
        Ok(bytes) => {
            eprintln!(
                "wrote {dir}/model.safetensors ({:.1} MB)",
                bytes as f64 / 1e6
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
