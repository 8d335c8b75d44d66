//! The generation loop: prompt tokens in, sampled tokens and their text out, one callback per
//! token. [`Generator`] is the one loop; [`generate`] and [`generate_with_policy`] run it once
//! over a prompt, and [`crate::chat`] runs it turn after turn.
//!
//! It owns the order of steps (prefill, sample, feed back, stop conditions), stop strings
//! ([`StopText`], held back until they cannot be the start of one), what happens when the
//! session's context fills ([`ContextPolicy`]) and the statistics of a run. It allocates nothing
//! per token, context shifts included. It does not print: callers stream the text (see
//! [`crate::tokenizer::Utf8Stream`]).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::Model;
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
    /// Tokens run by context shifts' prefills: the survivors, re-run at their new positions,
    /// and the new tokens that needed the room.
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
    // Moving the caller's vector in and out keeps its buffer (and allocates nothing).
    let mut tokens = std::mem::take(history);
    tokens.clear();
    tokens.reserve(reserve_len(prompt.len(), rules.max_new_tokens));
    tokens.extend_from_slice(prompt);
    let mut generator = Generator::new(session, sampler, tokens, policy);
    let stats = generator.generate(rules, None, |event| match event {
        Event::Token(token) => on_token(token),
        Event::Logits(_) | Event::Text(_) => ControlFlow::Continue(()),
    });
    *history = generator.into_history();
    stats
}

