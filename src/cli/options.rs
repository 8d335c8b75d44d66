//! Flag groups shared by the commands that generate text (`run`, `chat`): sampling and the
//! context (size, KV type, shifting, memory limit), plus escape handling for text flags.

use gpt2q::kv_cache::KvType;
use gpt2q::sampler::SamplerConfig;
use gpt2q::{Error, Result};

/// Default top-k when neither the user nor a task preset sets one.
const DEFAULT_TOP_K: usize = 40;
/// Default temperature when neither the user nor a task preset sets one.
const DEFAULT_TEMPERATURE: f32 = 0.8;

/// How tokens are sampled.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature (0 = greedy) [default: 0.8].
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Keep only the K most likely tokens (0 = off) [default: 40].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: from the clock; printed to stderr so a run can be repeated).
    #[arg(short, long)]
    pub seed: Option<u64>,
    /// Always pick the most likely token.
    #[arg(long)]
    pub greedy: bool,
}

impl SamplingArgs {
    /// The sampler settings, with `top_k` and greedy decoding taken from a preset when the user
    /// gave neither the flag nor `--temperature`; validated.
    pub fn config(
        &self,
        preset_top_k: Option<usize>,
        preset_greedy: bool,
    ) -> Result<SamplerConfig> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let greedy = self.greedy || (preset_greedy && self.temperature.is_none());
        let temperature = if greedy {
            0.0
        } else {
            self.temperature.unwrap_or(DEFAULT_TEMPERATURE)
        };
        let config = SamplerConfig {
            temperature,
            top_k: self.top_k.or(preset_top_k).unwrap_or(DEFAULT_TOP_K),
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed,
        };
        config.validate()?;
        Ok(config)
    }
}

/// How big the context is and what happens when it fills.
#[derive(clap::Args, Debug, Clone)]
pub struct ContextArgs {
    /// Context size in tokens (default: the model's maximum, capped to what fits --mem-limit).
    /// When it fills, the context shifts (see --keep).
    #[arg(short, long)]
    pub ctx: Option<usize>,
    /// KV cache element type: f32, f16 (half the memory) or q8 (about a quarter).
    #[arg(long, default_value = "f16")]
    pub kv: KvType,
    /// When the context is full, keep the first K tokens, drop the oldest half of the rest and
    /// re-run the remainder at their new positions [run: 0; chat: the system prompt's tokens].
    #[arg(long)]
    pub keep: Option<usize>,
    /// Refuse to start if weights + KV cache + scratch exceed this (e.g. 300M; K, M, G are
    /// powers of 1024), saying what would fit.
    #[arg(long, value_parser = super::info::parse_bytes)]
    pub mem_limit: Option<usize>,
}

/// Replaces the escapes `\n`, `\t`, `\r` and `\\` in a text flag (so a shell argument can hold a
/// newline); any other backslash is an error.
pub fn unescape(flag: &str, s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('n') => '\n',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('\\') => '\\',
            other => {
                return Err(Error::invalid(format!(
                    "{flag}: unknown escape \\{} (use \\n, \\t, \\r or \\\\)",
                    other.map_or(String::new(), String::from)
                )))
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn escapes() {
        assert_eq!(unescape("--x", r"a\nb\t\\c").unwrap(), "a\nb\t\\c");
        assert!(unescape("--x", r"a\q").is_err());
        assert!(unescape("--x", "a\\").is_err());
    }
}
