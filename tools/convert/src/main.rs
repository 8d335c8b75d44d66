//! `gpt2q-convert`: packs a Hugging Face GPT-2 checkpoint into one `.g2q` file.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use gpt2q_convert::convert::{convert, Options, Quant};

/// Convert a Hugging Face GPT-2 checkpoint directory (config.json, vocab.json, merges.txt,
/// model.safetensors or sharded safetensors) into a gpt2q model file.
#[derive(Parser, Debug)]
#[command(name = "gpt2q-convert", version, about)]
struct Args {
    /// The checkpoint directory (as saved by transformers or downloaded from the Hugging Face hub).
    checkpoint: PathBuf,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Storage of the weight matrices: f32, f16, q8 (int8, 8.5 bits/weight) or q4 (4.5 bits/weight).
    #[arg(short, long, default_value = "q8")]
    quant: String,
    /// Replace the output file if it exists.
    #[arg(short, long)]
    force: bool,
    /// Source name to record in the file (default: the checkpoint's).
    #[arg(long)]
    name: Option<String>,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpt2q-convert: error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &gpt2q::Error) -> u8 {
    match e {
        gpt2q::Error::InvalidInput(_) => 2,
        gpt2q::Error::Format(_) => 3,
        gpt2q::Error::Io { .. } => 4,
        gpt2q::Error::Numeric(_) => 5,
    }
}

fn run(args: &Args) -> gpt2q::Result<()> {
    let opts = Options {
        quant: Quant::parse(&args.quant)?,
        force: args.force,
        name: args.name.clone(),
        created_epoch: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.parse().ok()),
    };
    let start = Instant::now();
    let live = !args.quiet && std::io::stderr().is_terminal();
    let mut progress = |i: usize, n: usize, name: &str| {
        if live {
            eprint!("\r\x1b[2K[{:>3}/{n}] {name}", i + 1);
            let _ = std::io::stderr().flush();
        }
    };
    convert(&args.checkpoint, &args.output, &opts, &mut progress)?;
    if !args.quiet {
        let size = std::fs::metadata(&args.output)
            .map(|m| m.len())
            .unwrap_or(0);
        let clear = if live { "\r\x1b[2K" } else { "" };
        eprintln!(
            "{clear}wrote {} ({:.1} MB, {}) in {:.1} s",
            args.output.display(),
            size as f64 / 1e6,
            opts.quant.name(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
