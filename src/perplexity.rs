//! Perplexity: how well the model predicts a text, the language-modelling score of GPT-2.
//!
//! The procedure is the reference's (`tests/fixtures/tiny-gpt2.json`, "perplexity"): the token
//! ids are cut into consecutive non-overlapping windows of `window` tokens (a final partial window
//! is dropped); each window runs from an empty context at positions `0..window`; position `t`
//! predicts token `t + 1`, so the first token of each window is never scored. With `stride` smaller
//! than `window`, windows overlap and only the tokens not scored by the previous window are scored
//! (the sliding-window protocol of the transformers docs).

use crate::error::{Error, Result};
use crate::session::Session;

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
    log_sum_exp(logits) - logits[target as usize] as f64
}

/// `log Σ exp(logits)` in f64, shifted by the maximum so that no term overflows.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// How a quantised model's next-token distributions differ from a base model's over the same
/// scored positions.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The base model's own perplexity report.
    pub base: PerplexityReport,
    /// KL(base ‖ model) in nats at every scored position.
    pub kl: Vec<f64>,
    /// Positions where both models' most likely token is the same.
    pub top1_agree: usize,
}

impl Comparison {
    /// Mean KL divergence.
    pub fn kl_mean(&self) -> f64 {
        self.kl.iter().sum::<f64>() / self.kl.len().max(1) as f64
    }

    /// The `p`-th percentile (0..=100) of the KL divergences (nearest rank).
    pub fn kl_percentile(&self, p: f64) -> f64 {
        let mut sorted = self.kl.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.saturating_sub(1)).copied().unwrap_or(0.0)
    }

    /// Share of positions with the same argmax.
    pub fn top1_agreement(&self) -> f64 {
        self.top1_agree as f64 / self.kl.len().max(1) as f64
    }
}

/// KL(p ‖ q) of the softmax distributions of two logit rows, in f64.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let log_z = |l: &[f32]| {
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        max + l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
    };
    let (zp, zq) = (log_z(p_logits), log_z(q_logits));
    p_logits
        .iter()
        .zip(q_logits)
        .map(|(&a, &b)| {
            let lp = a as f64 - zp;
            lp.exp() * (lp - (b as f64 - zq))
        })
        .sum()
}

fn argmax(l: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in l.iter().enumerate() {
        if *v > l[best] {
            best = i;
        }
    }
    best
}

/// Scores `ids` in windows of `window` tokens advancing by `stride`, running each window in
/// batches. The session must keep all logits ([`Session::for_scoring`]).
pub fn perplexity(
    session: &mut Session<'_>,
    ids: &[u32],
    window: usize,
    stride: usize,
) -> Result<PerplexityReport> {
    Ok(score(session, None, ids, window, stride)?.0)
}

/// Scores `ids` with `session` and `base` over the same windows, and compares their next-token
/// distributions at every scored position.
pub fn compare(
    session: &mut Session<'_>,
    base: &mut Session<'_>,
    ids: &[u32],
    window: usize,
    stride: usize,
) -> Result<(PerplexityReport, Comparison)> {
    if base.model().hparams.n_vocab != session.model().hparams.n_vocab
        || base.batch() != session.batch()
    {
        return Err(Error::invalid(
            "the two models must share a vocabulary and batch size",
        ));
    }
    let (report, cmp) = score(session, Some(base), ids, window, stride)?;
    let cmp = cmp.ok_or_else(|| Error::invalid("no comparison was made"))?;
    Ok((report, cmp))
}

fn check_windows(session: &Session<'_>, ids: &[u32], window: usize, stride: usize) -> Result<()> {
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
    Ok(())
}

/// [`Error::Numeric`] if a logit at token `pos` of the text is NaN or infinite: a damaged weight
/// would otherwise turn into a NaN perplexity that looks like a result.
pub(crate) fn check_finite(row: &[f32], pos: usize) -> Result<()> {
    match row.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::Numeric(format!(
            "logit {i} at token {pos} is {}; the model produced non-finite values (damaged weights? try gpt2q verify)",
            row[i]
        ))),
    }
}

fn empty_report() -> PerplexityReport {
    PerplexityReport {
        scored_tokens: 0,
        sum_nll: 0.0,
        window_mean_nll: Vec::new(),
    }
}

fn add_window(report: &mut PerplexityReport, sum: f64, scored: usize) {
    report.scored_tokens += scored;
    report.sum_nll += sum;
    report.window_mean_nll.push(sum / scored as f64);
}

fn score(
    session: &mut Session<'_>,
    mut base: Option<&mut Session<'_>>,
    ids: &[u32],
    window: usize,
    stride: usize,
) -> Result<(PerplexityReport, Option<Comparison>)> {
    check_windows(session, ids, window, stride)?;
    let batch = session.batch();
    let n_vocab = session.model().hparams.n_vocab as usize;
    let mut report = empty_report();
    let mut cmp = base.as_ref().map(|_| Comparison {
        base: empty_report(),
        kl: Vec::new(),
        top1_agree: 0,
    });
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
        if let Some(b) = base.as_deref_mut() {
            b.reset();
        }
        let (mut sum, mut base_sum) = (0.0, 0.0);
        for (c, chunk) in w[..window - 1].chunks(batch).enumerate() {
            let logits = session.forward_batch(chunk)?;
            let base_logits = match base.as_deref_mut() {
                Some(b) => Some(b.forward_batch(chunk)?),
                None => None,
            };
            for (k, row) in logits.chunks_exact(n_vocab).enumerate() {
                let t = c * batch + k;
                if t < first_scored {
                    continue;
                }
                check_finite(row, start + t)?;
                sum += nll(row, w[t + 1]);
                if let (Some(bl), Some(cmp)) = (base_logits, cmp.as_mut()) {
                    let brow = &bl[k * n_vocab..(k + 1) * n_vocab];
                    check_finite(brow, start + t)?;
                    base_sum += nll(brow, w[t + 1]);
                    cmp.kl.push(kl_divergence(brow, row));
                    cmp.top1_agree += usize::from(argmax(brow) == argmax(row));
                }
            }
        }
        let scored = window - 1 - first_scored;
        add_window(&mut report, sum, scored);
        if let Some(cmp) = cmp.as_mut() {
            add_window(&mut cmp.base, base_sum, scored);
        }
        start += stride;
    }
    Ok((report, cmp))
}