/// What the generation loop reports to its caller, in order, for each sampled token: the logits
/// it is sampled from, the token, then (unless it is the stop token) its text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event<'a> {
    /// The model's logits for the next token, before the sampler's penalties and filters (what
    /// [`crate::perplexity::nll`] scores). Returning `Break` stops before sampling.
    Logits(&'a [f32]),
    /// A token was sampled and appended to the history (the stop token included).
    Token(u32),
    /// Output text now final: the token's bytes, less any tail that could begin the stop
    /// string, after bytes held back earlier and now known not to; at the end, the bytes still
    /// held. May be empty; not necessarily whole UTF-8 characters (see
    /// [`crate::tokenizer::Utf8Stream`]).
    Text(&'a [u8]),
}

/// The generation loop over one session, shared by every way of generating (`gpt2q run`, chat
/// turns, [`generate`]): it owns the token history, runs pending tokens, samples, applies the
/// stop rules and stop string, and shifts the context when it fills.
///
/// The session's KV cache holds the *context*: `history[..keep]` followed by
/// `history[keep + dropped..]` up to the session's position; the tokens after that position are
/// pending (appended, not yet run). Context shifts drop the oldest tokens after the first `keep`
/// from the context but not from the history, so the repetition penalty still reads them.
/// Nothing is allocated per token, context shifts included, as long as the history has room
/// (see [`Generator::reserve`]).
pub struct Generator<'s, 'm> {
    session: &'s mut Session<'m>,
    sampler: &'s mut Sampler,
    history: Vec<u32>,
    policy: ContextPolicy,
    /// Tokens at the start never dropped (the policy's `keep`, clamped to the context size).
    keep: usize,
    /// Tokens after `keep` dropped from the context by shifts.
    dropped: usize,
}

impl<'s, 'm> Generator<'s, 'm> {
    /// Starts over: resets `session`; every token of `history` is pending (run by the next
    /// [`Generator::feed`] or [`Generator::generate`]).
    pub fn new(
        session: &'s mut Session<'m>,
        sampler: &'s mut Sampler,
        history: Vec<u32>,
        policy: ContextPolicy,
    ) -> Self {
        session.reset();
        Self::resume(session, sampler, history, policy)
    }

    /// As [`Generator::new`], but keeps what the session already holds of `history`: its first
    /// `reuse` tokens must be the ones the session ran at positions `0..reuse` (for example the
    /// context of an earlier generation, see [`Generator::context_into`]); only the tokens after
    /// them are pending. `reuse` is clamped to the session's position and to `history.len() - 1`,
    /// so at least one token runs and produces logits. The policy's `keep` applies from here on.
    pub fn with_prefix(
        session: &'s mut Session<'m>,
        sampler: &'s mut Sampler,
        history: Vec<u32>,
        policy: ContextPolicy,
        reuse: usize,
    ) -> Self {
        let reuse = reuse
            .min(session.pos())
            .min(history.len().saturating_sub(1));
        session.truncate(reuse);
        Self::resume(session, sampler, history, policy)
    }

    /// A generator over what `session` holds now, `history`'s tokens after its position pending.
    fn resume(
        session: &'s mut Session<'m>,
        sampler: &'s mut Sampler,
        history: Vec<u32>,
        policy: ContextPolicy,
    ) -> Self {
        let keep = match policy {
            ContextPolicy::Stop => 0,
            ContextPolicy::Shift { keep } => keep.min(session.capacity()),
        };
        Generator {
            session,
            sampler,
            history,
            policy,
            keep,
            dropped: 0,
        }
    }

    /// Tokens of the history the session's KV cache holds, in position order (the kept tokens,
    /// then the survivors of context shifts), written into `out` (cleared first).
    pub fn context_into(&self, out: &mut Vec<u32>) {
        out.clear();
        let pos = self.session.pos();
        if self.dropped == 0 {
            out.extend_from_slice(&self.history[..pos]);
        } else {
            out.extend_from_slice(&self.history[..self.keep]);
            let start = self.keep + self.dropped;
            out.extend_from_slice(&self.history[start..start + (pos - self.keep)]);
        }
    }

    /// Every token so far: prompts, sampled tokens, and those shifted out of the context.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// The history, giving the generator up.
    pub fn into_history(self) -> Vec<u32> {
        self.history
    }

    /// Tokens at the start that context shifts never drop.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// The model the session runs.
    pub fn model(&self) -> &'m Model<'m> {
        self.session.model()
    }

    /// Positions held by the session's KV cache.
    pub fn position(&self) -> usize {
        self.session.pos()
    }

    /// Tokens appended but not yet run.
    pub fn pending(&self) -> usize {
        self.history.len() - self.dropped - self.session.pos()
    }

    /// Makes room in the history for `additional` more tokens, so that appending them (and
    /// sampling them) allocates nothing.
    pub fn reserve(&mut self, additional: usize) {
        self.history.reserve(additional);
    }

    /// Appends `tokens` to run before the next sample (with the next [`Generator::feed`] or
    /// [`Generator::generate`]).
    pub fn append(&mut self, tokens: &[u32]) {
        self.history.extend_from_slice(tokens);
    }

    /// Appends `tokens` and runs every pending token, shifting the context if they do not fit.
    /// Returns the number of context shifts made and the tokens they re-ran. If the tokens
    /// cannot fit even after dropping everything that may be dropped, nothing is run and the
    /// history is left as it was.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<(usize, usize)> {
        let len = self.history.len();
        self.history.extend_from_slice(tokens);
        let (mut shifts, mut reprocessed) = (0, 0);
        match self.run_pending(&mut shifts, &mut reprocessed) {
            Ok(true) => Ok((shifts, reprocessed)),
            Ok(false) => {
                let error = self.no_room_error();
                self.history.truncate(len);
                Err(error)
            }
            Err(e) => {
                self.history.truncate(len);
                Err(e)
            }
        }
    }

    /// Runs the pending tokens (timed as the prefill), then samples up to
    /// `rules.max_new_tokens` tokens, reporting each to `on_event` ([`Event::Logits`] before
    /// sampling, [`Event::Token`], then [`Event::Text`] unless it is the stop token). Generation ends when the limit is reached,
    /// the stop token is sampled, `stop` (if given) appears in the output (it and anything after
    /// it are never reported), `on_event` returns `Break`, or the context is full and the policy
    /// cannot make room. The last sampled token is left pending. Text held back as a possible
    /// start of `stop` is reported at the end, unless `on_event` asked to stop.
    pub fn generate(
        &mut self,
        rules: StopRules,
        mut stop: Option<&mut StopText>,
        mut on_event: impl FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<GenerationStats> {
        let mut stats = GenerationStats {
            prompt_tokens: self.pending(),
            generated_tokens: 0,
            prefill_time: Duration::ZERO,
            decode_time: Duration::ZERO,
            context_shifts: 0,
            reprocessed_tokens: 0,
            stop: StopReason::Length,
        };
        if stats.prompt_tokens == 0 && self.session.pos() == 0 {
            return Err(Error::invalid("the prompt has no tokens"));
        }
        let start = Instant::now();
        if !self.run_pending(&mut stats.context_shifts, &mut stats.reprocessed_tokens)? {
            return Err(self.no_room_error());
        }
        stats.prefill_time = start.elapsed();
        let decode_start = Instant::now();
        let model = self.session.model();
        while stats.generated_tokens < rules.max_new_tokens {
            if on_event(Event::Logits(self.session.logits_mut())).is_break() {
                stats.stop = StopReason::Callback;
                break;
            }
            let token = self
                .sampler
                .sample(self.session.logits_mut(), &self.history)?;
            stats.generated_tokens += 1;
            self.history.push(token);
            if on_event(Event::Token(token)).is_break() {
                stats.stop = StopReason::Callback;
                break;
            }
            if Some(token) == rules.stop_token {
                stats.stop = StopReason::EndOfText;
                break;
            }
            let bytes = model.tokenizer.token_bytes(token).unwrap_or(&[]);
            let mut flow = ControlFlow::Continue(());
            let mut emit = |b: &[u8]| {
                if flow.is_continue() {
                    flow = on_event(Event::Text(b));
                }
            };
            let stopped = match stop.as_deref_mut() {
                Some(stop) => stop.push(bytes, &mut emit),
                None => {
                    emit(bytes);
                    false
                }
            };
            if stopped {
                stats.stop = StopReason::StopString;
                break;
            }
            if flow.is_break() {
                stats.stop = StopReason::Callback;
                break;
            }
            if stats.generated_tokens == rules.max_new_tokens {
                break;
            }
            if !self.run_pending(&mut stats.context_shifts, &mut stats.reprocessed_tokens)? {
                stats.stop = StopReason::ContextFull;
                break;
            }
        }
        if let Some(stop) = stop {
            match stats.stop {
                StopReason::Callback => stop.clear(),
                _ => stop.finish(|b| {
                    let _ = on_event(Event::Text(b));
                }),
            }
        }
        stats.decode_time = decode_start.elapsed();
        Ok(stats)
    }

    /// Runs the pending tokens, first dropping the oldest tokens after the kept ones if they
    /// would not fit: half of those in the cache, or more if the pending tokens need it.
    /// Returns false, running nothing, when the policy or the context size leaves no room.
    fn run_pending(&mut self, shifts: &mut usize, reprocessed: &mut usize) -> Result<bool> {
        let n = self.pending();
        let (pos, capacity) = (self.session.pos(), self.session.capacity());
        if n == 0 {
            return Ok(true);
        }
        if pos + n <= capacity {
            // Before any shift `dropped` is 0; after one, `pos` is past the kept tokens.
            self.session.prefill(&self.history[self.dropped + pos..])?;
            return Ok(true);
        }
        let keep = self.keep;
        // A shift needs the kept tokens in the cache, room for the pending ones after them, and
        // (with one token pending) at least one token to drop besides it.
        if self.policy == ContextPolicy::Stop || pos < keep || capacity - keep < 2.max(n) {
            return Ok(false);
        }
        let discard = ((pos - keep) / 2).max(pos + n - capacity);
        self.dropped += discard;
        self.session.truncate(keep);
        self.session.prefill(&self.history[keep + self.dropped..])?;
        *shifts += 1;
        *reprocessed += pos - keep - discard + n;
        Ok(true)
    }

    fn no_room_error(&self) -> Error {
        let (n, capacity) = (self.pending(), self.session.capacity());
        match self.policy {
            ContextPolicy::Stop => Error::invalid(format!(
                "{n} more tokens do not fit in the context of {capacity} ({} in use)",
                self.session.pos()
            )),
            ContextPolicy::Shift { .. } => Error::invalid(format!(
                "{n} new tokens do not fit: the context of {capacity} has room for {} after \
                 the {} kept tokens",
                capacity.saturating_sub(self.keep),
                self.keep
            )),
        }
    }
}

/// Watches streamed output for stop strings (e.g. `"\n"`), holding back bytes that could be the
/// start of one so that none ever reaches the output. Its buffer is sized once; pushing a token
/// allocates only if a single token is longer than that (GPT-2's are far shorter).
#[derive(Clone, Debug)]
pub struct StopText {
    stops: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl StopText {
    /// A matcher for `stop` (not empty).
    pub fn new(stop: &str) -> Result<Self> {
        Self::any(&[stop])
    }

    /// A matcher for whichever of `stops` (at least one, none empty) appears first.
    pub fn any<S: AsRef<str>>(stops: &[S]) -> Result<Self> {
        if stops.is_empty() {
            return Err(Error::invalid("no stop string given"));
        }
        if stops.iter().any(|s| s.as_ref().is_empty()) {
            return Err(Error::invalid("the stop string is empty"));
        }
        let longest = stops.iter().map(|s| s.as_ref().len()).max().unwrap_or(0);
        Ok(StopText {
            stops: stops
                .iter()
                .map(|s| s.as_ref().as_bytes().to_vec())
                .collect(),
            pending: Vec::with_capacity(longest + 1024),
        })
    }

    /// Appends a token's bytes and passes `emit` every byte now known not to be part of a stop
    /// string. Returns true when a stop string is complete: the bytes before the earliest one
    /// have been emitted and the rest is dropped.
    pub fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) -> bool {
        self.pending.extend_from_slice(bytes);
        let found = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.windows(stop.len()).position(|w| w == stop))
            .min();
        if let Some(i) = found {
            emit(&self.pending[..i]);
            self.pending.clear();
            return true;
        }
        // The longest tail of `pending` that begins a stop string must wait for more bytes.
        let pending = &self.pending;
        let held = self
            .stops
            .iter()
            .filter_map(|stop| {
                (1..stop.len().min(pending.len() + 1))
                    .rev()
                    .find(|&k| pending.ends_with(&stop[..k]))
            })
            .max()
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

    /// Forgets the held bytes (the output was abandoned).
    pub fn clear(&mut self) {
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

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let mut s = StopText::any(&["\n\n", "User:", "x"]).unwrap();
        let mut out = Vec::new();
        assert!(!s.push(b"Hi\n", |b| out.extend_from_slice(b)));
        assert_eq!(out, b"Hi", "a possible start of \\n\\n is held");
        assert!(!s.push(b"Use", |b| out.extend_from_slice(b)));
        assert!(s.push(b"r: x", |b| out.extend_from_slice(b)));
        assert_eq!(out, b"Hi\n");
        assert!(StopText::any::<&str>(&[]).is_err());
        let mut s = StopText::any(&["END", "\n\n", "xy"]).unwrap();
        let mut out = Vec::new();
        assert!(!s.push(b"a x", |b| out.extend_from_slice(b)));
        assert_eq!(out, b"a ", "'x' may begin \"xy\"");
        assert!(s.push(b"z\n\nEND", |b| out.extend_from_slice(b)));
        assert_eq!(out, b"a xz");
        assert!(StopText::any(&["a", ""]).is_err());
    }
}
