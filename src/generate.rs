//! The generation loop: prompt tokens in, sampled tokens out, one callback per token.
//!
//! It owns the order of steps (prefill, sample, feed back, stop conditions) and the statistics of a
//! run. It allocates nothing per token. It does not print: callers stream the text (see
//! [`crate::tokenizer::Utf8Stream`]).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::Session;
use crate::sampler::Sampler;

/// When generation stops.
#[derive(Clone, Copy, Debug)]
pub struct StopRules {
    /// Generate at most this many tokens.
    pub max_new_tokens: usize,
    /// Stop after sampling this token (GPT-2's `<|endoftext|>`), if any.
    pub stop_token: Option<u32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    Length,
    /// The stop token was sampled.
    EndOfText,
    /// The session's context is full.
    ContextFull,
    /// The callback asked to stop.
    Callback,
}

/// Timings and counts of one generation.
#[derive(Clone, Copy, Debug)]
pub struct GenerationStats {
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time to process the prompt (and so to the first sampled token).
    pub prefill_time: Duration,
    /// Time spent generating after the first token.
    pub decode_time: Duration,
    /// Why it stopped.
    pub stop: StopReason,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second, after the first.
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Runs `prompt` through `session`, then samples up to `rules.max_new_tokens` tokens, calling
/// `on_token` with each one as soon as it is chosen. `history` receives the prompt and every new
/// token (the repetition penalty reads it); its capacity is reserved up front and reused across calls.
pub fn generate(
    session: &mut Session<'_>,
    sampler: &mut Sampler,
    prompt: &[u32],
    rules: StopRules,
    history: &mut Vec<u32>,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<GenerationStats> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt has no tokens"));
    }
    history.clear();
    history.reserve(prompt.len() + rules.max_new_tokens);
    history.extend_from_slice(prompt);
    let start = Instant::now();
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        generated_tokens: 0,
        prefill_time: Duration::ZERO,
        decode_time: Duration::ZERO,
        stop: StopReason::Length,
    };
    session.prefill(prompt)?;
    stats.prefill_time = start.elapsed();
    let decode_start = Instant::now();
    while stats.generated_tokens < rules.max_new_tokens {
        let token = sampler.sample(session.logits_mut(), history)?;
        stats.generated_tokens += 1;
        history.push(token);
        if on_token(token).is_break() {
            stats.stop = StopReason::Callback;
            break;
        }
        if Some(token) == rules.stop_token {
            stats.stop = StopReason::EndOfText;
            break;
        }
        if stats.generated_tokens == rules.max_new_tokens {
            break;
        }
        if session.pos() == session.capacity() {
            stats.stop = StopReason::ContextFull;
            break;
        }
        session.forward(token)?;
    }
    stats.decode_time = decode_start.elapsed();
    Ok(stats)
}
