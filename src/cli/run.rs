//! `gpt2q run`: generate text from a prompt, streaming it to stdout.

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use gpt2q::generate::{generate_with_policy, reserve_len, ContextPolicy, StopReason, StopRules};
use gpt2q::kv_cache::KvType;
use gpt2q::model::{Model, Session, SessionConfig};
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
    /// Replace invalid UTF-8 in the prompt file with U+FFFD instead of refusing it.
    #[arg(long)]
    lossy_prompt: bool,
    /// Keep only the last --ctx tokens of a prompt longer than the context instead of refusing it.
    #[arg(long)]
    truncate_prompt: bool,
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
    /// Context size in tokens (default: the model's maximum, capped to what fits --mem-limit).
    /// When it fills, the context shifts (see --keep).
    #[arg(short, long)]
    ctx: Option<usize>,
    /// KV cache element type: f32, f16 (half the memory) or q8 (about a quarter).
    #[arg(long, default_value = "f16")]
    kv: KvType,
    /// When the context is full, keep the first K tokens, drop the oldest half of the rest and
    /// re-run the remainder at their new positions.
    #[arg(long, default_value_t = 0)]
    keep: usize,
    /// Stop when the context is full instead of shifting it.
    #[arg(long)]
    no_shift: bool,
    /// Refuse to start if weights + KV cache + scratch exceed this (e.g. 300M; K, M, G are
    /// powers of 1024), saying what would fit.
    #[arg(long, value_parser = super::info::parse_bytes)]
    mem_limit: Option<usize>,
    /// Print the peak resident memory (Linux VmHWM) on stderr at the end (for tests).
    #[arg(long, hide = true)]
    print_peak_rss: bool,
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
    if args.lossy_prompt {
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::invalid(format!(
            "the prompt in {} is not valid UTF-8 (bad byte at offset {}; --lossy-prompt replaces invalid bytes)",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The prompt's token ids (`<|endoftext|>` alone for an empty prompt) and the text to echo. A
/// prompt longer than `ctx` is an error unless `truncate`, which keeps its last `ctx` tokens.
fn prompt_ids(
    model: &Model<'_>,
    prompt: String,
    ctx: usize,
    truncate: bool,
    quiet: bool,
) -> Result<(Vec<u32>, String)> {
    let mut ids = model.tokenizer.encode(&prompt);
    if ids.is_empty() {
        ids.push(model.hparams.eos_id);
    }
    if ids.len() <= ctx {
        return Ok((ids, prompt));
    }
    if !truncate {
        return Err(Error::invalid(format!(
            "the prompt is {} tokens, more than the context of {ctx} (--truncate-prompt keeps the last {ctx})",
            ids.len()
        )));
    }
    let dropped = ids.len() - ctx;
    ids.drain(..dropped);
    if !quiet {
        eprintln!("gpt2q: --truncate-prompt dropped the first {dropped} prompt tokens");
    }
    let text = model.tokenizer.decode(&ids)?;
    Ok((ids, text))
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
    let (ctx, plan) = super::info::plan(
        &model.hparams,
        file.bytes().len(),
        args.ctx,
        args.kv,
        args.mem_limit,
    )?;
    let (ids, prompt) = prompt_ids(&model, prompt, ctx, args.truncate_prompt, args.quiet)?;
    let mut session = Session::with_config(&model, SessionConfig::new(ctx).with_kv(args.kv))?;
    let mut sampler = Sampler::new(config.clone(), model.hparams.n_vocab as usize)?;
    if !args.quiet {
        eprintln!(
            "gpt2q: {} prompt tokens, ctx {ctx}, KV {}, {:.1} MiB planned, seed {}",
            ids.len(),
            args.kv,
            plan.total() as f64 / (1024.0 * 1024.0),
            config.seed
        );
    }
    let rules = StopRules {
        max_new_tokens: args.n_predict,
        stop_token: (!args.ignore_eos).then_some(model.hparams.eos_id),
    };
    let policy = if args.no_shift {
        ContextPolicy::Stop
    } else {
        ContextPolicy::Shift { keep: args.keep }
    };
    // Generate on a worker of the thread pool: called from outside it, every parallel matrix
    // product would inject a job into rayon's queue, which allocates (a block per 63 jobs).
    let stats = rayon::scope(|_| {
        stream(
            &model,
            &mut session,
            &mut sampler,
            &ids,
            &prompt,
            rules,
            policy,
        )
    })?;
    if !args.quiet {
        report(&stats);
    }
    if args.print_peak_rss {
        match gpt2q::bench::peak_rss_bytes() {
            Some(b) => eprintln!("gpt2q: peak RSS {b} bytes"),
            None => eprintln!("gpt2q: peak RSS unknown"),
        }
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
    policy: ContextPolicy,
) -> Result<gpt2q::generate::GenerationStats> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io = |e| Error::io("<stdout>", e);
    out.write_all(prompt.as_bytes()).map_err(io)?;
    out.flush().map_err(io)?;
    let mut utf8 = Utf8Stream::new();
    let mut history = Vec::with_capacity(reserve_len(ids.len(), rules.max_new_tokens));
    let mut write_error = None;
    let eos = rules.stop_token;
    let stats = generate_with_policy(
        session,
        sampler,
        ids,
        rules,
        policy,
        &mut history,
        |token| {
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
        },
    )?;
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
    if stats.context_shifts > 0 {
        eprintln!(
            "gpt2q: {} context shifts re-ran {} tokens",
            stats.context_shifts, stats.reprocessed_tokens
        );
    }
}
