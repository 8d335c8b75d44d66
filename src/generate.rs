//! The generation loop: prompt tokens in, sampled tokens out, one callback per token.
//!
//! It owns the order of steps (prefill, sample, feed back, stop conditions), what happens when the
//! session's context fills ([`ContextPolicy`]) and the statistics of a run. It allocates nothing
//! per token, context shifts included. It does not print: callers stream the text (see
//! [`crate::tokenizer::Utf8Stream`]).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sampler::Sampler;
use crate::session::Session;

/// When generation stops.
#[derive(Clone, Copy, Debug)]
pub struct StopRules {
    /// Generate at most this many tokens.
    pub max_new_tokens: usize,
    /// Stop after sampling this token (GPT-2's `<|endoftext|>`), if any.
    pub stop_token: Option<u32>,
}

/// What generation does when the session's KV cache is full and another token must be run.
///
/// GPT-2 has learned absolute position embeddings, so cached keys and values cannot be moved to new
/// positions: a shift re-runs the surviving tokens through the model at their new positions (one
/// batched [`Session::prefill`]). That costs a prefill of about half the context once every
/// half-context of tokens, and keeps memory fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextPolicy {
    /// Stop with [`StopReason::ContextFull`].
    Stop,
    /// Context shifting (llama.cpp's, with `keep` as its `n_keep`): keep the first `keep` tokens
    /// (typically an instruction at the start of the prompt; their cache entries stay as they are),
    /// drop the oldest half of the tokens after them, and re-run the rest at the positions
    /// following the kept ones. With a context of `c` tokens, a shift drops `(c − keep) / 2`
    /// tokens; when that is 0 (`keep ≥ c − 1`) shifting is impossible and generation stops with
    /// [`StopReason::ContextFull`]. Tokens dropped from the context still count for the
    /// repetition penalty (it reads the whole history).
    Shift {
        /// Tokens at the start that are never dropped (clamped to the context size).
        keep: usize,
    },
}

impl Default for ContextPolicy {
    /// Shifting with nothing kept.
    fn default() -> Self {
        ContextPolicy::Shift { keep: 0 }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    Length,
    /// The stop token was sampled.
    EndOfText,
    /// The session's context is full and the [`ContextPolicy`] cannot make room.
    ContextFull,
    /// The callback asked to stop.
    Callback,
    /// A stop string ([`StopText`]) appeared in the output.
    StopString,
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
    /// Time spent generating after the first token (context shifts included).
    pub decode_time: Duration,
    /// Context shifts made ([`ContextPolicy::Shift`]).
    pub context_shifts: usize,
    /// Tokens re-run through the model by context shifts.
    pub reprocessed_tokens: usize,
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
/// token (the repetition penalty reads it, and context shifts re-run its tail); its capacity is
/// reserved up front and reused across calls. The session starts from position 0. When the
/// context fills, the default [`ContextPolicy`] applies (shifting, nothing kept); see
/// [`generate_with_policy`] to choose.
pub fn generate(
    session: &mut Session<'_>,
    sampler: &mut Sampler,
    prompt: &[u32],
    rules: StopRules,
    history: &mut Vec<u32>,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<GenerationStats> {
    generate_with_policy(
        session,
        sampler,
        prompt,
        rules,
        ContextPolicy::default(),
        history,
        on_token,
    )
}

/// Most new tokens [`generate_with_policy`] reserves history room for up front (256 KiB of ids),
/// so a huge `-n` cannot make it allocate gigabytes before the first token.
pub const MAX_RESERVED_TOKENS: usize = 1 << 16;

/// History room to reserve for a prompt of `prompt` tokens and up to `max_new` new ones.
pub fn reserve_len(prompt: usize, max_new: usize) -> usize {
    prompt.saturating_add(max_new.min(MAX_RESERVED_TOKENS))
}

/// [`generate`] with `policy` deciding what happens when the context fills.
///
/// Nothing is allocated after the prompt is checked, provided `history` has room for the prompt
/// and `rules.max_new_tokens` (room is reserved for at most [`MAX_RESERVED_TOKENS`] new tokens;
/// a longer run grows `history` as it goes) and the call is made on a rayon worker thread (inside
/// `ThreadPool::install` or `rayon::scope`): from any other thread each parallel matrix product
/// injects a job into rayon's queue, which allocates about once per 63 products
/// (`tests/alloc_free.rs` measures both).
pub fn generate_with_policy(
    session: &mut Session<'_>,
    sampler: &mut Sampler,
    prompt: &[u32],
    rules: StopRules,
    policy: ContextPolicy,
    history: &mut Vec<u32>,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<GenerationStats> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt has no tokens"));
    }
    if prompt.len() > session.capacity() {
        return Err(Error::invalid(format!(
            "the prompt is {} tokens, more than the context of {}",
            prompt.len(),
            session.capacity()
        )));
    }
    // The cache holds history[..keep] at positions 0..keep, then history[tail..] after them.
    let keep = match policy {
        ContextPolicy::Stop => 0,
        ContextPolicy::Shift { keep } => keep.min(session.capacity()),
    };
    let mut tail = keep;
    session.reset();
    history.clear();
    history.reserve(reserve_len(prompt.len(), rules.max_new_tokens));
    history.extend_from_slice(prompt);
    let start = Instant::now();
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        generated_tokens: 0,
        prefill_time: Duration::ZERO,
        decode_time: Duration::ZERO,
        context_shifts: 0,
        reprocessed_tokens: 0,
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
        if session.pos() < session.capacity() {
            session.forward(token)?;
            continue;
        }
        let discard = (session.pos() - keep) / 2;
        if policy == ContextPolicy::Stop || discard == 0 {
            stats.stop = StopReason::ContextFull;
            break;
        }
        // Drop history[tail..tail + discard] from the context; re-run the survivors and the
        // new token at positions keep.. (their embeddings depend on the position).
        tail += discard;
        session.truncate(keep);
        session.prefill(&history[tail..])?;
        stats.context_shifts += 1;
        stats.reprocessed_tokens += history.len() - tail;
    }
    stats.decode_time = decode_start.elapsed();
    Ok(stats)
}

/// Watches streamed output for a stop string (e.g. `"\n"`), holding back bytes that could be the
/// start of it so that it never reaches the output. Its buffer is sized once; pushing a token
/// allocates only if a single token is longer than that (GPT-2's are far shorter).
#[derive(Clone, Debug)]
pub struct StopText {
    stop: Vec<u8>,
    pending: Vec<u8>,
}

impl StopText {
    /// A matcher for `stop` (not empty).
    pub fn new(stop: &str) -> Result<Self> {
        if stop.is_empty() {
            return Err(Error::invalid("the stop string is empty"));
        }
        Ok(StopText {
            stop: stop.as_bytes().to_vec(),
            pending: Vec::with_capacity(stop.len() + 1024),
        })
    }

