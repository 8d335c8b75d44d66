//! Multi-turn chat over one [`Session`]: turn templates and the conversation, one turn at a time.
//!
//! The KV cache is kept between turns: each turn runs only its own new tokens (plus the last token
//! of the previous reply, which was sampled but not yet fed back). Replies come from the one
//! generation loop ([`Generator`]): when the context fills, the oldest half of the tokens after
//! the first `keep` (the system prompt by default) is dropped and the survivors are re-run at
//! their new positions ([`ContextPolicy::Shift`]). Nothing is allocated per token; each turn
//! allocates its own tokens once. The library never prints or reads a terminal: a turn hands
//! the reply's bytes to a callback (`gpt2q chat`'s read–reply loop is in `src/cli/chat.rs`).

use std::ops::ControlFlow;

use crate::error::{Error, Result};
use crate::generate::{ContextPolicy, Event, Generator, StopReason, StopRules, StopText};
use crate::sampler::Sampler;
use crate::session::Session;

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
    /// Tokens run by those shifts (as
    /// [`crate::generate::GenerationStats::reprocessed_tokens`] counts them).
    pub reprocessed_tokens: usize,
    /// Why the reply ended.
    pub stop: StopReason,
}

/// A conversation in progress: a [`Generator`] whose history is the whole conversation, run one
/// turn at a time.
pub struct Chat<'s, 'm> {
    generator: Generator<'s, 'm>,
    stop_text: Option<StopText>,
    reply_end: Vec<u32>,
    template: ChatTemplate,
    max_reply: usize,
    eos: u32,
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
        let mut chat = Chat {
            stop_text: config.template.stop().map(StopText::new).transpose()?,
            reply_end: model.tokenizer.encode(config.template.reply_end()),
            eos: model.hparams.eos_id,
            template: config.template,
            max_reply: config.max_reply_tokens,
            generator: Generator::new(session, sampler, system, ContextPolicy::Shift { keep }),
        };
        chat.generator.feed(&[])?;
        Ok(chat)
    }

    /// Every token of the conversation, those shifted out of the context included, plus the
    /// ones not yet fed.
    pub fn history(&self) -> &[u32] {
        self.generator.history()
    }

    /// Positions held by the session's KV cache.
    pub fn position(&self) -> usize {
        self.generator.position()
    }

    /// Tokens at the start that context shifts never drop.
    pub fn keep(&self) -> usize {
        self.generator.keep()
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
        let model = self.generator.model();
        let tokens = model.tokenizer.encode(&self.template.render(text));
        let fed_tokens = self.generator.pending() + tokens.len();
        if fed_tokens == 0 {
            return Err(Error::invalid("the turn has no tokens"));
        }
        self.generator
            .reserve(tokens.len() + self.max_reply + self.reply_end.len());
        let (shifts, reprocessed) = self.generator.feed(&tokens)?;
        let rules = StopRules {
            max_new_tokens: self.max_reply,
            stop_token: Some(self.eos),
        };
        let reply =
            self.generator
                .generate(rules, self.stop_text.as_mut(), |event| match event {
                    Event::Text(bytes) => on_text(bytes),
                    Event::Logits(_) | Event::Token(_) => ControlFlow::Continue(()),
                })?;
        if matches!(reply.stop, StopReason::Length | StopReason::Callback) {
            // Closed like a finished reply, so the next turn starts cleanly; run with it.
            self.generator.append(&self.reply_end);
        }
        Ok(TurnStats {
            fed_tokens,
            generated_tokens: reply.generated_tokens,
            context_shifts: shifts + reply.context_shifts,
            reprocessed_tokens: reprocessed + reply.reprocessed_tokens,
            stop: reply.stop,
        })
    }
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
}
