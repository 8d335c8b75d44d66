//! Perplexity: how well the model predicts a text, the language-modelling score of GPT-2.
//!
//! The procedure is the reference's (`tests/fixtures/tiny-gpt2.json`, "perplexity"): the token
//! ids are cut into consecutive non-overlapping windows of `window` tokens (a final partial window
//! is dropped); each window runs from an empty context at positions `0..window`; position `t`
//! predicts token `t + 1`, so the first token of each window is never scored. With `stride` smaller
//! than `window`, windows overlap and only the tokens not scored by the previous window are scored
//! (the sliding-window protocol of the transformers docs).

use crate::error::{Error, Result};
use crate::model::Session;

/// The result of a perplexity run.
#[derive(Clone, Debug, PartialEq)]
pub struct PerplexityReport {
    /// Tokens scored.
    pub scored_tokens: usize,
    /// Sum of negative log-likelihoods (nats).
    pub sum_nll: f64,
    /// Mean negative log-likelihood of each window.
    pub window_mean_nll: Vec<f64>,
}

impl PerplexityReport {
    /// Mean negative log-likelihood per scored token.
    pub fn mean_nll(&self) -> f64 {
        self.sum_nll / self.scored_tokens.max(1) as f64
    }

    /// `exp(mean_nll)`.
    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }
}

/// `-log softmax(logits)[target]`, computed in f64 for a stable sum.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}

/// Scores `ids` in windows of `window` tokens advancing by `stride`, running each window in
/// batches of `batch` tokens. `on_logits(logits, target)` sees every scored position (for
/// comparisons between models). The session must keep all logits ([`Session::for_scoring`]).
pub fn perplexity(
    session: &mut Session<'_>,
    ids: &[u32],
    window: usize,
    stride: usize,
    mut on_logits: impl FnMut(&[f32], u32),
) -> Result<PerplexityReport> {
    if window < 2 || window > session.capacity() {
        return Err(Error::invalid(format!(
            "window {window} must be in 2..={} (the context size)",
            session.capacity()
        )));
    }
    if stride == 0 || stride > window {
        return Err(Error::invalid(format!(
            "stride {stride} must be in 1..={window}"
        )));
    }
    if ids.len() < window {
        return Err(Error::invalid(format!(
            "the text has {} tokens, fewer than one window of {window}",
            ids.len()
        )));
    }
    let batch = session.batch();
    let n_vocab = session.model().hparams.n_vocab as usize;
    let mut report = PerplexityReport {
        scored_tokens: 0,
        sum_nll: 0.0,
        window_mean_nll: Vec::new(),
    };
    let mut start = 0;
    while start + window <= ids.len() {
        // Positions before `first_scored` were scored by the previous, overlapping window.
        let first_scored = if start == 0 {
            0
        } else {
            (window - stride).saturating_sub(1)
        };
        let w = &ids[start..start + window];
        session.reset();
        let mut sum = 0.0;
        let inputs = &w[..window - 1];
        for (c, chunk) in inputs.chunks(batch).enumerate() {
            let logits = session.forward_batch(chunk)?;
            for (k, row) in logits.chunks_exact(n_vocab).enumerate() {
                let t = c * batch + k;
                if t >= first_scored {
                    sum += nll(row, w[t + 1]);
                    on_logits(row, w[t + 1]);
                }
            }
        }
        let scored = window - 1 - first_scored;
        report.scored_tokens += scored;
        report.sum_nll += sum;
        report.window_mean_nll.push(sum / scored as f64);
        start += stride;
    }
    Ok(report)
}
