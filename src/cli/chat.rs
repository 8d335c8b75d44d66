//! `gpt2q chat`: an interactive conversation on stdin/stdout, and the Ctrl-C (SIGINT) handler
//! that stops a reply without quitting.

use std::io::IsTerminal;

use gpt2q::chat::{run_chat, Chat, ChatConfig, ChatTemplate, Interrupt, SignalAction};
use gpt2q::model::Model;
use gpt2q::sampler::Sampler;
use gpt2q::session::{self, Session};
use gpt2q::{Error, Result};

use super::options::{unescape, ContextArgs, SamplingArgs};
use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text run once at the start of the conversation (kept when the context shifts).
    #[arg(long, default_value = "")]
    system: String,
    /// How a user turn is written, with {user} for the text (escapes \n, \t, \\), e.g.
    /// "User: {user}\nBot:". Default: DialoGPT's, each turn followed by <|endoftext|>.
    #[arg(long)]
    template: Option<String>,
    /// Text that ends a reply with --template (escapes allowed), e.g. "\n".
    #[arg(long, requires = "template")]
    stop: Option<String>,
    /// The most tokens in one reply.
    #[arg(short = 'n', long, default_value_t = 64)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    context: ContextArgs,
    /// Print nothing on stderr.
    #[arg(short, long)]
    quiet: bool,
}

/// Ctrl-C state, shared with the signal handler.
static INTERRUPT: Interrupt = Interrupt::new();

pub fn run(args: Args) -> Result<()> {
    let config = args.sampling.config(None, false)?;
    let chat_config = chat_config(&args)?;
    let file = args.model.open()?;
    let model = Model::load(&file, args.model.verify)?;
    let c = &args.context;
    let plan = session::plan(&model.hparams, file.bytes().len(), c.ctx, c.kv, c.mem_limit)?;
    let ctx = plan.config.ctx;
    let mut session = Session::with_config(&model, plan.config)?;
    let mut sampler = Sampler::new(config.clone(), model.hparams.n_vocab as usize)?;
    let interactive = std::io::stdin().is_terminal();
    if !args.quiet {
        eprintln!(
            "gpt2q chat: ctx {ctx}, KV {}, seed {}. Ctrl-C stops a reply; Ctrl-D (or Ctrl-C twice \
             at the prompt) quits.",
            c.kv, config.seed
        );
    }
    install_sigint_handler();
    let summary = rayon::scope(|_| {
        let mut chat = Chat::new(&mut session, &mut sampler, chat_config)?;
        let mut input = std::io::stdin().lock();
        let mut out = std::io::stdout().lock();
        let prompt = if interactive { "> " } else { "" };
        run_chat(&mut chat, &mut input, &mut out, prompt, &INTERRUPT)
    })?;
    if !args.quiet {
        eprintln!(
            "gpt2q chat: {} turns, {} reply tokens, {} stopped by Ctrl-C, {} context shifts",
            summary.turns, summary.generated_tokens, summary.interrupted, summary.context_shifts
        );
    }
    Ok(())
}

fn chat_config(args: &Args) -> Result<ChatConfig> {
    let template = match &args.template {
        Some(t) => {
            let stop = args
                .stop
                .as_deref()
                .map(|s| unescape("--stop", s))
                .transpose()?;
            ChatTemplate::new(&unescape("--template", t)?, stop.as_deref())?
        }
        None => ChatTemplate::dialogpt(),
    };
    if args.max_tokens == 0 {
        return Err(Error::invalid("--max-tokens must be at least 1"));
    }
    Ok(ChatConfig {
        template,
        system: unescape("--system", &args.system)?,
        max_reply_tokens: args.max_tokens,
        keep: args.context.keep,
    })
}

#[cfg(unix)]
mod sigint {
    //! A SIGINT handler through the C library std already links (no `libc` crate): it only touches
    //! atomics, write(2) and _exit(2), which are async-signal-safe.
    use super::{SignalAction, INTERRUPT};

    const SIGINT: i32 = 2;
    const SIG_ERR: usize = usize::MAX;
    const HINT: &[u8] = b"\n(Ctrl-C again or Ctrl-D to quit)\n> ";

    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
        fn write(fd: i32, buf: *const u8, count: usize) -> isize;
        fn _exit(status: i32) -> !;
    }

    extern "C" fn on_sigint(_: i32) {
        match INTERRUPT.signal() {
            SignalAction::StopReply => {}
            // SAFETY: write(2) on a static buffer is async-signal-safe; a failure is harmless.
            SignalAction::Hint => unsafe {
                write(2, HINT.as_ptr(), HINT.len());
            },
            // SAFETY: _exit(2) is async-signal-safe; exit status 130 = 128 + SIGINT, the shell's.
            SignalAction::Quit => unsafe { _exit(130) },
        }
    }

    pub fn install() {
        let handler: extern "C" fn(i32) = on_sigint;
        // SAFETY: installs a handler that only uses async-signal-safe operations. glibc's and
        // musl's signal() keep the handler installed and restart interrupted reads.
        let previous = unsafe { signal(SIGINT, handler as usize) };
        if previous == SIG_ERR {
            eprintln!("gpt2q chat: could not install the Ctrl-C handler; Ctrl-C will quit");
        }
    }
}

#[cfg(unix)]
fn install_sigint_handler() {
    sigint::install();
}

#[cfg(not(unix))]
fn install_sigint_handler() {}
