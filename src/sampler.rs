//! Choosing the next token: turns one row of logits into one token id, deterministically under a seed.
//!
//! This module owns the sampling pipeline (repetition penalty, greedy argmax, temperature, top-k,
//! top-p, min-p) and its own small PRNG (PCG32 seeded through SplitMix64, integer state only), so the
//! same seed gives the same tokens on every platform. All scratch is allocated once in
//! [`Sampler::new`]; [`Sampler::sample`] neither allocates nor panics.
//!
//! It does not own the model (logits arrive as a slice) or the tokenizer (tokens leave as ids).

use std::cmp::Ordering;
use std::fmt;

use crate::error::{Error, Result};

/// The largest vocabulary a [`Sampler`] accepts: every id must fit in a `u32`.
const MAX_VOCAB: usize = u32::MAX as usize;

/// How to pick tokens. `temperature == 0.0` means greedy (argmax; ties go to the lowest id).
///
/// Filters apply in this order: repetition penalty → temperature → top-k → top-p → min-p.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature, `>= 0`. `0` picks the most likely token every time.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` turns the filter off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability adds up to at least `top_p`;
    /// in `(0, 1]`, `1.0` turns the filter off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; in `[0, 1)`, `0` turns it off.
    pub min_p: f32,
    /// Repetition penalty (CTRL / Hugging Face rule): a recent token's logit is divided by it when
    /// positive and multiplied by it otherwise. Any finite value `> 0`; `1.0` turns it off.
    pub repetition_penalty: f32,
    /// How many of the most recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random number generator; the same seed gives the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama.cpp-like defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repetition
    /// penalty (window 64), seed 0.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding: temperature 0 and every filter off.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Self::default()
        }
    }

    /// Reject non-finite or out-of-range values with a message naming the command-line flag,
    /// e.g. `--top-p must be in (0, 1], got 0`.
    pub fn validate(&self) -> Result<()> {
        let Self {
            temperature,
            top_p,
            min_p,
            repetition_penalty,
            ..
        } = *self;
        // Written so that NaN fails every check.
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(flag_error(
                "--temperature",
                "a finite number >= 0",
                temperature,
            ));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(flag_error("--top-p", "in (0, 1]", top_p));
        }
        if !(0.0..1.0).contains(&min_p) {
            return Err(flag_error("--min-p", "in [0, 1)", min_p));
        }
        if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
            let expected = "a finite number > 0";
            return Err(flag_error("--repeat-penalty", expected, repetition_penalty));
        }
        // `--top-k` and `--repeat-last-n` are unsigned: every value is meaningful.
        Ok(())
    }
}

fn flag_error(flag: &str, expected: &str, got: f32) -> Error {
    Error::invalid(format!("{flag} must be {expected}, got {got}"))
}

/// Picks tokens from logits under a [`SamplerConfig`], reusing scratch sized for one vocabulary.
#[derive(Clone)]
pub struct Sampler {
    config: SamplerConfig,
    n_vocab: usize,
    rng: Pcg32,
    /// Tokens still in the running; capacity `n_vocab`, so refilling never allocates.
    candidates: Vec<Candidate>,
    /// Marks tokens already penalised during one call, so repeats are penalised once.
    penalised: Vec<bool>,
}

