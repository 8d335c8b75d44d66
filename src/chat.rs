//! Multi-turn chat over one [`Session`]: turn templates, the conversation's token history and the
//! read–reply loop.
//!
//! The KV cache is kept between turns: each turn runs only its own new tokens (plus the last token
//! of the previous reply, which was sampled but not yet fed back). When the context fills, the
//! oldest half of the tokens after the first `keep` (the system prompt by default) is dropped and
//! the survivors are re-run at their new positions, as [`ContextPolicy::Shift`] does for
//! [`crate::generate`]. Nothing is allocated per token; each turn allocates its own tokens once.
//! The library never prints: [`run_chat`] writes replies to any [`Write`] and reads from any
//! [`BufRead`], so tests can drive it in-process.
//!
//! [`ContextPolicy::Shift`]: crate::generate::ContextPolicy::Shift

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::generate::{StopReason, StopText};
use crate::sampler::Sampler;
use crate::session::Session;
use crate::tokenizer::Utf8Stream;

/// The placeholder a turn template replaces with the user's text.
pub const USER_PLACEHOLDER: &str = "{user}";

/// How a user's line becomes prompt text, and how a reply ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTemplate {
    prefix: String,
    suffix: String,
    stop: Option<String>,
}

impl ChatTemplate {
    /// DialoGPT's convention: every turn, the user's and the model's, ends with `<|endoftext|>`.
    pub fn dialogpt() -> Self {
        ChatTemplate {
            prefix: String::new(),
            suffix: "<|endoftext|>".into(),
            stop: None,
        }
    }

    /// A template such as `"User: {user}\nBot:"` (exactly one `{user}`), with an optional stop
    /// string (such as `"\n"`) that ends the model's reply. Replies also end at `<|endoftext|>`.
    pub fn new(turn: &str, stop: Option<&str>) -> Result<Self> {
        let mut parts = turn.split(USER_PLACEHOLDER);
        let (Some(prefix), Some(suffix), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::invalid(format!(
                "the chat template must contain {USER_PLACEHOLDER} exactly once, got {turn:?}"
            )));
        };
        if stop == Some("") {
            return Err(Error::invalid("the stop string is empty"));
        }
        Ok(ChatTemplate {
            prefix: prefix.into(),
            suffix: suffix.into(),
            stop: stop.map(str::to_owned),
        })
    }

    /// The prompt text of one user turn.
    pub fn render(&self, user: &str) -> String {
        format!("{}{user}{}", self.prefix, self.suffix)
    }

    /// The stop string that ends a reply, if any.
    pub fn stop(&self) -> Option<&str> {
        self.stop.as_deref()
    }

    /// Text fed after a reply that was cut short (length limit, Ctrl-C), so the next turn starts
    /// cleanly: the stop string, else `<|endoftext|>`.
    pub fn reply_end(&self) -> &str {
        self.stop.as_deref().unwrap_or("<|endoftext|>")
    }
}

/// How a chat is set up.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// How turns are written.
    pub template: ChatTemplate,
    /// Text run once at the start (may be empty).
    pub system: String,
    /// The most tokens one reply may have (at least 1).
    pub max_reply_tokens: usize,
    /// Tokens at the start never dropped when the context shifts (default: the system prompt's).
    pub keep: Option<usize>,
}

/// What one turn did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnStats {
    /// New tokens run through the model before the reply: the end of the previous reply (if not
    /// yet fed) and this turn's prompt tokens.
    pub fed_tokens: usize,
    /// Tokens sampled for the reply.
    pub generated_tokens: usize,
    /// Context shifts made during the turn.
    pub context_shifts: usize,
    /// Tokens re-run because of those shifts.
    pub reprocessed_tokens: usize,
    /// Why the reply ended.
    pub stop: StopReason,
}

/// A conversation in progress: a session whose cache holds every token of `history` except the
/// last `unfed` ones, which are run at the start of the next turn.
pub struct Chat<'s, 'm> {
    session: &'s mut Session<'m>,
    sampler: &'s mut Sampler,
    stop_text: Option<StopText>,
    reply_end: Vec<u32>,
    template: ChatTemplate,
    max_reply: usize,
    keep: usize,
    eos: u32,
    history: Vec<u32>,
    unfed: usize,
}

impl<'s, 'm> Chat<'s, 'm> {
    /// Starts a conversation: resets `session` and runs the system prompt.
    pub fn new(
        session: &'s mut Session<'m>,
        sampler: &'s mut Sampler,
        config: ChatConfig,
    ) -> Result<Self> {
        let model = session.model();
        let system = model.tokenizer.encode(&config.system);
        let keep = config.keep.unwrap_or(system.len());
        let capacity = session.capacity();
        if config.max_reply_tokens == 0 {
            return Err(Error::invalid("the reply length limit must be at least 1"));
        }
        if keep + 2 > capacity {
            return Err(Error::invalid(format!(
                "keeping {keep} tokens leaves no room in a context of {capacity} (shorten the \
                 system prompt or --keep, or raise --ctx)"
            )));
        }
        session.reset();
        let mut chat = Chat {
            stop_text: config.template.stop().map(StopText::new).transpose()?,
            reply_end: model.tokenizer.encode(config.template.reply_end()),
            eos: model.hparams.eos_id,
            template: config.template,
            max_reply: config.max_reply_tokens,
            keep,
            history: system,
            unfed: 0,
            session,
            sampler,
        };
        chat.unfed = chat.history.len();
        let mut stats = TurnStats::new();
        chat.feed(&mut stats)?;
        Ok(chat)
    }

