//! `gpt2q run`: generate text from a prompt, streaming it to stdout.

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use gpt2q::generate::{
    reserve_len, ContextPolicy, Event, GenerationStats, Generator, StopReason, StopRules, StopText,
};
use gpt2q::model::Model;
use gpt2q::sampler::Sampler;
use gpt2q::session::{self, Session};
use gpt2q::task::{Task, TaskDefaults};
use gpt2q::tokenizer::Utf8Stream;
use gpt2q::{Error, Result};

use super::options::{unescape, ContextArgs, SamplingArgs};
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
    /// Number of tokens to generate [default: 128, or the task's].
    #[arg(short = 'n', long)]
    n_predict: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    context: ContextArgs,
    /// Keep generating after <|endoftext|>.
    #[arg(long)]
    ignore_eos: bool,
    /// Stop when the context is full instead of shifting it.
    #[arg(long)]
    no_shift: bool,
    /// Stop when the output contains this text (not printed; escapes \n, \t, \\).
    #[arg(long)]
    stop: Option<String>,
    /// Wrap the input in a zero-shot prompt from the GPT-2 paper: summarize, translate
    /// (English to French) or qa. Only the answer is printed.
    #[arg(long)]
    task: Option<Task>,
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

pub fn run(args: Args) -> Result<()> {
    let input = read_prompt(&args)?;
    let preset = args.task.map(Task::defaults);
    let config = args.sampling.config(
        preset.and_then(|p| p.top_k),
        preset.is_some_and(|p| p.greedy),
    )?;
    let prompt = args
        .task
        .map_or_else(|| input.clone(), |t| t.prompt(&input));
    let stop = stop_text(&args, preset)?;
    let file = args.model.open()?;
    let model = Model::load(&file, args.model.verify)?;
    let ctx_args = &args.context;
    let plan = session::plan(
        &model.hparams,
        file.bytes().len(),
        ctx_args.ctx,
        ctx_args.kv,
        ctx_args.mem_limit,
    )?;
    let ctx = plan.config.ctx;
    let (ids, prompt) = prompt_ids(&model, prompt, ctx, args.truncate_prompt, args.quiet)?;
    let mut session = Session::with_config(&model, plan.config)?;
    let mut sampler = Sampler::new(config.clone(), model.hparams.n_vocab as usize)?;
    if !args.quiet {
        eprintln!(
            "gpt2q: {} prompt tokens, ctx {ctx}, KV {}, {:.1} MiB planned, seed {}",
            ids.len(),
            ctx_args.kv,
            plan.memory.total() as f64 / (1024.0 * 1024.0),
            config.seed
        );
    }
    let job = Job {
        ids: &ids,
        // A task's few-shot prompt is scaffolding: print only the answer.
        echo: if args.task.is_some() { "" } else { &prompt },
        rules: StopRules {
            max_new_tokens: args
                .n_predict
                .or(preset.map(|p| p.max_new_tokens))
                .unwrap_or(DEFAULT_N_PREDICT),
            stop_token: (!args.ignore_eos).then_some(model.hparams.eos_id),
        },
        policy: if args.no_shift {
            ContextPolicy::Stop
        } else {
            ContextPolicy::Shift {
                keep: ctx_args.keep.unwrap_or(0),
            }
        },
        stop,
    };
    // Generate on a worker of the thread pool: called from outside it, every parallel matrix
    // product would inject a job into rayon's queue, which allocates (a block per 63 jobs).
    let stats = rayon::scope(|_| stream(&mut session, &mut sampler, job))?;
    if !args.quiet {
        report(&stats);
    }
    if args.print_peak_rss {
        match gpt2q::machine::peak_rss_bytes() {
            Some(b) => eprintln!("gpt2q: peak RSS {b} bytes"),
            None => eprintln!("gpt2q: peak RSS unknown"),
        }
    }
    Ok(())
}

/// Tokens generated when neither -n nor a task says how many.
const DEFAULT_N_PREDICT: usize = 128;

/// The stop string: --stop, else the task's.
fn stop_text(args: &Args, preset: Option<TaskDefaults>) -> Result<Option<StopText>> {
    let stop = match &args.stop {
        Some(s) => Some(unescape("--stop", s)?),
        None => preset.and_then(|p| p.stop).map(str::to_owned),
    };
    stop.as_deref().map(StopText::new).transpose()
}

/// What one generation runs and how it ends.
struct Job<'a> {
    ids: &'a [u32],
    echo: &'a str,
    rules: StopRules,
    policy: ContextPolicy,
    stop: Option<StopText>,
}

/// Streams text to stdout as soon as it is complete UTF-8, remembering the first write error.
struct Sink<'a> {
    out: std::io::StdoutLock<'a>,
    utf8: Utf8Stream,
    error: Option<std::io::Error>,
}

impl Sink<'_> {
    fn write(&mut self, bytes: &[u8]) {
        let text = self.utf8.push(bytes);
        if let Err(e) = self
            .out
            .write_all(text.as_bytes())
            .and_then(|_| self.out.flush())
        {
            self.error.get_or_insert(e);
        }
    }

    fn finish(mut self) -> Result<()> {
        let io = |e| Error::io(super::STDOUT, e);
        if let Some(e) = self.error.take() {
            return Err(io(e));
        }
        let tail = self.utf8.finish();
        self.out.write_all(tail.as_bytes()).map_err(io)?;
        self.out.write_all(b"\n").map_err(io)?;
        self.out.flush().map_err(io)
    }
}

/// Generates, writing the prompt and then each token's text to stdout as soon as it is complete
/// UTF-8 (and not possibly the start of the stop string).
fn stream(
    session: &mut Session<'_>,
    sampler: &mut Sampler,
    mut job: Job<'_>,
) -> Result<GenerationStats> {
    let mut sink = Sink {
        out: std::io::stdout().lock(),
        utf8: Utf8Stream::new(),
        error: None,
    };
    sink.write(job.echo.as_bytes());
    let mut history = Vec::with_capacity(reserve_len(job.ids.len(), job.rules.max_new_tokens));
    history.extend_from_slice(job.ids);
    let mut generator = Generator::new(session, sampler, history, job.policy);
    let stats = generator.generate(job.rules, job.stop.as_mut(), |event| match event {
        Event::Text(bytes) => {
            sink.write(bytes);
            match sink.error {
                Some(_) => ControlFlow::Break(()),
                None => ControlFlow::Continue(()),
            }
        }
        Event::Logits(_) | Event::Token(_) => ControlFlow::Continue(()),
    })?;
    sink.finish()?;
    Ok(stats)
}

fn report(stats: &GenerationStats) {
    let why = match stats.stop {
        StopReason::Length => "length limit",
        StopReason::EndOfText => "<|endoftext|>",
        StopReason::ContextFull => "context full",
        StopReason::Callback => "output closed",
        StopReason::StopString => "stop string",
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