/// One token in the running: its (penalised) logit and its unnormalised probability.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
    weight: f32,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("config", &self.config)
            .field("n_vocab", &self.n_vocab)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler for a vocabulary of `n_vocab` tokens. Validates `config` and allocates all scratch
    /// once; `n_vocab == 0` is an error.
    pub fn new(config: SamplerConfig, n_vocab: usize) -> Result<Self> {
        config.validate()?;
        // `try_from` rather than `> MAX_VOCAB`: on 32-bit targets that comparison is always false.
        if n_vocab == 0 || u32::try_from(n_vocab).is_err() {
            return Err(Error::invalid(format!(
                "sampler vocabulary size must be in 1..={MAX_VOCAB}, got {n_vocab}"
            )));
        }
        Ok(Self {
            rng: Pcg32::from_seed(config.seed),
            candidates: Vec::with_capacity(n_vocab),
            penalised: vec![false; n_vocab],
            n_vocab,
            config,
        })
    }

    /// The configuration this sampler was built with.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Pick one token from one row of logits.
    ///
    /// `logits.len()` must equal the vocabulary size (checked by a debug assertion; in release a
    /// longer row is truncated and a shorter one sampled as given). `history` holds every token so far
    /// (prompt and generated); only its last `repeat_last_n` are penalised, each distinct token once,
    /// and the penalty is written into `logits`. Never allocates on success and never panics.
    ///
    /// # Errors
    /// [`Error::Numeric`] naming the first non-finite logit; [`Error::InvalidInput`] for an empty row.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32> {
        debug_assert_eq!(logits.len(), self.n_vocab, "logit row length != n_vocab");
        let used = logits.len().min(self.n_vocab);
        let logits = &mut logits[..used];
        check_finite(logits)?;
        if logits.is_empty() {
            return Err(Error::invalid("sampler was given an empty row of logits"));
        }
        self.apply_repetition_penalty(logits, history);
        if self.config.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        self.keep_top_k(logits);
        let total_weight = self.weigh_candidates();
        self.drop_below_min_p();
        self.keep_top_p(total_weight);
        Ok(self.draw())
    }

    /// Penalise each distinct token among the last `repeat_last_n` of `history`; ids outside the
    /// vocabulary are ignored.
    fn apply_repetition_penalty(&mut self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.config.repetition_penalty;
        if penalty == 1.0 {
            return;
        }
        let window = &history[history.len().saturating_sub(self.config.repeat_last_n)..];
        for &token in window {
            let index = token as usize;
            if let (Some(logit), Some(done)) =
                (logits.get_mut(index), self.penalised.get_mut(index))
            {
                if !*done {
                    *done = true;
                    *logit = penalise(*logit, penalty);
                }
            }
        }
        for &token in window {
            if let Some(done) = self.penalised.get_mut(token as usize) {
                *done = false;
            }
        }
    }

    /// Refill the candidates from `logits` and keep the `top_k` best (all when top-k is off).
    fn keep_top_k(&mut self, logits: &[f32]) {
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(index, &logit)| Candidate {
                id: index as u32,
                logit,
                weight: 0.0,
            }));
        let top_k = self.config.top_k;
        if top_k > 0 && top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(top_k - 1, ranks_before);
            self.candidates.truncate(top_k);
        }
    }

    /// Set each candidate's weight to `exp((logit - max) / temperature)`, so the most likely has
    /// weight exactly 1, and return the sum of the weights.
    fn weigh_candidates(&mut self) -> f64 {
        let temperature = self.config.temperature;
        let max_logit = self
            .candidates
            .iter()
            .map(|c| c.logit)
            .fold(f32::MIN, f32::max);
        let max_scaled = scale_by_temperature(max_logit, temperature);
        let mut total = 0.0;
        for candidate in &mut self.candidates {
            // Both terms are finite, so the difference is <= 0 (or -inf): never NaN.
            let scaled = scale_by_temperature(candidate.logit, temperature);
            candidate.weight = (scaled - max_scaled).exp();
            total += f64::from(candidate.weight);
        }
        total
    }

    /// Drop candidates whose probability is below `min_p` times the largest (whose weight is 1), and
    /// those whose weight underflowed to zero.
    ///
    /// Running this before top-p gives the same set as the other way round: both keep a prefix of
    /// the candidates sorted by probability, and top-p measures against the total from before.
    fn drop_below_min_p(&mut self) {
        let min_weight = self.config.min_p;
        self.candidates
            .retain(|c| c.weight > 0.0 && c.weight >= min_weight);
    }

    /// Sort the candidates, most likely first, and keep the shortest prefix holding at least `top_p`
    /// of `total_weight` (at least one). Skipped, sort included, when top-p is off.
    fn keep_top_p(&mut self, total_weight: f64) {
        if self.config.top_p >= 1.0 {
            return;
        }
        self.candidates.sort_unstable_by(ranks_before);
        let target = f64::from(self.config.top_p) * total_weight;
        let mut cumulative = 0.0;
        let prefix_end = self.candidates.iter().position(|c| {
            cumulative += f64::from(c.weight);
            cumulative >= target
        });
        if let Some(last_kept) = prefix_end {
            self.candidates.truncate(last_kept + 1);
        }
    }

    /// Draw one candidate with probability proportional to its weight.
    fn draw(&mut self) -> u32 {
        let kept_weight: f64 = self.candidates.iter().map(|c| f64::from(c.weight)).sum();
        let target = f64::from(self.rng.next_unit()) * kept_weight;
        let mut cumulative = 0.0;
        for candidate in &self.candidates {
            cumulative += f64::from(candidate.weight);
            if target < cumulative {
                return candidate.id;
            }
        }
        // Only reachable through rounding; the last kept candidate has a positive weight.
        self.candidates.last().map_or(0, |c| c.id)
    }
}

