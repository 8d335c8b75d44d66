//! `gpt2q perplexity`: score a text file (see `gpt2q::perplexity` for the windowing).

use std::path::PathBuf;

use gpt2q::model::{Model, Session};
use gpt2q::perplexity::perplexity;
use gpt2q::{Error, Result};

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text file to score.
    #[arg(short, long)]
    file: PathBuf,
    /// Window length in tokens (default: the model's maximum context).
    #[arg(short, long)]
    ctx: Option<usize>,
    /// Advance between windows (default: --ctx, i.e. non-overlapping windows).
    #[arg(long)]
    stride: Option<usize>,
    /// Use only the first N tokens of the file.
    #[arg(long)]
    max_tokens: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let bytes = std::fs::read(&args.file).map_err(|e| Error::io(&args.file, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::invalid(format!(
            "{} is not valid UTF-8 (bad byte at offset {})",
            args.file.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let file = args.model.open()?;
    let model = Model::load(&file, args.model.verify)?;
    let mut ids = model.tokenizer.encode(&text);
    if let Some(n) = args.max_tokens {
        ids.truncate(n);
    }
    let window = args.ctx.unwrap_or(model.hparams.n_ctx as usize);
    if window > model.hparams.n_ctx as usize {
        return Err(Error::invalid(format!(
            "--ctx {window} is more than the model's maximum of {}",
            model.hparams.n_ctx
        )));
    }
    let stride = args.stride.unwrap_or(window);
    let mut session = Session::for_scoring(&model, window.max(1))?;
    let start = std::time::Instant::now();
    let report = perplexity(&mut session, &ids, window, stride, |_, _| {})?;
    println!(
        "tokens: {} ({} scored in {} windows)",
        ids.len(),
        report.scored_tokens,
        report.window_mean_nll.len()
    );
    println!("mean_nll: {:.6}", report.mean_nll());
    println!("perplexity: {:.4}", report.perplexity());
    eprintln!(
        "gpt2q: {:.1} s, {:.1} tok/s",
        start.elapsed().as_secs_f64(),
        report.scored_tokens as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}
