//! Command-line interface: flag definitions and one module per subcommand. Everything that
//! prints lives here; the library never prints or exits.

/// `println!` for a command's output that hands a failed write to stdout back as an error (with
/// `?`) instead of panicking as `println!` does: a closed pipe (`gpt2q run | head`) ends the
/// command, and [`is_closed_stdout`] lets `main` treat that as a normal end.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

mod bench;
mod chat;
mod info;
mod options;
mod perplexity;
mod run;
mod score;
#[cfg(feature = "server")]
mod serve;
mod tokenize;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::{Error, Result};

/// gpt2q: run GPT-2 fast on small boards.
#[derive(Parser, Debug)]
#[command(name = "gpt2q", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt.
    Run(run::Args),
    /// Talk to the model, one line per turn, keeping the context between turns.
    Chat(chat::Args),
    /// Print the token ids (and pieces) of a text.
    Tokenize(tokenize::Args),
    /// Score a text file: mean negative log-likelihood and perplexity.
    Perplexity(perplexity::Args),
    /// Score each line of a file: every token's log-probability, as JSON lines or TSV.
    Score(score::Args),
    /// Describe a model file: hyper-parameters, tensors, memory needed.
    Info(info::Args),
    /// Check every tensor's checksum.
    Verify(VerifyArgs),
    /// Measure prefill and decode speed, memory bandwidth and the roofline.
    Bench(bench::Args),
    /// Serve the model over HTTP with the OpenAI API (completions, chat, models, health, metrics).
    #[cfg(feature = "server")]
    Serve(serve::Args),
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// Model file.
    model: PathBuf,
}

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Score(a) => score::run(a),
        Command::Info(a) => info::run(a),
        Command::Verify(a) => verify(&a.model),
        Command::Bench(a) => bench::run(a),
        #[cfg(feature = "server")]
        Command::Serve(a) => serve::run(a),
    }
}

/// Exit codes: 2 bad flags or input, 3 bad model file, 4 I/O error, 5 numeric fault at run time
/// (clap also exits with 2 on a usage error).
pub fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidInput(_) => 2,
        Error::Format(_) => 3,
        Error::Io { .. } => 4,
        Error::Numeric(_) => 5,
    }
}

/// The name I/O errors on standard output carry.
pub const STDOUT: &str = "<stdout>";

/// Writes formatted text to stdout (see `outln!`).
pub fn write_stdout(text: std::fmt::Arguments<'_>) -> Result<()> {
    std::io::stdout()
        .lock()
        .write_fmt(text)
        .map_err(|e| Error::io(STDOUT, e))
}

/// True for a write to a stdout whose reader has gone (`gpt2q run | head -c5`): a normal end
/// for a command-line tool, which then exits 0 without a message, as ripgrep does.
pub fn is_closed_stdout(e: &Error) -> bool {
    matches!(e, Error::Io { path, source }
        if path.as_os_str() == STDOUT && source.kind() == std::io::ErrorKind::BrokenPipe)
}

fn verify(path: &Path) -> Result<()> {
    let file = ModelFile::open(path)?;
    let model = Model::load(&file, true)?;
    outln!(
        "{}: OK ({} tensors verified)",
        path.display(),
        model.tensors.len()
    );
    Ok(())
}

/// The model used when `-m` is not given: `$GPT2Q_MODEL`, else `models/tiny-gpt2-q8.g2q` in the
/// current directory, else in the source tree this binary was built from.
pub fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("GPT2Q_MODEL") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("models/tiny-gpt2-q8.g2q");
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(local)
}

/// Options shared by every command that loads a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model file (.g2q). Default: $GPT2Q_MODEL, else models/tiny-gpt2-q8.g2q.
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Check every tensor's checksum before running.
    #[arg(long)]
    pub verify: bool,
    /// Map the model file instead of reading it into memory on huge pages: shares the pages
    /// with other processes and starts without a copy, but decodes slower (4 KiB pages).
    #[arg(long)]
    pub mmap: bool,
}

impl ModelArgs {
    /// Reads (or with `--mmap` maps) the model file and sets up the thread pool.
    pub fn open(&self) -> Result<ModelFile> {
        self.init_threads()?;
        let path = self.model.clone().unwrap_or_else(default_model_path);
        if !path.exists() {
            // An I/O error (exit 4) like every other command's missing file, with a hint.
            return Err(Error::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model file does not exist (convert one with gpt2q-convert, see models/README.md)",
                ),
            ));
        }
        ModelFile::open_or_load(&path, self.mmap)
    }

    fn init_threads(&self) -> Result<()> {
        let n = match self.threads {
            Some(0) => return Err(Error::invalid("--threads must be at least 1")),
            Some(n) => n,
            None => gpt2q::machine::cores(),
        };
        // A second call (tests running several commands in one process) keeps the first pool.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
        Ok(())
    }
}
