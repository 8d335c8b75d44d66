//! `gpt2q chat`: an interactive conversation on stdin/stdout: the read–reply loop over
//! [`gpt2q::chat::Chat`] turns, and the Ctrl-C (SIGINT) handling that stops a reply without
//! quitting.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use gpt2q::chat::{Chat, ChatConfig, ChatTemplate, TurnStats};
use gpt2q::generate::StopReason;
use gpt2q::model::Model;
use gpt2q::sampler::Sampler;
use gpt2q::session::{self, Session};
use gpt2q::tokenizer::Utf8Stream;
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

/// What a Ctrl-C (SIGINT) should do, as decided by [`Interrupt::signal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    /// A reply is being generated: it stops at the next token.
    StopReply,
    /// First Ctrl-C at the prompt: say how to quit.
    Hint,
    /// Second Ctrl-C at the prompt: quit.
    Quit,
}

/// Ctrl-C state shared between a signal handler and [`run_chat`]; only atomics, so a handler may
/// call [`Interrupt::signal`] (it is async-signal-safe).
#[derive(Debug, Default)]
pub struct Interrupt {
    requested: AtomicBool,
    at_prompt: AtomicBool,
}

impl Interrupt {
    /// No Ctrl-C seen, not at the prompt.
    pub const fn new() -> Self {
        Interrupt {
            requested: AtomicBool::new(false),
            at_prompt: AtomicBool::new(false),
        }
    }

    /// Records a Ctrl-C and says what the handler should do about it.
    pub fn signal(&self) -> SignalAction {
        if !self.at_prompt.load(Ordering::SeqCst) {
            self.requested.store(true, Ordering::SeqCst);
            SignalAction::StopReply
        } else if self.requested.swap(true, Ordering::SeqCst) {
            SignalAction::Quit
        } else {
            SignalAction::Hint
        }
    }

    /// True (once) if a Ctrl-C arrived since the last call.
    pub fn take(&self) -> bool {
        self.requested.swap(false, Ordering::SeqCst)
    }

    fn set_at_prompt(&self, at_prompt: bool) {
        self.requested.store(false, Ordering::SeqCst);
        self.at_prompt.store(at_prompt, Ordering::SeqCst);
    }
}

/// Totals of a [`run_chat`] session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChatSummary {
    /// Turns answered.
    pub turns: usize,
    /// Reply tokens sampled.
    pub generated_tokens: usize,
    /// Replies stopped by Ctrl-C.
    pub interrupted: usize,
    /// Context shifts made.
    pub context_shifts: usize,
}

/// The chat loop: writes `prompt` (e.g. `"> "`, or nothing when input is not a terminal), reads
/// one line from `input`, streams the reply to `out` followed by a newline, and repeats until
/// end of input. Blank lines are skipped. A reply stops early when `interrupt` reports a Ctrl-C.
fn run_chat(
    chat: &mut Chat<'_, '_>,
    input: &mut impl BufRead,
    out: &mut impl Write,
    prompt: &str,
    interrupt: &Interrupt,
) -> Result<ChatSummary> {
    let mut summary = ChatSummary::default();
    let mut line = Vec::new();
    loop {
        interrupt.set_at_prompt(true);
        write_flush(out, prompt.as_bytes())?;
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("<stdin>", e))?;
        interrupt.set_at_prompt(false);
        if n == 0 {
            return Ok(summary);
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| Error::invalid("a line of input is not valid UTF-8"))?
            .trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let stats = reply_to(chat, text, out, interrupt)?;
        summary.turns += 1;
        summary.generated_tokens += stats.generated_tokens;
        summary.context_shifts += stats.context_shifts;
        summary.interrupted += usize::from(stats.stop == StopReason::Callback);
    }
}

/// One turn, streaming the reply's text to `out`.
fn reply_to(
    chat: &mut Chat<'_, '_>,
    text: &str,
    out: &mut impl Write,
    interrupt: &Interrupt,
) -> Result<TurnStats> {
    let mut utf8 = Utf8Stream::new();
    let mut write_error = None;
    let stats = chat.turn(text, |bytes| {
        if interrupt.take() {
            return ControlFlow::Break(());
        }
        match write_flush(out, utf8.push(bytes).as_bytes()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e);
    }
    write_flush(out, utf8.finish().as_bytes())?;
    write_flush(out, b"\n")?;
    Ok(stats)
}

fn write_flush(out: &mut impl Write, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(|e| Error::io(super::STDOUT, e))
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::path::Path;

    use gpt2q::kv_cache::KvType;
    use gpt2q::mmap::ModelFile;
    use gpt2q::sampler::SamplerConfig;
    use gpt2q::session::SessionConfig;

    use super::*;

    #[test]
    fn second_ctrl_c_at_the_prompt_quits() {
        let i = Interrupt::new();
        assert_eq!(i.signal(), SignalAction::StopReply);
        assert!(i.take());
        assert!(!i.take());
        i.set_at_prompt(true);
        assert_eq!(i.signal(), SignalAction::Hint);
        assert_eq!(i.signal(), SignalAction::Quit);
        i.set_at_prompt(false);
        assert_eq!(i.signal(), SignalAction::StopReply);
    }

    fn transcript(seed: u64, lines: &str) -> (String, usize) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gpt2-q8.g2q");
        let file = ModelFile::open(&path).unwrap();
        let model = Model::load(&file, false).unwrap();
        let config = SessionConfig::new(128).with_kv(KvType::F32);
        let mut s = Session::with_config(&model, config).unwrap();
        let sampler_config = SamplerConfig {
            seed,
            ..SamplerConfig::default()
        };
        let mut smp = Sampler::new(sampler_config, model.hparams.n_vocab as usize).unwrap();
        let chat_config = ChatConfig {
            template: ChatTemplate::dialogpt(),
            system: String::new(),
            max_reply_tokens: 8,
            keep: None,
        };
        let mut chat = Chat::new(&mut s, &mut smp, chat_config).unwrap();
        let mut out = Vec::new();
        let summary = run_chat(
            &mut chat,
            &mut Cursor::new(lines.as_bytes()),
            &mut out,
            "> ",
            &Interrupt::new(),
        )
        .unwrap();
        (String::from_utf8_lossy(&out).into_owned(), summary.turns)
    }

    #[test]
    fn same_seed_same_conversation_and_eof_ends_it() {
        let lines = "Hi there!\n\nWhat is your name?\n";
        let (a, turns) = transcript(11, lines);
        assert_eq!(turns, 2, "the blank line is skipped");
        assert_eq!(a, transcript(11, lines).0);
        assert!(a.starts_with("> ") && a.ends_with("\n> "), "{a:?}");
        assert_eq!(transcript(11, "").1, 0);
    }
}