/// `Err(Error::Numeric)` naming the first non-finite logit.
fn check_finite(logits: &[f32]) -> Result<()> {
    match logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        None => Ok(()),
        Some((index, value)) => Err(Error::Numeric(format!(
            "logit {index} of {} is {value}; refusing to sample from non-finite logits",
            logits.len()
        ))),
    }
}

/// The CTRL / Hugging Face repetition penalty, saturating instead of overflowing to infinity.
fn penalise(logit: f32, penalty: f32) -> f32 {
    let penalised = if logit > 0.0 {
        logit / penalty
    } else {
        logit * penalty
    };
    penalised.clamp(f32::MIN, f32::MAX)
}

/// `logit / temperature`, saturating instead of overflowing to infinity.
fn scale_by_temperature(logit: f32, temperature: f32) -> f32 {
    (logit / temperature).clamp(f32::MIN, f32::MAX)
}

/// Candidate order: larger logit first, ties to the lower id. A total order, so sorting and
/// selection are deterministic, and the first candidate is always the greedy choice.
fn ranks_before(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Index of the largest logit (by `total_cmp`), the lowest one on ties. `logits` must not be empty.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (index, logit) in logits.iter().enumerate().skip(1) {
        if logit.total_cmp(&logits[best]) == Ordering::Greater {
            best = index;
        }
    }
    best as u32
}

/// PCG32 (XSH-RR, 64-bit state): small, fast and bit-for-bit the same on every platform.
#[derive(Clone, Debug)]
struct Pcg32 {
    state: u64,
    increment: u64,
}

impl Pcg32 {
    const MULTIPLIER: u64 = 6_364_136_223_846_793_005;

    /// The generator for `seed`: SplitMix64 spreads the seed over the initial state and stream.
    fn from_seed(seed: u64) -> Self {
        let mut mixer = seed;
        let initial_state = splitmix64(&mut mixer);
        let stream = splitmix64(&mut mixer);
        Self::new(initial_state, stream)
    }

    /// The reference PCG32 initialisation (`pcg32_srandom_r`).
    fn new(initial_state: u64, stream: u64) -> Self {
        let mut rng = Self {
            state: 0,
            increment: (stream << 1) | 1,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(initial_state);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self
            .state
            .wrapping_mul(Self::MULTIPLIER)
            .wrapping_add(self.increment);
    }

    fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.step();
        let xor_shifted = (((old >> 18) ^ old) >> 27) as u32;
        let rotation = (old >> 59) as u32;
        xor_shifted.rotate_right(rotation)
    }

    /// Uniform in `[0, 1)` from the top 24 bits, so every value is exact in an `f32`.
    fn next_unit(&mut self) -> f32 {
        const TWO_POW_24: f32 = 16_777_216.0;
        (self.next_u32() >> 8) as f32 / TWO_POW_24
    }
}

