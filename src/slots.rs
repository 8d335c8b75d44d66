//! Serving requests from several sessions over one model (`gpt2q serve`'s slots): a slot owns a
//! [`Session`] (its own KV cache and scratch over the shared model) and runs one [`Job`] at a
//! time ([`run_job`]); jobs wait in a bounded queue ([`Scheduler`]) when every slot is busy. A
//! job's output flows back to whoever waits for it (an HTTP handler) through buffers swapped
//! under a lock, so the per-token loop allocates nothing. Nothing here knows HTTP.
//!
//! A slot remembers which tokens its KV cache holds after a job; a new job goes to the idle slot
//! whose cache shares the longest prefix with its prompt, and only the tokens after that prefix
//! run (a chat that continues reuses its earlier turns).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::generate::{
    reserve_len, ContextPolicy, Event, Generator, StopReason, StopRules, StopText,
};
use crate::perplexity::nll;
use crate::sampler::{Sampler, SamplerConfig};
use crate::session::Session;

/// Most alternatives a token's log-probabilities can list (OpenAI's limit for chat).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What to generate for one request, validated.
#[derive(Clone, Debug)]
pub struct GenSpec {
    /// Prompt token ids (at least one, at most the context).
    pub prompt: Vec<u32>,
    /// How tokens are sampled.
    pub sampler: SamplerConfig,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings (the text stops before the first that appears).
    pub stops: Vec<String>,
    /// Stop after sampling this token.
    pub stop_token: Option<u32>,
    /// Record each token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// With `logprobs`, also record those of the prompt's tokens after the first (they come
    /// first, `prompt.len() - 1` records, before the generated tokens').
    pub prompt_logprobs: bool,
    /// Tokens at the start that context shifts keep.
    pub keep: usize,
}

impl GenSpec {
    /// Most [`TokenRecord`]s the job can produce.
    fn records(&self) -> usize {
        match (self.logprobs, self.prompt_logprobs) {
            (None, _) => 0,
            (Some(_), false) => self.max_tokens + 1,
            (Some(_), true) => self.max_tokens + self.prompt.len(),
        }
    }
}

/// One generated token's log-probability and the most likely alternatives at its position.
#[derive(Clone, Copy, Debug)]
pub struct TokenRecord {
    /// The token.
    pub id: u32,
    /// Its log-probability under the model (before sampling filters).
    pub logprob: f32,
    /// The `n_top` most likely tokens and their log-probabilities, most likely first.
    pub top: [(u32, f32); MAX_TOP_LOGPROBS],
    /// How many of `top` are filled.
    pub n_top: usize,
}

/// How a job ended.
#[derive(Clone, Copy, Debug)]
pub struct Finish {
    /// Why generation stopped.
    pub reason: StopReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens the slot already held and did not run again.
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Time to run the prompt.
    pub prefill: Duration,
    /// Time to generate after the first token.
    pub decode: Duration,
}

/// Output not yet taken by the handler.
#[derive(Default)]
struct Progress {
    text: Vec<u8>,
    tokens: Vec<TokenRecord>,
    done: Option<std::result::Result<Finish, String>>,
}

/// One request in flight: what to generate and the output so far.
pub struct Job {
    /// What to generate.
    pub spec: GenSpec,
    progress: Mutex<Progress>,
    changed: Condvar,
    cancelled: AtomicBool,
}

/// Bytes of text buffered between the slot and the handler before the buffer would grow.
const TEXT_BUFFER: usize = 4096;

impl Job {
    /// A job for `spec`, its output buffers sized up front.
    pub fn new(spec: GenSpec) -> Arc<Self> {
        let records = spec.records();
        Arc::new(Job {
            progress: Mutex::new(Progress {
                text: Vec::with_capacity(TEXT_BUFFER),
                tokens: Vec::with_capacity(records),
                done: None,
            }),
            spec,
            changed: Condvar::new(),
            cancelled: AtomicBool::new(false),
        })
    }

    /// Buffers a caller can pass to [`Job::take`] without either side ever growing them.
    pub fn buffers(&self) -> (Vec<u8>, Vec<TokenRecord>) {
        let records = self.spec.records();
        (Vec::with_capacity(TEXT_BUFFER), Vec::with_capacity(records))
    }

