//! `gpt2q perplexity`: score a text file (see `gpt2q::perplexity` for the windowing).

use std::path::PathBuf;

use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::perplexity::{compare, perplexity, Comparison};
use gpt2q::session::Session;
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
    /// Also run this base model (e.g. the f32 or f16 conversion) over the same windows and report
    /// KL divergence from it and top-1 agreement.
    #[arg(long)]
    compare: Option<PathBuf>,
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
    let report = match &args.compare {
        None => perplexity(&mut session, &ids, window, stride)?,
        Some(base_path) => {
            let base_file = ModelFile::open_or_load(base_path, args.model.mmap)?;
            let base_model = Model::load(&base_file, args.model.verify)?;
            let mut base = Session::for_scoring(&base_model, window.max(1))?;
            let (report, cmp) = compare(&mut session, &mut base, &ids, window, stride)?;
            print_comparison(&cmp)?;
            report
        }
    };
    outln!(
        "tokens: {} ({} scored in {} windows of {window}, stride {stride})",
        ids.len(),
        report.scored_tokens,
        report.window_mean_nll.len()
    );
    outln!("mean_nll: {:.6}", report.mean_nll());
    outln!("perplexity: {:.4}", report.perplexity());
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "gpt2q: {secs:.1} s, {:.1} scored tok/s",
        report.scored_tokens as f64 / secs
    );
    Ok(())
}

fn print_comparison(cmp: &Comparison) -> Result<()> {
    outln!("base_mean_nll: {:.6}", cmp.base.mean_nll());
    outln!("base_perplexity: {:.4}", cmp.base.perplexity());
    outln!("kl_mean: {:.6}", cmp.kl_mean());
    outln!("kl_p99: {:.6}", cmp.kl_percentile(99.0));
    outln!("kl_max: {:.6}", cmp.kl_percentile(100.0));
    outln!("top1_agreement: {:.4}", cmp.top1_agreement());
    Ok(())
}