    /// Every token of the conversation still in context, plus the ones not yet fed.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Positions held by the session's KV cache.
    pub fn position(&self) -> usize {
        self.session.pos()
    }

    /// Tokens at the start that context shifts never drop.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Runs the user's `text` as one turn, then samples the reply, passing its bytes to `on_text`
    /// as they become final (call-backs may get empty slices; returning `Break` ends the reply).
    /// On an error before the reply starts (a turn too long for the context), the conversation
    /// is left as it was.
    pub fn turn(
        &mut self,
        text: &str,
        mut on_text: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<TurnStats> {
        let model = self.session.model();
        let tokens = model.tokenizer.encode(&self.template.render(text));
        let (len, unfed) = (self.history.len(), self.unfed);
        self.history
            .reserve(tokens.len() + self.max_reply + self.reply_end.len());
        self.history.extend_from_slice(&tokens);
        self.unfed += tokens.len();
        let mut stats = TurnStats::new();
        if self.unfed == 0 {
            return Err(Error::invalid("the turn has no tokens"));
        }
        stats.fed_tokens = self.unfed;
        if let Err(e) = self.feed(&mut stats) {
            self.history.truncate(len);
            self.unfed = unfed;
            return Err(e);
        }
        self.reply(&mut stats, &mut on_text)?;
        if matches!(stats.stop, StopReason::Length | StopReason::Callback) {
            self.history.extend_from_slice(&self.reply_end);
            self.unfed += self.reply_end.len();
        }
        Ok(stats)
    }

    /// Samples the reply; the last sampled token is left unfed.
    fn reply(
        &mut self,
        stats: &mut TurnStats,
        on_text: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<()> {
        let model = self.session.model();
        while stats.generated_tokens < self.max_reply {
            let token = self
                .sampler
                .sample(self.session.logits_mut(), &self.history)?;
            self.history.push(token);
            self.unfed = 1;
            stats.generated_tokens += 1;
            if token == self.eos {
                stats.stop = StopReason::EndOfText;
                return Ok(());
            }
            let bytes = model.tokenizer.token_bytes(token).unwrap_or(&[]);
            let mut flow = ControlFlow::Continue(());
            let mut emit = |b: &[u8]| {
                if flow.is_continue() {
                    flow = on_text(b);
                }
            };
            let stopped = match &mut self.stop_text {
                Some(stop) => stop.push(bytes, &mut emit),
                None => {
                    emit(bytes);
                    false
                }
            };
            if stopped {
                stats.stop = StopReason::StopString;
                return Ok(());
            }
            if flow.is_break() {
                stats.stop = StopReason::Callback;
                return Ok(());
            }
            if stats.generated_tokens < self.max_reply {
                self.feed(stats)?;
            }
        }
        stats.stop = StopReason::Length;
        if let Some(stop) = &mut self.stop_text {
            stop.finish(|b| {
                let _ = on_text(b);
            });
        }
        Ok(())
    }

    /// Runs the unfed tokens, first dropping the oldest unkept tokens if they would not fit:
    /// half of them, or more if the new tokens need it.
    fn feed(&mut self, stats: &mut TurnStats) -> Result<()> {
        let n = self.unfed;
        if n == 0 {
            return Ok(());
        }
        let (pos, capacity) = (self.session.pos(), self.session.capacity());
        if pos + n <= capacity {
            self.session.prefill(&self.history[pos..])?;
            self.unfed = 0;
            return Ok(());
        }
        let keep = self.keep.min(pos);
        if n > capacity - keep {
            return Err(Error::invalid(format!(
                "this turn is {n} tokens; the context of {capacity} has room for {} after the \
                 {keep} kept tokens",
                capacity - keep
            )));
        }
        let discard = ((pos - keep) / 2).max(pos + n - capacity);
        self.history.drain(keep..keep + discard);
        self.session.truncate(keep);
        self.session.prefill(&self.history[keep..])?;
        stats.context_shifts += 1;
        stats.reprocessed_tokens += pos - keep - discard;
        self.unfed = 0;
        Ok(())
    }
}

impl TurnStats {
    fn new() -> Self {
        TurnStats {
            fed_tokens: 0,
            generated_tokens: 0,
            context_shifts: 0,
            reprocessed_tokens: 0,
            stop: StopReason::Length,
        }
    }
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
pub fn run_chat(
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
        .map_err(|e| Error::io("<stdout>", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_need_one_placeholder() {
        let t = ChatTemplate::new("User: {user}\nBot:", Some("\n")).unwrap();
        assert_eq!(t.render("hi"), "User: hi\nBot:");
        assert_eq!(t.reply_end(), "\n");
        assert_eq!(ChatTemplate::dialogpt().render("hi"), "hi<|endoftext|>");
        assert!(ChatTemplate::new("no placeholder", None).is_err());
        assert!(ChatTemplate::new("{user}{user}", None).is_err());
        assert!(ChatTemplate::new("{user}", Some("")).is_err());
    }

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
}