/// One SplitMix64 step: advances `state` and returns a well-mixed 64-bit value.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic, irregular row of logits in [-4, 4].
    fn wavy_logits(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 4.0 * ((i as f32) * 0.37).sin() * ((i as f32) * 0.11).cos())
            .collect()
    }

    fn sampler(config: SamplerConfig, n_vocab: usize) -> Sampler {
        Sampler::new(config, n_vocab).expect("valid sampler config")
    }

    fn draws(config: SamplerConfig, logits: &[f32], count: usize) -> Vec<u32> {
        let mut sampler = sampler(config, logits.len());
        let mut row = logits.to_vec();
        (0..count)
            .map(|_| sampler.sample(&mut row, &[]).expect("finite logits"))
            .collect()
    }

    fn pure_temperature(temperature: f32, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..SamplerConfig::default()
        }
    }

    fn invalid_message(config: SamplerConfig) -> String {
        match config.validate() {
            Err(Error::InvalidInput(message)) => message,
            other => panic!("expected InvalidInput for {config:?}, got {other:?}"),
        }
    }

    #[test]
    fn pcg32_matches_reference_output() {
        // First outputs of the PCG reference demo, `pcg32_srandom_r(&rng, 42, 54)`.
        let mut rng = Pcg32::new(42, 54);
        let expected = [
            0xa15c_02b7,
            0x7b47_f409,
            0xba1d_3330,
            0x83d2_f293,
            0xbfa4_784b,
        ];
        for value in expected {
            assert_eq!(rng.next_u32(), value);
        }
    }

    #[test]
    fn unit_draws_stay_in_half_open_interval() {
        let mut rng = Pcg32::from_seed(3);
        for _ in 0..10_000 {
            let u = rng.next_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }

    #[test]
    fn greedy_picks_argmax() {
        let mut sampler = sampler(SamplerConfig::greedy(), 5);
        let mut logits = [0.1, -2.0, 7.5, 3.0, 7.4];
        assert_eq!(sampler.sample(&mut logits, &[]).unwrap(), 2);
    }

    #[test]
    fn greedy_breaks_ties_to_lowest_id() {
        let mut sampler = sampler(SamplerConfig::greedy(), 5);
        let mut logits = [1.0, 3.0, 2.0, 3.0, 3.0];
        assert_eq!(sampler.sample(&mut logits, &[]).unwrap(), 1);
    }

    #[test]
    fn same_seed_same_sequence() {
        let logits = wavy_logits(1000);
        let config = SamplerConfig {
            seed: 7,
            ..SamplerConfig::default()
        };
        let first = draws(config.clone(), &logits, 1000);
        let second = draws(config, &logits, 1000);
        assert_eq!(first, second);
    }

    #[test]
    fn different_seed_different_sequence() {
        let logits = wavy_logits(1000);
        let seeded = |seed| SamplerConfig {
            seed,
            ..SamplerConfig::default()
        };
        assert_ne!(
            draws(seeded(7), &logits, 1000),
            draws(seeded(8), &logits, 1000)
        );
    }

    #[test]
    fn seeded_sequence_is_pinned() {
        // Guards against silent changes to the RNG or the pipeline: same seed, same tokens, everywhere.
        // Exact logits (quarters), so only `exp` could differ between platforms.
        let logits: Vec<f32> = (0..100u32).map(|i| ((i * 7) % 13) as f32 * 0.25).collect();
        let tokens = draws(pure_temperature(1.0, 42), &logits, 8);
        assert_eq!(tokens, PINNED_SEED_42);
    }

    const PINNED_SEED_42: [u32; 8] = [81, 64, 71, 64, 96, 61, 85, 93];

    #[test]
    fn top_k_one_equals_greedy_at_any_temperature() {
        for n in [3, 50, 1000] {
            let logits = wavy_logits(n);
            let greedy = draws(SamplerConfig::greedy(), &logits, 1)[0];
            for temperature in [0.01, 0.5, 1.0, 5.0, 1000.0] {
                let config = SamplerConfig {
                    top_k: 1,
                    ..pure_temperature(temperature, 11)
                };
                assert!(draws(config, &logits, 50).iter().all(|&t| t == greedy));
            }
        }
    }

    #[test]
    fn tiny_top_p_equals_greedy() {
        let logits = wavy_logits(1000);
        let greedy = draws(SamplerConfig::greedy(), &logits, 1)[0];
        let config = SamplerConfig {
            top_p: 1e-6,
            ..pure_temperature(2.0, 5)
        };
        assert!(draws(config, &logits, 200).iter().all(|&t| t == greedy));
    }

    fn frequencies(tokens: &[u32], n_vocab: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n_vocab];
        for &token in tokens {
            counts[token as usize] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / tokens.len() as f64)
            .collect()
    }

    fn three_way_logits() -> [f32; 3] {
        [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()]
    }

    #[test]
    fn draws_follow_softmax_probabilities() {
        let tokens = draws(pure_temperature(1.0, 1234), &three_way_logits(), 20_000);
        let observed = frequencies(&tokens, 3);
        for (seen, expected) in observed.iter().zip([0.5, 0.3, 0.2]) {
            assert!((seen - expected).abs() < 0.02, "{observed:?}");
        }
    }

    #[test]
    fn top_k_keeps_only_the_best() {
        let config = SamplerConfig {
            top_k: 2,
            ..pure_temperature(1.0, 9)
        };
        let tokens = draws(config, &three_way_logits(), 2000);
        assert!(!tokens.contains(&2));
        assert!(tokens.contains(&0) && tokens.contains(&1));
    }

    #[test]
    fn top_p_keeps_smallest_sufficient_prefix() {
        // 0.5 < 0.7 <= 0.5 + 0.3: tokens 0 and 1 stay.
        let config = SamplerConfig {
            top_p: 0.7,
            ..pure_temperature(1.0, 9)
        };
        let tokens = draws(config, &three_way_logits(), 2000);
        assert!(!tokens.contains(&2));
        assert!(tokens.contains(&0) && tokens.contains(&1));
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // Threshold 0.5 * 0.5 = 0.25: token 2 (0.2) goes, token 1 (0.3) stays.
        let config = SamplerConfig {
            min_p: 0.5,
            ..pure_temperature(1.0, 9)
        };
        let tokens = draws(config, &three_way_logits(), 2000);
        assert!(!tokens.contains(&2));
        assert!(tokens.contains(&0) && tokens.contains(&1));
        let observed = frequencies(&tokens, 3);
        assert!((observed[0] - 0.625).abs() < 0.04, "{observed:?}");
    }

    #[test]
    fn extreme_temperatures_stay_finite() {
        let logits = [1.0e30, -1.0e30, 0.0, 1.0e30];
        for temperature in [1.0e-30, 1.0e30] {
            let tokens = draws(pure_temperature(temperature, 2), &logits, 100);
            assert!(tokens.iter().all(|&t| t < 4));
        }
        let cold = draws(pure_temperature(1.0e-30, 2), &[2.0, 1.0], 100);
        assert!(cold.iter().all(|&t| t == 0));
    }

    #[test]
    fn repetition_penalty_pushes_repeated_tokens_down() {
        let config = SamplerConfig {
            repetition_penalty: 2.0,
            ..SamplerConfig::greedy()
        };
        let mut sampler = sampler(config, 4);
        let mut logits = [2.0, -1.0, 0.5, 3.0];
        // Token 0 appears twice but is penalised once; token 3 is not in the history.
        let token = sampler.sample(&mut logits, &[0, 1, 0]).unwrap();
        assert_eq!(logits, [1.0, -2.0, 0.5, 3.0]);
        assert_eq!(token, 3);
    }

    #[test]
    fn repetition_penalty_only_sees_last_n_tokens() {
        let config = SamplerConfig {
            repetition_penalty: 2.0,
            repeat_last_n: 2,
            ..SamplerConfig::greedy()
        };
        let mut sampler = sampler(config, 4);
        let mut logits = [4.0, 4.0, 4.0, 4.0];
        // Out-of-vocabulary ids in the history are ignored, not a panic.
        sampler.sample(&mut logits, &[0, 1, 2, 99]).unwrap();
        assert_eq!(logits, [4.0, 4.0, 2.0, 4.0]);
        // The marks are cleared between calls: the same token is penalised again next time.
        sampler.sample(&mut logits, &[2]).unwrap();
        assert_eq!(logits, [4.0, 4.0, 1.0, 4.0]);
    }

    #[test]
    fn repetition_penalty_changes_greedy_choice() {
        let config = SamplerConfig {
            repetition_penalty: 1.5,
            ..SamplerConfig::greedy()
        };
        let mut sampler = sampler(config, 3);
        let mut logits = [3.0, 2.5, 1.0];
        assert_eq!(sampler.sample(&mut logits, &[0]).unwrap(), 1);
    }

    #[test]
    fn validate_accepts_defaults_and_greedy() {
        assert!(SamplerConfig::default().validate().is_ok());
        assert!(SamplerConfig::greedy().validate().is_ok());
    }

    #[test]
    fn validate_rejects_out_of_range_values() {
        let base = SamplerConfig::default();
        let message = invalid_message(SamplerConfig {
            top_p: 0.0,
            ..base.clone()
        });
        assert_eq!(message, "--top-p must be in (0, 1], got 0");
        let message = invalid_message(SamplerConfig {
            top_p: 1.5,
            ..base.clone()
        });
        assert!(message.contains("--top-p") && message.contains("1.5"));
        let message = invalid_message(SamplerConfig {
            temperature: -0.5,
            ..base.clone()
        });
        assert!(message.contains("--temperature"));
        let message = invalid_message(SamplerConfig {
            min_p: 1.0,
            ..base.clone()
        });
        assert!(message.contains("--min-p"));
        let message = invalid_message(SamplerConfig {
            repetition_penalty: 0.0,
            ..base
        });
        assert!(message.contains("--repeat-penalty"));
    }

    #[test]
    fn validate_rejects_non_finite_values() {
        let base = SamplerConfig::default();
        let nan_temperature = SamplerConfig {
            temperature: f32::NAN,
            ..base.clone()
        };
        assert!(invalid_message(nan_temperature).contains("--temperature"));
        let infinite_temperature = SamplerConfig {
            temperature: f32::INFINITY,
            ..base.clone()
        };
        assert!(invalid_message(infinite_temperature).contains("--temperature"));
        for (config, flag) in [
            (
                SamplerConfig {
                    top_p: f32::NAN,
                    ..base.clone()
                },
                "--top-p",
            ),
            (
                SamplerConfig {
                    min_p: f32::NAN,
                    ..base.clone()
                },
                "--min-p",
            ),
            (
                SamplerConfig {
                    repetition_penalty: f32::INFINITY,
                    ..base
                },
                "--repeat-penalty",
            ),
        ] {
            assert!(invalid_message(config).contains(flag));
        }
    }

    #[test]
    fn new_rejects_empty_vocabulary_and_bad_config() {
        assert!(matches!(
            Sampler::new(SamplerConfig::default(), 0),
            Err(Error::InvalidInput(_))
        ));
        let bad = SamplerConfig {
            top_p: 0.0,
            ..SamplerConfig::default()
        };
        assert!(Sampler::new(bad, 10).is_err());
    }

    #[test]
    fn non_finite_logits_are_an_error() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for config in [SamplerConfig::greedy(), SamplerConfig::default()] {
                let mut sampler = sampler(config, 4);
                let mut logits = [0.0, 1.0, bad, bad];
                match sampler.sample(&mut logits, &[]) {
                    Err(Error::Numeric(message)) => {
                        assert!(message.contains("logit 2"), "{message}")
                    }
                    other => panic!("expected a numeric error, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn config_is_returned_unchanged() {
        let config = SamplerConfig {
            seed: 99,
            ..SamplerConfig::default()
        };
        assert_eq!(sampler(config.clone(), 8).config(), &config);
    }
}
