//! `gpt2q run`: generate text from a prompt, streaming it to stdout.

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use gpt2q::generate::{generate, StopReason, StopRules};
use gpt2q::model::{Model, Session};
use gpt2q::sampler::{Sampler, SamplerConfig};
use gpt2q::tokenizer::Utf8Stream;
use gpt2q::{Error, Result};

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text (empty: start from <|endoftext|>).
    #[arg(short, long, conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file ("-" for stdin).
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Number of tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    n_predict: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (default: from the clock; printed to stderr so a run can be repeated).
    #[arg(short, long)]
    seed: Option<u64>,
    /// Always pick the most likely token.
    #[arg(long)]
    greedy: bool,
    /// Keep generating after <|endoftext|>.
    #[arg(long)]
    ignore_eos: bool,
    /// Context size in tokens (default: prompt + n, at most the model's maximum).
    #[arg(short, long)]
    ctx: Option<usize>,
    /// Print nothing on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn read_prompt(args: &Args) -> Result<String> {
    let Some(path) = &args.file else {
        return Ok(args.prompt.clone().unwrap_or_default());
    };
    let bytes = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("<stdin>", e))?;
        buf
    } else {
        std::fs::read(path).map_err(|e| Error::io(path, e))?
    };
    String::from_utf8(bytes).map_err(|e| {
        Error::invalid(format!(
            "the prompt in {} is not valid UTF-8 (bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn sampler_config(args: &Args) -> SamplerConfig {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let temperature = if args.greedy { 0.0 } else { args.temperature };
    SamplerConfig {
        temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed,
    }
}

pub fn run(args: Args) -> Result<()> {
    let prompt = read_prompt(&args)?;
    let config = sampler_config(&args);
    config.validate()?;
    let file = args.model.open()?;
    let model = Model::load(&file, args.model.verify)?;
    let mut ids = model.tokenizer.encode(&prompt);
    if ids.is_empty() {
        ids.push(model.hparams.eos_id);
    }
    let max_ctx = model.hparams.n_ctx as usize;
    let ctx = args
        .ctx
        .unwrap_or((ids.len() + args.n_predict).min(max_ctx));
    if ctx == 0 || ctx > max_ctx {
        return Err(Error::invalid(format!(
            "--ctx must be in 1..={max_ctx} for this model, got {ctx}"
        )));
    }
    if ids.len() > ctx {
        return Err(Error::invalid(format!(
            "the prompt is {} tokens, more than the context of {ctx}",
            ids.len()
        )));
    }
    let mut session = Session::new(&model, ctx)?;
    let mut sampler = Sampler::new(config.clone(), model.hparams.n_vocab as usize)?;
    if !args.quiet {
        eprintln!(
            "gpt2q: {} prompt tokens, ctx {ctx}, seed {}",
            ids.len(),
            config.seed
        );
    }
    let rules = StopRules {
        max_new_tokens: args.n_predict,
        stop_token: (!args.ignore_eos).then_some(model.hparams.eos_id),
    };
    let stats = stream(&model, &mut session, &mut sampler, &ids, &prompt, rules)?;
    if !args.quiet {
        report(&stats);
    }
    Ok(())
}

/// Generates, writing the prompt and then each token's text to stdout as soon as it is complete UTF-8.
fn stream(
    model: &Model<'_>,
    session: &mut Session<'_>,
    sampler: &mut Sampler,
    ids: &[u32],
    prompt: &str,
    rules: StopRules,
) -> Result<gpt2q::generate::GenerationStats> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io = |e| Error::io("<stdout>", e);
    out.write_all(prompt.as_bytes()).map_err(io)?;
    out.flush().map_err(io)?;
    let mut utf8 = Utf8Stream::new();
    let mut history = Vec::new();
    let mut write_error = None;
    let eos = rules.stop_token;
    let stats = generate(session, sampler, ids, rules, &mut history, |token| {
        if Some(token) == eos {
            return ControlFlow::Continue(());
        }
        let bytes = model.tokenizer.token_bytes(token).unwrap_or(&[]);
        let text = utf8.push(bytes);
        match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(io(e));
    }
    out.write_all(utf8.finish().as_bytes()).map_err(io)?;
    out.write_all(b"\n").map_err(io)?;
    out.flush().map_err(io)?;
    Ok(stats)
}

fn report(stats: &gpt2q::generate::GenerationStats) {
    let why = match stats.stop {
        StopReason::Length => "length limit",
        StopReason::EndOfText => "<|endoftext|>",
        StopReason::ContextFull => "context full",
        StopReason::Callback => "output closed",
    };
    eprintln!(
        "gpt2q: prompt {} tokens at {:.1} tok/s; generated {} tokens at {:.1} tok/s; stopped at {why}",
        stats.prompt_tokens,
        stats.prefill_tokens_per_second(),
        stats.generated_tokens,
        stats.decode_tokens_per_second()
    );
}
