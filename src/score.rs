//! Scoring: the log-probability of every token of a text under the model, the language-model use
//! of GPT-2 (perplexity-based detectors, reranking, surprisal), and the raw logits behind it.
//!
//! The numbers are [`crate::perplexity`]'s: the same [`nll`] of the same logits over the same
//! windows. A token sequence that fits in the window runs as one batched pass (the prefill path);
//! a longer one is cut as `gpt2q perplexity --stride` cuts it (windows of `window` tokens starting
//! at `0, stride, 2·stride, …`, each scoring only the tokens the previous one did not), plus a final
//! window ending at the last token, so that every token after the first is scored once, each with
//! at least `window − stride` tokens of context (the last window's may have more). A text
//! ([`score_text`]) is scored from `<|endoftext|>`, as GPT-2 saw the start of a document, so its
//! first token has a log-probability too.

use crate::error::{Error, Result};
use crate::perplexity::{check_finite, log_sum_exp, nll};
use crate::session::Session;

/// The log-probabilities of a text's tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct TextScore {
    /// The text's token ids (without the `<|endoftext|>` it is scored from).
    pub tokens: Vec<u32>,
    /// `log P(tokens[i] | <|endoftext|>, tokens[..i])` in nats, one per token.
    pub logprobs: Vec<f64>,
}

impl TextScore {
    /// The sum of the log-probabilities: the log-likelihood of the text.
    pub fn sum_logprob(&self) -> f64 {
        // From +0.0: `Sum` starts at −0.0, which an empty text would print as "-0".
        self.logprobs.iter().fold(0.0, |sum, l| sum + l)
    }

    /// `exp(−mean log-probability)`; `None` for a text without tokens.
    pub fn perplexity(&self) -> Option<f64> {
        if self.logprobs.is_empty() {
            return None;
        }
        Some((-self.sum_logprob() / self.logprobs.len() as f64).exp())
    }
}

/// Checks `window` and `stride` for a sequence of `len` tokens in `session`.
fn check_windows(session: &Session<'_>, len: usize, window: usize, stride: usize) -> Result<()> {
    if !session.config().all_logits {
        return Err(Error::invalid(
            "scoring needs a session that keeps every position's logits (Session::for_scoring)",
        ));
    }
    if window < 2 || window > session.capacity() {
        return Err(Error::invalid(format!(
            "window {window} must be in 2..={} (the context size)",
            session.capacity()
        )));
    }
    if len > window && (stride == 0 || stride >= window) {
        return Err(Error::invalid(format!(
            "stride {stride} must be in 1..{window} (less than the window, so that every token \
             of a text longer than the window is scored with some context)"
        )));
    }
    Ok(())
}

/// The log-probability of each token of `tokens` after the first given the tokens before it:
/// `tokens.len() − 1` values (none for fewer than two tokens), `out[i]` for `tokens[i + 1]`.
/// Sequences longer than `window` are cut as the module documentation says; `stride` must then
/// be in `1..window`. The session must keep all logits ([`Session::for_scoring`]) and hold
/// `window` positions. An [`Error::Numeric`] if the model produces a non-finite logit.
pub fn token_logprobs(
    session: &mut Session<'_>,
    tokens: &[u32],
    window: usize,
    stride: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(tokens.len().saturating_sub(1));
    token_logprobs_into(session, tokens, window, stride, &mut out)?;
    Ok(out)
}

/// [`token_logprobs`] appending to `out` (cleared first), so a caller scoring many texts reuses
/// one buffer.
pub fn token_logprobs_into(
    session: &mut Session<'_>,
    tokens: &[u32],
    window: usize,
    stride: usize,
    out: &mut Vec<f64>,
) -> Result<()> {
    out.clear();
    check_windows(session, tokens.len(), window, stride)?;
    let n = tokens.len();
    if n < 2 {
        return Ok(());
    }
    let mut start = 0;
    loop {
        let end = (start + window).min(n);
        // Tokens before `out.len() + 1` were scored by the previous window.
        score_window(session, &tokens[start..end], start, out.len() + 1, out)?;
        if end == n {
            return Ok(());
        }
        // The next window, or the last one ending at the last token.
        start = (start + stride).min(n - window);
    }
}

/// Runs `w` (the tokens at `offset..` of the sequence) from an empty context and appends the
/// log-probabilities of its tokens from sequence index `first` on.
fn score_window(
    session: &mut Session<'_>,
    w: &[u32],
    offset: usize,
    first: usize,
    out: &mut Vec<f64>,
) -> Result<()> {
    let batch = session.batch();
    let n_vocab = session.model().hparams.n_vocab as usize;
    session.reset();
    for (c, chunk) in w[..w.len() - 1].chunks(batch).enumerate() {
        let logits = session.forward_batch(chunk)?;
        for (k, row) in logits.chunks_exact(n_vocab).enumerate() {
            // Position t of the window predicts token t + 1, index offset + t + 1 of the sequence.
            let t = c * batch + k;
            if offset + t + 1 < first {
                continue;
            }
            check_finite(row, offset + t)?;
            out.push(-nll(row, w[t + 1]));
        }
    }
    Ok(())
}