    /// Asks the slot to stop this job at the next token (the client went away).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// True once [`Job::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for new output, then swaps it into `text` and `tokens` (both emptied first).
    /// Returns how the job ended once it has, with all of its output taken.
    pub fn take(
        &self,
        text: &mut Vec<u8>,
        tokens: &mut Vec<TokenRecord>,
    ) -> Option<std::result::Result<Finish, String>> {
        text.clear();
        tokens.clear();
        let mut p = self.lock();
        while p.text.is_empty() && p.tokens.is_empty() && p.done.is_none() {
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        std::mem::swap(text, &mut p.text);
        std::mem::swap(tokens, &mut p.tokens);
        p.done.clone()
    }

    fn push_text(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.lock().text.extend_from_slice(bytes);
        self.changed.notify_all();
    }

    fn push_token(&self, record: TokenRecord) {
        self.lock().tokens.push(record);
        self.changed.notify_all();
    }

    /// Records how the job ended (an error as its message) and wakes the waiting side.
    pub fn finish(&self, result: std::result::Result<Finish, String>) {
        self.lock().done = Some(result);
        self.changed.notify_all();
    }
}

/// [`Scheduler::submit`] refused a job: the queue was full.
#[derive(Debug)]
pub struct QueueFull;

struct SlotState {
    /// A job handed to this idle slot, not yet started.
    assigned: Option<Arc<Job>>,
    busy: bool,
    /// Tokens the slot's KV cache holds (taken by the slot while it runs a job).
    cached: Vec<u32>,
}

struct State {
    queue: VecDeque<Arc<Job>>,
    slots: Vec<SlotState>,
}

/// The slots' shared state: which are busy, what each holds, and the queue.
pub struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
    queue_capacity: usize,
}