    /// Appends a token's bytes and passes `emit` every byte now known not to be part of the stop
    /// string. Returns true when the stop string is complete: the bytes before it have been
    /// emitted and the rest is dropped.
    pub fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) -> bool {
        self.pending.extend_from_slice(bytes);
        let n = self.stop.len();
        if let Some(i) = self.pending.windows(n).position(|w| w == self.stop) {
            emit(&self.pending[..i]);
            self.pending.clear();
            return true;
        }
        // The longest tail of `pending` that begins the stop string must wait for more bytes.
        let held = (1..n.min(self.pending.len() + 1))
            .rev()
            .find(|&k| self.pending.ends_with(&self.stop[..k]))
            .unwrap_or(0);
        let ready = self.pending.len() - held;
        emit(&self.pending[..ready]);
        self.pending.copy_within(ready.., 0);
        self.pending.truncate(held);
        false
    }

    /// Hands back the held bytes (the output ended without the stop string) and empties the buffer.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        emit(&self.pending);
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::StopText;

    fn run(stop: &str, pieces: &[&str]) -> (String, bool) {
        let mut s = StopText::new(stop).unwrap();
        let mut out = Vec::new();
        for p in pieces {
            if s.push(p.as_bytes(), |b| out.extend_from_slice(b)) {
                return (String::from_utf8(out).unwrap(), true);
            }
        }
        s.finish(|b| out.extend_from_slice(b));
        (String::from_utf8(out).unwrap(), false)
    }

    #[test]
    fn stop_string_split_across_tokens_is_never_emitted() {
        assert_eq!(
            run("User:", &["Hi there", " Us", "er", ": more"]),
            ("Hi there ".into(), true)
        );
        assert_eq!(run("\n", &[" Paris", "\n", "Q"]), (" Paris".into(), true));
    }

    #[test]
    fn false_starts_are_released() {
        assert_eq!(
            run("User:", &["a Us", "ed", " it"]),
            ("a Used it".into(), false)
        );
        assert_eq!(run("ab", &["xa"]), ("xa".into(), false));
        assert!(StopText::new("").is_err());
    }
}
