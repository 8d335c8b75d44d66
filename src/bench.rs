//! Measuring speed the way llama-bench does, plus what a board owner needs to trust the numbers:
//! the machine, the kernel path, memory bandwidth (the roofline for decode), peak memory, and on
//! a Raspberry Pi its board model, temperature and throttling.
//!
//! This module measures and returns numbers; `gpt2q bench` (in `src/cli/`) formats them.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::kv_cache::KvType;
use crate::model::{Model, Session, SessionConfig};

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
/// sized by `cache`. `progress(repeat)` is called before each counted repeat.
pub fn measure(
    model: &Model<'_>,
    prompt: usize,
    gen: usize,
    repeats: usize,
    cache: CacheSpec,
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
    };
    for r in 0..=repeats {
        let counted = r > 0;
        if counted {
            progress(r);
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
    Ok(m)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// Streaming-read bandwidth in GB/s on the current rayon pool: the best of several passes
/// summing a buffer of `bytes` (much larger than the caches, on huge pages like the weights),
/// split across the pool's threads.
pub fn memory_bandwidth(bytes: usize) -> f64 {
    let map = crate::mmap::huge_page_buffer(bytes / 8 * 8, 1).ok();
    match map.as_deref().and_then(crate::mmap::as_u64) {
        Some(words) => streaming_best(words, bytes),
        None => streaming_best(&vec![1u64; bytes / 8], bytes),
    }
}

/// The best of four timed passes (after one warm-up) summing `words` across the pool.
fn streaming_best(words: &[u64], bytes: usize) -> f64 {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let chunk = words.len().div_ceil(threads);
    let mut best = 0f64;
    for pass in 0..4 {
        let t = Instant::now();
        let total: u64 = words.par_chunks(chunk).map(sum_words).sum();
        std::hint::black_box(total);
        let gbs = bytes as f64 / secs(t.elapsed()) / 1e9;
        if pass > 0 {
            best = best.max(gbs);
        }
    }
    best
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
    let total = read_meminfo_kib("MemTotal:").unwrap_or(4 << 20) * 1024;
    (total / 8).clamp(32 << 20, 256 << 20)
}

fn read_meminfo_kib(key: &str) -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_kib(&text, key)
}

fn parse_kib(text: &str, key: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// This process's peak resident memory in bytes (Linux `VmHWM`), if the OS tells.
pub fn peak_rss_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&text, "VmHWM:").map(|k| k * 1024)
}

/// The machine's physical memory in bytes (Linux `MemTotal`), if the OS tells.
pub fn machine_memory_bytes() -> Option<usize> {
    read_meminfo_kib("MemTotal:").map(|k| k.saturating_mul(1024))
}

/// Resets the peak-RSS counter (Linux 4.0+), so a measurement after this excludes earlier
/// allocations such as the bandwidth buffer. Returns whether the OS allowed it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// What the bench can tell about the machine.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Raspberry Pi (or other device-tree) board model, if any.
    pub board: Option<String>,
    /// SoC temperature in °C, if readable.
    pub temperature_c: Option<f64>,
    /// `vcgencmd get_throttled` bits, if the tool exists (Raspberry Pi OS).
    pub throttled: Option<u32>,
}

impl Machine {
    /// Reads the machine's description now (temperature and throttling change; read again
    /// after a run to compare).
    pub fn probe() -> Self {
        Machine {
            cpu: cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            board: std::fs::read_to_string("/proc/device-tree/model")
                .ok()
                .map(|s| s.trim_end_matches('\0').trim().to_string()),
            temperature_c: std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp")
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .map(|m| m / 1000.0),
            throttled: throttled_bits(),
        }
    }
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let value = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    value("model name")
        .or_else(|| value("Model"))
        .or_else(|| value("CPU part").map(|p| format!("ARM CPU part {p}")))
}

/// Bits of `vcgencmd get_throttled` (`throttled=0x50000`): bit 2 = throttled now, bit 18 =
/// throttled since boot, bits 0/16 under-voltage.
fn throttled_bits() -> Option<u32> {
    let out = std::process::Command::new("vcgencmd")
        .arg("get_throttled")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().strip_prefix("throttled=0x")?;
    u32::from_str_radix(hex, 16).ok()
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
    fn meminfo_lines_parse() {
        let text = "MemTotal:       24000000 kB\nVmHWM:\t  123 kB\n";
        assert_eq!(parse_kib(text, "MemTotal:"), Some(24_000_000));
        assert_eq!(parse_kib(text, "VmHWM:"), Some(123));
        assert_eq!(parse_kib(text, "Nope:"), None);
    }

    #[test]
    fn sums_are_exact() {
        let w: Vec<u64> = (0..1001).collect();
        assert_eq!(sum_words(&w), 1000 * 1001 / 2);
    }
}
