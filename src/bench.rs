//! Measuring speed the way llama-bench does: prefill and decode tokens per second, per-step
//! latencies, and the memory bandwidth that bounds decode (the roofline). What the machine is and
//! how it is doing (CPU, board, temperature, throttling, peak memory) is [`crate::machine`]'s.
//!
//! This module measures and returns numbers; `gpt2q bench` (in `src/cli/`) formats them.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::kv_cache::KvType;
use crate::machine;
use crate::model::Model;
use crate::session::{Session, SessionConfig};

/// What one benchmark configuration measured.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Threads used.
    pub threads: usize,
    /// Prompt tokens processed in one batch (pp).
    pub prompt_tokens: usize,
    /// Single-token decode steps from an empty cache (tg), each computing every logit.
    pub gen_tokens: usize,
    /// Context size of the session.
    pub ctx: usize,
    /// KV cache element type.
    pub kv: KvType,
    /// Prefill tokens/s of each repeat.
    pub prefill_tok_s: Vec<f64>,
    /// Decode tokens/s of each repeat.
    pub decode_tok_s: Vec<f64>,
    /// Every decode step's duration in milliseconds, over all repeats.
    pub step_ms: Vec<f64>,
    /// Time to the first token's logits (the prefill), per repeat, in milliseconds.
    pub ttft_ms: Vec<f64>,
    /// What else the machine did during the counted repeats (other processes, steal, context
    /// switches, migrations), to tell a contended or disturbed measurement from a clean one.
    pub activity: machine::Activity,
    /// Each pool thread's speed on a fixed scalar loop run by all of them at once, relative to
    /// one thread running it alone, with the CPU it ran on; the slower of a probe before and
    /// one after the repeats. A worker well under 1 shared its CPU (with another process, or
    /// with another worker), or its CPU ran slower (frequency, or a busy SMT sibling on a
    /// virtual machine's host).
    pub worker_speed: Vec<WorkerSpeed>,
    /// Streaming-read bandwidth in GB/s measured just before each counted decode repeat (empty
    /// without a [`BandwidthProbe`]). On a shared host the bandwidth a machine gets can change
    /// from one second to the next, and a decode that streams its weights changes with it.
    pub decode_membw_gbs: Vec<f64>,
}

/// One pool thread's result in [`Measurement::worker_speed`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkerSpeed {
    /// The CPU the thread was on after the probe, if the OS tells.
    pub cpu: Option<usize>,
    /// Its speed over one thread's alone (1 = as fast).
    pub relative: f64,
}

/// Iterations of the speed probe's dependent integer chain (a few milliseconds).
const PROBE_ITERATIONS: u64 = 3_000_000;

/// Iterations per second of a dependent multiply-xorshift chain on the calling thread.
fn probe_rate() -> f64 {
    let t = Instant::now();
    let mut x = std::hint::black_box(0x9e37_79b9_7f4a_7c15u64);
    for _ in 0..PROBE_ITERATIONS {
        x = x.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (x >> 29);
    }
    std::hint::black_box(x);
    PROBE_ITERATIONS as f64 / secs(t.elapsed())
}

/// [`Measurement::worker_speed`] now, on the current rayon pool: the loop on this thread alone
/// (the best of three), then on every thread at once.
pub fn worker_speeds() -> Vec<WorkerSpeed> {
    let alone = (0..3).map(|_| probe_rate()).fold(0f64, f64::max);
    rayon::broadcast(|_| WorkerSpeed {
        relative: probe_rate() / alone.max(1e-9),
        cpu: machine::current_cpu(),
    })
}

/// Per thread, the slower of two probes.
fn slower(a: Vec<WorkerSpeed>, b: Vec<WorkerSpeed>) -> Vec<WorkerSpeed> {
    a.into_iter()
        .zip(b)
        .map(|(a, b)| if b.relative < a.relative { b } else { a })
        .collect()
}

/// The median of `v` (0 for an empty slice).
pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// The `p`-th percentile of `v` by linear interpolation (0 for an empty slice).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = (p / 100.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// Deterministic token ids below `n_vocab` (the bench does not need real text).
fn bench_tokens(n: usize, n_vocab: u32) -> Vec<u32> {
    let mut x = 0x1234_5678u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % (n_vocab - 1)
        })
        .collect()
}

/// The session a benchmark runs in (default: the smallest context, f16 cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSpec {
    /// Context size; `None`: just enough for the prompt and the decode steps.
    pub ctx: Option<usize>,
    /// KV cache element type.
    pub kv: KvType,
}