/// Length of the common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Scheduler {
    /// `slots` idle slots and room for `queue_capacity` waiting jobs.
    pub fn new(slots: usize, queue_capacity: usize) -> Self {
        Scheduler {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(queue_capacity),
                slots: (0..slots)
                    .map(|_| SlotState {
                        assigned: None,
                        busy: false,
                        cached: Vec::new(),
                    })
                    .collect(),
            }),
            wake: Condvar::new(),
            queue_capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `job` to the idle slot holding the longest prefix of its prompt, else (or when
    /// earlier jobs are waiting) queues it; refuses it when the queue is full.
    pub fn submit(&self, job: Arc<Job>) -> std::result::Result<(), QueueFull> {
        let mut state = self.lock();
        let best = match state.queue.is_empty() {
            true => state
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.busy && s.assigned.is_none())
                .max_by_key(|(i, s)| (common_prefix(&s.cached, &job.spec.prompt), usize::MAX - i))
                .map(|(i, _)| i),
            false => None,
        };
        match best {
            Some(i) => state.slots[i].assigned = Some(job),
            None if state.queue.len() < self.queue_capacity => state.queue.push_back(job),
            None => return Err(QueueFull),
        }
        drop(state);
        self.wake.notify_all();
        Ok(())
    }

    /// Slots running a job.
    pub fn busy(&self) -> usize {
        self.lock().slots.iter().filter(|s| s.busy).count()
    }

    /// Jobs waiting for a slot.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Blocks until slot `index` has a job; marks it busy and hands over the tokens its session
    /// holds (as [`Scheduler::done`] left them; empty at first).
    pub fn next(&self, index: usize) -> (Arc<Job>, Vec<u32>) {
        let mut state = self.lock();
        loop {
            let job = match state.slots[index].assigned.take() {
                Some(job) => Some(job),
                None => state.queue.pop_front(),
            };
            if let Some(job) = job {
                let slot = &mut state.slots[index];
                slot.busy = true;
                return (job, std::mem::take(&mut slot.cached));
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Slot `index` is idle again, its session holding `cached`.
    pub fn done(&self, index: usize, cached: Vec<u32>) {
        let mut state = self.lock();
        let slot = &mut state.slots[index];
        slot.busy = false;
        slot.cached = cached;
        drop(state);
        self.wake.notify_all();
    }
}

/// Generates `job` on `session`, reusing the prefix of its prompt that `cached` says the session
/// holds; leaves in `cached` what the session holds afterwards.
///
/// Each sampled token's text (and, with [`GenSpec::logprobs`], its [`TokenRecord`]) is handed
/// to the job as soon as it is final; the job stops at the next token once
/// [`Job::cancel`] is called. Call it on a rayon worker thread (inside `rayon::scope`), where
/// the parallel matrix products allocate nothing; after the setup, nothing is allocated per
/// token as long as the job's output is taken ([`Job::take`]) before 4 KiB of text pile up.
pub fn run_job(session: &mut Session<'_>, job: &Job, cached: &mut Vec<u32>) -> Result<Finish> {
    let spec = &job.spec;
    let n_vocab = session.model().hparams.n_vocab as usize;
    let mut sampler = Sampler::new(spec.sampler.clone(), n_vocab)?;
    let stops: Vec<&str> = spec.stops.iter().map(String::as_str).collect();
    let mut stop = match stops.is_empty() {
        true => None,
        false => Some(StopText::any(&stops)?),
    };
    let mut history = Vec::with_capacity(reserve_len(spec.prompt.len(), spec.max_tokens));
    history.extend_from_slice(&spec.prompt);
    let scored = spec.prompt_logprobs && spec.logprobs.is_some();
    let reuse = match spec.logprobs {
        Some(k) if scored => score_prompt(session, &spec.prompt, k, job)?,
        _ => common_prefix(cached, &spec.prompt),
    };
    // Only a token's own logits are kept, and only when log-probabilities are asked for.
    let mut logits = Vec::with_capacity(if spec.logprobs.is_some() { n_vocab } else { 0 });
    let policy = ContextPolicy::Shift { keep: spec.keep };
    let mut generator = Generator::with_prefix(session, &mut sampler, history, policy, reuse);
    let cached_tokens = match scored {
        true => 0,
        false => spec.prompt.len() - generator.pending(),
    };
    let rules = StopRules {
        max_new_tokens: spec.max_tokens,
        stop_token: spec.stop_token,
    };
    let result = generator.generate(rules, stop.as_mut(), |event| {
        if job.is_cancelled() {
            return ControlFlow::Break(());
        }
        match event {
            Event::Logits(row) if spec.logprobs.is_some() => {
                logits.clear();
                logits.extend_from_slice(row);
            }
            Event::Token(id) if Some(id) != spec.stop_token => {
                if let Some(k) = spec.logprobs {
                    job.push_token(token_record(&logits, id, k));
                }
            }
            Event::Text(bytes) => job.push_text(bytes),
            _ => {}
        }
        ControlFlow::Continue(())
    });
    generator.context_into(cached);
    let stats = result?;
    Ok(Finish {
        reason: stats.stop,
        prompt_tokens: spec.prompt.len(),
        cached_tokens,
        completion_tokens: stats.generated_tokens,
        prefill: stats.prefill_time,
        decode: stats.decode_time,
    })
}

/// Runs all but the last prompt token one at a time from position 0, recording each next
/// token's log-probability with `k` alternatives; returns the tokens the session now holds.
fn score_prompt(session: &mut Session<'_>, prompt: &[u32], k: usize, job: &Job) -> Result<usize> {
    session.reset();
    for pair in prompt.windows(2) {
        if job.is_cancelled() {
            return Err(Error::invalid("the request was cancelled"));
        }
        let logits = session.forward(pair[0])?;
        job.push_token(token_record(logits, pair[1], k));
    }
    Ok(prompt.len() - 1)
}

/// `id`'s log-probability and the `k` most likely tokens' under `logits`, each computed as the
/// scoring path does (`-nll`).
pub fn token_record(logits: &[f32], id: u32, k: usize) -> TokenRecord {
    let k = k.min(MAX_TOP_LOGPROBS).min(logits.len());
    let mut top = [(0u32, f32::NEG_INFINITY); MAX_TOP_LOGPROBS];
    for (i, &l) in logits.iter().enumerate() {
        if k == 0 || l <= top[k - 1].1 {
            continue;
        }
        // Insert keeping `top[..k]` sorted, most likely first; ties keep the lower id first.
        let mut j = k - 1;
        while j > 0 && top[j - 1].1 < l {
            top[j] = top[j - 1];
            j -= 1;
        }
        top[j] = (i as u32, l);
    }
    let logprob = -nll(logits, id) as f32;
    // log Z once; each alternative's log-probability is then its logit minus it.
    let log_z = nll(logits, id) + logits[id as usize] as f64;
    for entry in &mut top[..k] {
        entry.1 = if entry.0 == id {
            logprob
        } else {
            (entry.1 as f64 - log_z) as f32
        };
    }
    TokenRecord {
        id,
        logprob,
        top,
        n_top: k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_are_sorted_and_normalised() {
        let logits = [0.5f32, 3.0, -1.0, 3.0, 2.0];
        let r = token_record(&logits, 4, 3);
        let ids: Vec<u32> = r.top[..r.n_top].iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 4]);
        assert!((r.logprob as f64 + nll(&logits, 4)).abs() < 1e-6);
        assert_eq!(r.top[2].1, r.logprob);
        let total: f64 = logits
            .iter()
            .map(|&l| (l as f64 - (nll(&logits, 0) + 0.5)).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert_eq!(token_record(&logits, 0, 0).n_top, 0);
    }

    #[test]
    fn a_full_queue_refuses_and_idle_slots_take_the_longest_prefix() {
        let spec = |prompt: Vec<u32>| GenSpec {
            prompt,
            sampler: SamplerConfig::greedy(),
            max_tokens: 1,
            stops: Vec::new(),
            stop_token: None,
            logprobs: None,
            prompt_logprobs: false,
            keep: 0,
        };
        let s = Scheduler::new(2, 1);
        s.lock().slots[1].cached = vec![1, 2, 3];
        s.submit(Job::new(spec(vec![1, 2, 9]))).unwrap();
        assert!(s.lock().slots[1].assigned.is_some(), "slot 1 holds 1, 2");
        s.submit(Job::new(spec(vec![5]))).unwrap();
        assert!(s.lock().slots[0].assigned.is_some());
        s.submit(Job::new(spec(vec![6]))).unwrap();
        assert_eq!(s.queued(), 1);
        assert!(s.submit(Job::new(spec(vec![7]))).is_err());
    }
}
