//! `gpt2q-convert`: packs a Hugging Face GPT-2 checkpoint into one `.g2q` file.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use gpt2q_convert::convert::{convert_with, Event, Options, Quant, Summary, Weighting};
use gpt2q_convert::output::remove_partials_on_signals;
use gpt2q_convert::sensitivity::{format_report, tensor_sensitivity, SensitivityOptions};

/// Convert a Hugging Face GPT-2 checkpoint directory (config.json, vocab.json, merges.txt,
/// model.safetensors or sharded safetensors) into a gpt2q model file.
#[derive(Parser, Debug)]
#[command(name = "gpt2q-convert", version, about)]
struct Args {
    /// The checkpoint directory (as saved by transformers or downloaded from the Hugging Face hub).
    checkpoint: PathBuf,
    /// Output file.
    #[arg(short, long, required_unless_present = "sensitivity")]
    output: Option<PathBuf>,
    /// Storage of the weight matrices: f32, f16, q8 (int8, 8.5 bits/weight), q4 (4-bit matrices
    /// with the token embedding / LM head in q8) or q4-pure (every matrix 4-bit except the
    /// embedding rows of the most frequent tokens, 4.6 bits/weight in all: the smallest file).
    #[arg(short, long, default_value = "q8")]
    quant: String,
    /// Replace the output file if it exists.
    #[arg(short, long)]
    force: bool,
    /// Source name to record in the file (default: the checkpoint's).
    #[arg(long)]
    name: Option<String>,
    /// Print nothing but errors (progress is shown only when stderr is a terminal anyway).
    #[arg(long)]
    quiet: bool,
    /// Threads that encode rows (default: one per core). The output is the same for any number.
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Instead of converting, print the tensor-sensitivity report: for each weight matrix, the
    /// KL divergence it causes on this calibration text when it alone is stored in q4.
    #[arg(long, value_name = "TEXT_FILE", conflicts_with = "output")]
    sensitivity: Option<PathBuf>,
    /// Weight each q4 block's rounding error by the mean square of the activations its columns
    /// multiply, measured over this calibration text (default: equal weights).
    #[arg(long, value_name = "TEXT_FILE")]
    calib: Option<PathBuf>,
    /// Tokens of the calibration text used by --calib and --sensitivity.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(2..))]
    calib_tokens: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    remove_partials_on_signals();
    let result = match args.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build()
            .map_err(|e| gpt2q::Error::invalid(format!("cannot start {n} threads: {e}")))
            .and_then(|pool| pool.install(|| run(&args))),
        None => run(&args),
    };
    match result {
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
    if let Some(text) = &args.sensitivity {
        return report_sensitivity(args, text);
    }
    let Some(output) = &args.output else {
        return Err(gpt2q::Error::invalid("an output file (-o) is required"));
    };
    let opts = Options {
        quant: Quant::parse(&args.quant)?,
        force: args.force,
        name: args.name.clone(),
        created_epoch: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.parse().ok()),
        weighting: weighting(args)?,
    };
    let live = !args.quiet && std::io::stderr().is_terminal();
    let mut meter = Meter::new(live);
    let summary = convert_with(&args.checkpoint, output, &opts, &mut |event| {
        meter.on(event, args.quiet)
    })?;
    meter.clear();
    if !args.quiet {
        eprintln!("{}", final_line(output, opts.quant, &summary, meter.start));
    }
    Ok(())
}

/// `wrote OUT (84.1 MB, q4, 5.43 bits/weight) in 3.2 s`.
fn final_line(output: &Path, quant: Quant, summary: &Summary, start: Instant) -> String {
    format!(
        "wrote {} ({:.1} MB, {}, {:.2} bits/weight) in {:.1} s",
        output.display(),
        summary.bytes as f64 / 1e6,
        quant.name(),
        summary.bits_per_weight(),
        start.elapsed().as_secs_f64()
    )
}

/// The progress line on a terminal: tensor i of n, throughput and time left, redrawn at most
/// ten times a second.
struct Meter {
    live: bool,
    start: Instant,
    drawn: Option<Instant>,
    tensor: String,
}

impl Meter {
    fn new(live: bool) -> Self {
        Meter {
            live,
            start: Instant::now(),
            drawn: None,
            tensor: String::new(),
        }
    }

    fn on(&mut self, event: Event<'_>, quiet: bool) {
        match event {
            Event::Tensor { index, count, name } => {
                self.tensor = format!("[{:>3}/{count}] {name}", index + 1);
            }
            Event::Progress { done, total } => self.draw(done, total),
            Event::RemovedStale(path) if !quiet => {
                self.clear();
                eprintln!(
                    "removed {} (left by an interrupted conversion)",
                    path.display()
                );
            }
            Event::OtherPartial(path) if !quiet => {
                self.clear();
                eprintln!(
                    "note: {} belongs to a conversion still running; left alone",
                    path.display()
                );
            }
            _ => {}
        }
    }

    fn draw(&mut self, done: u64, total: u64) {
        let now = Instant::now();
        if !self.live
            || self
                .drawn
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.drawn = Some(now);
        let secs = (now - self.start).as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            format!("{:.0} s", total.saturating_sub(done) as f64 / rate)
        } else {
            "?".into()
        };
        eprint!(
            "\r\x1b[2K{}  {:.0}/{:.0} MB  {:.0} MB/s  ETA {eta}",
            self.tensor,
            done as f64 / 1e6,
            total as f64 / 1e6,
            rate / 1e6
        );
        let _ = std::io::stderr().flush();
    }

    fn clear(&mut self) {
        if self.live && self.drawn.take().is_some() {
            eprint!("\r\x1b[2K");
        }
    }
}

/// The q4 column weighting the flags ask for.
fn weighting(args: &Args) -> gpt2q::Result<Weighting> {
    Ok(match &args.calib {
        Some(path) => Weighting::Activations {
            text: read_text(path)?,
            tokens: args.calib_tokens as usize,
        },
        None => Weighting::Uniform,
    })
}

/// A UTF-8 text file.
fn read_text(path: &Path) -> gpt2q::Result<String> {
    let bytes = std::fs::read(path).map_err(|e| gpt2q::Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        gpt2q::Error::invalid(format!(
            "{} is not valid UTF-8 (bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn report_sensitivity(args: &Args, text_path: &Path) -> gpt2q::Result<()> {
    let text = read_text(text_path)?;
    let opts = SensitivityOptions {
        tokens: args.calib_tokens as usize,
        ..SensitivityOptions::default()
    };
    let live = !args.quiet && std::io::stderr().is_terminal();
    let mut progress = |i: usize, n: usize, name: &str| {
        if live {
            eprint!("\r\x1b[2K[{:>3}/{n}] {name} in q4", i + 1);
            let _ = std::io::stderr().flush();
        }
    };
    let rows = tensor_sensitivity(&args.checkpoint, &text, opts, &mut progress)?;
    if live {
        eprint!("\r\x1b[2K");
    }
    print!("{}", format_report(&rows));
    Ok(())
}