/// Runs pp (`prompt` tokens in one prefill) and tg (`gen` single-token steps from an empty
/// cache) `repeats` times after one uncounted warm-up, on the current rayon pool, in a session
/// sized by `cache`. `progress(repeat)` is called before each counted repeat; `probe`, if given,
/// measures the memory bandwidth before each counted decode repeat.
pub fn measure(
    model: &Model<'_>,
    (prompt, gen, repeats): (usize, usize, usize),
    cache: CacheSpec,
    probe: Option<&BandwidthProbe>,
    mut progress: impl FnMut(usize),
) -> Result<Measurement> {
    if prompt == 0 && gen == 0 {
        return Err(Error::invalid("nothing to measure: -p and -n are both 0"));
    }
    let needed = prompt.max(gen).max(1);
    let ctx = cache.ctx.unwrap_or(needed);
    if ctx < needed {
        return Err(Error::invalid(format!(
            "--ctx {ctx} is smaller than -p/-n ({needed} tokens)"
        )));
    }
    let mut session = Session::with_config(model, SessionConfig::new(ctx).with_kv(cache.kv))?;
    let tokens = bench_tokens(ctx, model.hparams.n_vocab);
    let mut m = Measurement {
        threads: rayon::current_num_threads(),
        prompt_tokens: prompt,
        gen_tokens: gen,
        ctx,
        kv: cache.kv,
        prefill_tok_s: Vec::new(),
        decode_tok_s: Vec::new(),
        step_ms: Vec::new(),
        ttft_ms: Vec::new(),
        activity: machine::Activity::default(),
        worker_speed: Vec::new(),
        decode_membw_gbs: Vec::new(),
    };
    let speed_before = worker_speeds();
    let mut start_activity = machine::Activity::default();
    for r in 0..=repeats {
        let counted = r > 0;
        if counted {
            progress(r);
        }
        if r == 1 {
            start_activity = machine::Activity::read();
        }
        if prompt > 0 {
            session.reset();
            let t = Instant::now();
            session.prefill(&tokens[..prompt])?;
            let dt = t.elapsed();
            if counted {
                m.prefill_tok_s.push(prompt as f64 / secs(dt));
                m.ttft_ms.push(dt.as_secs_f64() * 1e3);
            }
        }
        if gen > 0 {
            if let Some(p) = probe.filter(|_| counted) {
                m.decode_membw_gbs.push(p.measure());
            }
            session.reset();
            let start = Instant::now();
            for &tok in &tokens[..gen] {
                let t = Instant::now();
                session.forward(tok)?;
                if counted {
                    m.step_ms.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            if counted {
                m.decode_tok_s.push(gen as f64 / secs(start.elapsed()));
            }
        }
    }
    if repeats > 0 {
        m.activity = machine::Activity::read().since(&start_activity);
    }
    m.worker_speed = slower(speed_before, worker_speeds());
    Ok(m)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// Streaming-read bandwidth in GB/s on the current rayon pool: the best of four passes (after a
/// warm-up) summing a buffer of `bytes` (much larger than the caches, on huge pages like the
/// weights), split across the pool's threads.
pub fn memory_bandwidth(bytes: usize) -> f64 {
    let probe = BandwidthProbe::new(bytes);
    probe.pass();
    (0..4).map(|_| probe.pass()).fold(0f64, f64::max)
}

/// A buffer for measuring the memory bandwidth again and again during a benchmark: allocated and
/// touched once, then each [`BandwidthProbe::measure`] streams it.
pub struct BandwidthProbe {
    map: Option<memmap2::MmapMut>,
    fallback: Vec<u64>,
}

impl BandwidthProbe {
    /// A probe over `bytes` bytes (on huge pages where the OS offers them).
    pub fn new(bytes: usize) -> Self {
        let map = crate::mmap::huge_page_buffer(bytes / 8 * 8, 1).ok();
        let fallback = if map.is_some() {
            Vec::new()
        } else {
            vec![1u64; bytes / 8]
        };
        BandwidthProbe { map, fallback }
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        self.words().len() * 8
    }

    fn words(&self) -> &[u64] {
        self.map
            .as_deref()
            .and_then(crate::mmap::as_u64)
            .unwrap_or(&self.fallback)
    }

    /// GB/s now on the current rayon pool: the better of two passes.
    pub fn measure(&self) -> f64 {
        self.pass().max(self.pass())
    }

    /// One timed pass summing the buffer across the pool, in GB/s.
    fn pass(&self) -> f64 {
        use rayon::prelude::*;
        let words = self.words();
        let chunk = words.len().div_ceil(rayon::current_num_threads()).max(1);
        let t = Instant::now();
        let total: u64 = words.par_chunks(chunk).map(sum_words).sum();
        std::hint::black_box(total);
        (words.len() * 8) as f64 / secs(t.elapsed()) / 1e9
    }
}

/// Sum with eight independent lanes so the loop streams at full speed.
fn sum_words(w: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = w.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    acc.iter()
        .chain(it.remainder())
        .fold(0u64, |a, &b| a.wrapping_add(b))
}

/// The size of buffer to use for [`memory_bandwidth`]: 256 MiB, or an eighth of the machine's
/// memory if that is less (a 512 MB Pi Zero 2 W), never under 32 MiB.
pub fn bandwidth_buffer_bytes() -> usize {
    let total = machine::memory_bytes().unwrap_or(4 << 30);
    (total / 8).clamp(32 << 20, 256 << 20)
}

/// The size of a [`BandwidthProbe`] kept during the repeats: a quarter of
/// [`bandwidth_buffer_bytes`] (64 MiB, twice the largest L3 of a desktop CPU's core complex;
/// 16 MiB on a Pi, whose L2 is 1–2 MiB), so each probe takes milliseconds.
pub fn probe_buffer_bytes() -> usize {
    (bandwidth_buffer_bytes() / 4).max(16 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median(&v), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn sums_are_exact() {
        let w: Vec<u64> = (0..1001).collect();
        assert_eq!(sum_words(&w), 1000 * 1001 / 2);
    }
}