/// Scores `text` from `<|endoftext|>` (see [`TextScore`]); `window` and `stride` as
/// [`token_logprobs`] takes them (the `<|endoftext|>` counts as one of the window's tokens).
pub fn score_text(
    session: &mut Session<'_>,
    text: &str,
    window: usize,
    stride: usize,
) -> Result<TextScore> {
    let model = session.model();
    let mut sequence = Vec::with_capacity(text.len() / 3 + 2);
    sequence.push(model.hparams.eos_id);
    sequence.extend(model.tokenizer.encode(text));
    let logprobs = token_logprobs(session, &sequence, window, stride)?;
    sequence.remove(0);
    Ok(TextScore {
        tokens: sequence,
        logprobs,
    })
}

/// Scores many texts with one session, each from `<|endoftext|>` as [`score_text`] does, for
/// the batch use (thousands of short lines): `<|endoftext|>` at position 0 runs once, and every
/// text that fits in the window reuses its keys and values and its next-token distribution, so
/// each text runs only its own tokens. The numbers are [`score_text`]'s up to rounding (position
/// 0 runs alone rather than in the text's batch). Texts longer than the window are scored as
/// [`score_text`] scores them.
pub struct Scorer<'s, 'm> {
    session: &'s mut Session<'m>,
    window: usize,
    stride: usize,
    /// The logits after `<|endoftext|>` at position 0 and their log-sum-exp, once run; the
    /// session's position 0 holds `<|endoftext|>` while `eos_cached` is set.
    after_eos: Option<(Vec<f32>, f64)>,
    eos_cached: bool,
    sequence: Vec<u32>,
}

impl<'s, 'm> Scorer<'s, 'm> {
    /// A scorer over `session` (which must keep all logits, [`Session::for_scoring`]) with
    /// windows as [`token_logprobs`] takes them.
    pub fn new(session: &'s mut Session<'m>, window: usize, stride: usize) -> Result<Self> {
        check_windows(session, 0, window, stride)?;
        Ok(Scorer {
            session,
            window,
            stride,
            after_eos: None,
            eos_cached: false,
            sequence: Vec::new(),
        })
    }

    /// Scores `text` from `<|endoftext|>`.
    pub fn score(&mut self, text: &str) -> Result<TextScore> {
        let model = self.session.model();
        let tokens = model.tokenizer.encode(text);
        if tokens.len() + 1 > self.window {
            self.eos_cached = false;
            self.sequence.clear();
            self.sequence.push(model.hparams.eos_id);
            self.sequence.extend_from_slice(&tokens);
            let logprobs = token_logprobs(self.session, &self.sequence, self.window, self.stride)?;
            return Ok(TextScore { tokens, logprobs });
        }
        let mut logprobs = Vec::with_capacity(tokens.len());
        let Some(&first) = tokens.first() else {
            return Ok(TextScore { tokens, logprobs });
        };
        let (row, lse) = self.after_eos()?;
        // -nll(row, first), from the kept log-sum-exp.
        logprobs.push(-(lse - row[first as usize] as f64));
        let n_vocab = model.hparams.n_vocab as usize;
        let batch = self.session.batch();
        self.session.truncate(1);
        for (c, chunk) in tokens[..tokens.len() - 1].chunks(batch).enumerate() {
            let logits = self.session.forward_batch(chunk)?;
            for (k, row) in logits.chunks_exact(n_vocab).enumerate() {
                let t = c * batch + k;
                check_finite(row, t + 1)?;
                logprobs.push(-nll(row, tokens[t + 1]));
            }
        }
        Ok(TextScore { tokens, logprobs })
    }

    /// The logits after `<|endoftext|>` and their log-sum-exp, running it at position 0 unless
    /// the session still holds it there.
    fn after_eos(&mut self) -> Result<(&[f32], f64)> {
        let cached = match self.after_eos.take() {
            Some(cached) if self.eos_cached => cached,
            _ => {
                let eos = self.session.model().hparams.eos_id;
                self.session.reset();
                let row = self.session.forward_batch(&[eos])?;
                check_finite(row, 0)?;
                self.eos_cached = true;
                (row.to_vec(), log_sum_exp(row))
            }
        };
        let (row, lse) = self.after_eos.insert(cached);
        Ok((row.as_slice(), *lse))
    }
}

/// The logits at every position of `tokens` run from an empty context, `(tokens.len(), n_vocab)`
/// row-major, or with `last_only` those of the last position, `(n_vocab)`. The tokens must fit in
/// the session, which must keep all logits ([`Session::for_scoring`]).
pub fn logits(session: &mut Session<'_>, tokens: &[u32], last_only: bool) -> Result<Vec<f32>> {
    if tokens.is_empty() {
        return Err(Error::invalid("no tokens to run"));
    }
    if tokens.len() > session.capacity() {
        return Err(Error::invalid(format!(
            "{} tokens do not fit in the context of {}",
            tokens.len(),
            session.capacity()
        )));
    }
    let n_vocab = session.model().hparams.n_vocab as usize;
    let rows = if last_only { 1 } else { tokens.len() };
    let mut out = Vec::with_capacity(rows * n_vocab);
    session.reset();
    let batch = session.batch();
    let chunks = tokens.len().div_ceil(batch);
    for (c, chunk) in tokens.chunks(batch).enumerate() {
        let l = session.forward_batch(chunk)?;
        if !last_only {
            out.extend_from_slice(l);
        } else if c + 1 == chunks {
            out.extend_from_slice(&l[l.len() - n_vocab..]);
        }
    }
    Ok(out)
}
