//! Counters of `gpt2q serve`, exposed at `GET /metrics` in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use gpt2q::slots::Finish;

/// The endpoints counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/chat/completions`.
    Chat,
    /// `GET /v1/models`.
    Models,
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// Anything else.
    Other,
}

impl Endpoint {
    const ALL: [Endpoint; 6] = [
        Endpoint::Completions,
        Endpoint::Chat,
        Endpoint::Models,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat_completions",
            Endpoint::Models => "models",
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::Other => "other",
        }
    }
}

/// The server's counters; all atomics, updated from any thread.
#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 6],
    client_errors: AtomicU64,
    rejected: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    prefill_micros: AtomicU64,
    decode_micros: AtomicU64,
    slots_busy: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    /// A request arrived at `endpoint`.
    pub fn request(&self, endpoint: Endpoint) {
        let i = Endpoint::ALL
            .iter()
            .position(|&e| e == endpoint)
            .unwrap_or(5);
        add(&self.requests[i], 1);
    }

    /// A request was answered with a 4xx status.
    pub fn client_error(&self, status: u16) {
        add(&self.client_errors, 1);
        if status == 429 {
            add(&self.rejected, 1);
        }
    }

    pub(super) fn slot_started(&self) {
        add(&self.slots_busy, 1);
    }

    pub(super) fn slot_stopped(&self) {
        self.slots_busy.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn job_finished(&self, f: &Finish) {
        add(&self.prompt_tokens, f.prompt_tokens as u64);
        add(&self.cached_tokens, f.cached_tokens as u64);
        add(&self.generated_tokens, f.completion_tokens as u64);
        add(&self.prefill_micros, f.prefill.as_micros() as u64);
        add(&self.decode_micros, f.decode.as_micros() as u64);
    }

    /// The Prometheus text exposition, with the slot and queue gauges given.
    pub fn render(&self, slots: usize, queued: usize, queue_capacity: usize) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(
                out,
                "# HELP gpt2q_{name} {help}\n# TYPE gpt2q_{name} {kind}"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "gpt2q_{name}{labels} {value}");
            }
        };
        let requests: Vec<(String, String)> = Endpoint::ALL
            .iter()
            .zip(&self.requests)
            .map(|(e, n)| {
                (
                    format!("{{endpoint=\"{}\"}}", e.label()),
                    get(n).to_string(),
                )
            })
            .collect();
        let requests: Vec<(&str, String)> = requests
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        metric(
            "requests_total",
            "counter",
            "HTTP requests received.",
            &requests,
        );
        let one = |v: u64| [("", v.to_string())];
        metric(
            "client_errors_total",
            "counter",
            "Requests answered with a 4xx status.",
            &one(get(&self.client_errors)),
        );
        metric(
            "requests_rejected_total",
            "counter",
            "Requests refused with 429 because the queue was full.",
            &one(get(&self.rejected)),
        );
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of finished requests.",
            &one(get(&self.prompt_tokens)),
        );
        metric(
            "prompt_tokens_reused_total",
            "counter",
            "Prompt tokens a slot already held (not run again).",
            &one(get(&self.cached_tokens)),
        );
        metric(
            "tokens_generated_total",
            "counter",
            "Tokens generated.",
            &one(get(&self.generated_tokens)),
        );
        let (prefill, decode) = (get(&self.prefill_micros), get(&self.decode_micros));
        metric(
            "prefill_seconds_total",
            "counter",
            "Time spent running prompts.",
            &[("", format!("{:.6}", prefill as f64 / 1e6))],
        );
        metric(
            "decode_seconds_total",
            "counter",
            "Time spent generating.",
            &[("", format!("{:.6}", decode as f64 / 1e6))],
        );
        let computed = get(&self.prompt_tokens).saturating_sub(get(&self.cached_tokens));
        let rate = |tokens: u64, micros: u64| match micros {
            0 => "0".to_string(),
            m => format!("{:.3}", tokens as f64 * 1e6 / m as f64),
        };
        metric(
            "prompt_tokens_per_second",
            "gauge",
            "Prompt tokens run per second of prefill, over the server's life.",
            &[("", rate(computed, prefill))],
        );
        metric(
            "tokens_per_second",
            "gauge",
            "Tokens generated per second of decoding in one slot, over the server's life.",
            &[("", rate(get(&self.generated_tokens), decode))],
        );
        metric(
            "slots_busy",
            "gauge",
            "Slots running a request.",
            &one(get(&self.slots_busy)),
        );
        metric(
            "slots_total",
            "gauge",
            "Slots (--parallel).",
            &one(slots as u64),
        );
        metric(
            "queue_length",
            "gauge",
            "Requests waiting for a slot.",
            &one(queued as u64),
        );
        metric(
            "queue_capacity",
            "gauge",
            "Requests that may wait (--queue).",
            &one(queue_capacity as u64),
        );
        out
    }
}
