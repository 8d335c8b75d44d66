//! The per-token path allocates nothing: a counting global allocator (its own test binary, since
//! the allocator is per binary) watches every thread while the default q8 model, and synthetic
//! models with q4 weights, generate 200 tokens in a small context, context shifts included; and
//! while a server slot runs a job, its output taken by another thread. The
//! loop must run on a rayon worker thread (inside `ThreadPool::install` or `rayon::scope`), as
//! `gpt2q run` does: called from outside the pool, rayon's job injection allocates (see the last
//! measurement below).
//!
//! The only `unsafe` outside the kernels and mmap code is here: a `GlobalAlloc` impl cannot be
//! written without it. It forwards every call to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use gpt2q::format::{Activation, HParams, TensorSpec};
use gpt2q::generate::{generate_with_policy, ContextPolicy, GenerationStats, StopRules};
use gpt2q::kv_cache::KvType;
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::quant::DType;
use gpt2q::sampler::{Sampler, SamplerConfig};
use gpt2q::session::{Session, SessionConfig};
use gpt2q::slots::{run_job, GenSpec, Job};
use gpt2q::synthetic;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on a thread whose allocations are not the generation's (the consumer of a slot's
    /// output, whose buffers grow with however much text it finds at once).
    static IGNORED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.load(Ordering::Relaxed) && !IGNORED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments; counting has no effect
// on the memory returned.
unsafe impl GlobalAlloc for Counting {
    /// # Safety
    /// As [`GlobalAlloc::alloc`], whose contract this forwards unchanged to
    /// [`System`].
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    /// # Safety
    /// As [`GlobalAlloc::alloc_zeroed`], whose contract this forwards unchanged to
    /// [`System`].
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    /// # Safety
    /// As [`GlobalAlloc::realloc`], whose contract this forwards unchanged to
    /// [`System`].
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    /// # Safety
    /// As [`GlobalAlloc::dealloc`], whose contract this forwards unchanged to
    /// [`System`].
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GENERATED: usize = 200;
const CTX: usize = 64;

/// Everything a generation needs, allocated before counting starts.
struct Run<'m> {
    session: Session<'m>,
    sampler: Sampler,
    prompt: Vec<u32>,
    history: Vec<u32>,
    tokens: Vec<u32>,
}

impl<'m> Run<'m> {
    fn new(model: &'m Model<'m>) -> Self {
        let session =
            Session::with_config(model, SessionConfig::new(CTX).with_kv(KvType::F16)).unwrap();
        let config = SamplerConfig {
            seed: 11,
            repetition_penalty: 1.1,
            ..SamplerConfig::default()
        };
        let sampler = Sampler::new(config, model.hparams.n_vocab as usize).unwrap();
        let prompt = model
            .tokenizer
            .encode("It was a dark and stormy night, and the rain fell in torrents");
        Run {
            session,
            sampler,
            history: Vec::with_capacity(prompt.len() + GENERATED),
            prompt,
            tokens: Vec::with_capacity(GENERATED),
        }
    }

    /// Prefills the prompt and generates `GENERATED` tokens; returns the allocations counted on
    /// every thread meanwhile.
    fn count(&mut self) -> (usize, GenerationStats) {
        self.tokens.clear();
        let rules = StopRules {
            max_new_tokens: GENERATED,
            stop_token: None,
        };
        let tokens = &mut self.tokens;
        ALLOCATIONS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        let stats = generate_with_policy(
            &mut self.session,
            &mut self.sampler,
            &self.prompt,
            rules,
            ContextPolicy::Shift { keep: 4 },
            &mut self.history,
            |t| {
                tokens.push(t);
                ControlFlow::Continue(())
            },
        );
        COUNTING.store(false, Ordering::SeqCst);
        let stats = stats.unwrap();
        (ALLOCATIONS.load(Ordering::SeqCst), stats)
    }
}

/// Warm-up run (first-use set-up: rayon's registry, kernel detection), then
/// the counted one.
fn measure(model: &Model<'_>) -> (usize, GenerationStats) {
    let mut run = Run::new(model);
    run.count();
    let (allocs, stats) = run.count();
    assert_eq!(stats.generated_tokens, GENERATED);
    assert!(stats.context_shifts >= 1, "no context shift happened");
    (allocs, stats)
}

/// A pool of 1 or 2 threads, made once for the whole test: a dropped pool's workers exit on
/// their own time, and under emulation that could fall inside the next counted run.
fn pool(threads: usize) -> &'static rayon::ThreadPool {
    static POOLS: [OnceLock<rayon::ThreadPool>; 2] = [OnceLock::new(), OnceLock::new()];
    POOLS[threads - 1].get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    })
}

/// One test function, so no other test's thread allocates while counting. The default q8 model
/// and q4 weights as the converter lays them out (`q4`: q8 embedding, q4 blocks; `q4-pure`: the
/// embedding split into q8 rows of frequent tokens and q4 rows; synthetic models built in memory
/// before counting starts) run in every threading set-up: the kernels keep no buffers of their
/// own, only the session's scratch.
#[test]
fn generation_allocates_nothing_per_token() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gpt2-q8.g2q");
    let file = ModelFile::open(&path).unwrap();
    let model = Model::load(&file, false).unwrap();
    check_model("q8", &model);
    check_slot_job(&model);
    for (name, bytes) in q4_models() {
        let file = ModelFile::from_bytes(&bytes);
        let model = Model::load(&file, false).unwrap();
        assert!(
            model.blocks[0].mlp_fc.weight.dtype() == DType::Q4,
            "{name}: the blocks are not q4"
        );
        check_model(name, &model);
    }
}

/// Small synthetic models (random weights, a byte tokenizer) with q4 weights in the converter's
/// two layouts.
fn q4_models() -> [(&'static str, Vec<u8>); 2] {
    let hp = HParams {
        n_vocab: 1000,
        n_ctx: CTX as u32,
        n_embd: 128,
        n_head: 4,
        n_layer: 2,
        n_inner: 512,
        layer_norm_eps: 1e-5,
        activation: Activation::GeluTanh,
        bos_id: 999,
        eos_id: 999,
    };
    let q8_embedding: Vec<TensorSpec> = synthetic::specs(&hp, DType::Q4)
        .into_iter()
        .map(|s| match s.name.as_str() {
            "wte.weight" => TensorSpec {
                dtype: DType::Q8,
                ..s
            },
            _ => s,
        })
        .collect();
    let frequent = 100;
    let split_embedding: Vec<TensorSpec> = synthetic::specs(&hp, DType::Q4)
        .into_iter()
        .flat_map(|s| match s.name.as_str() {
            "wte.weight" => vec![
                TensorSpec {
                    name: "wte.frequent.weight".into(),
                    dtype: DType::Q8,
                    shape: vec![frequent, s.shape[1]],
                },
                TensorSpec {
                    shape: vec![s.shape[0] - frequent, s.shape[1]],
                    ..s
                },
            ],
            _ => vec![s],
        })
        .collect();
    [
        (
            "q4",
            synthetic::model_bytes(&hp, q8_embedding, "q4").unwrap(),
        ),
        (
            "q4-pure",
            synthetic::model_bytes(&hp, split_embedding, "q4-pure").unwrap(),
        ),
    ]
}

/// Counts allocations on one thread, on two and on rayon's global pool (and, not asserted, from
/// outside the pool).
fn check_model(name: &str, model: &Model<'_>) {
    let (one, stats) = pool(1).install(|| measure(model));
    println!(
        "{name}, 1 thread, inside the pool: {one} allocations ({} shifts)",
        stats.context_shifts
    );
    assert_eq!(one, 0, "{name}: allocations with one thread");
    if std::env::var_os("GPT2Q_TEST_RUNNER").is_some() {
        // Under qemu a second worker may first steal work (and register with crossbeam's epoch
        // collector, which allocates once per thread) only during the counted run; the
        // multi-threaded cases are proven natively.
        println!("emulated: multi-threaded cases skipped");
        return;
    }
    let (two, _) = pool(2).install(|| measure(model));
    println!("{name}, 2 threads, inside the pool: {two} allocations");
    // What `gpt2q run` does: the loop runs on a worker of rayon's global pool (`rayon::scope`).
    let (global, _) = rayon::scope(|_| measure(model));
    println!(
        "{name}, {} threads, on a worker of the global pool: {global} allocations",
        rayon::current_num_threads()
    );
    // Not asserted (rayon's business, not ours): from a thread outside the pool, every parallel
    // product injects a job into rayon's queue, and crossbeam-deque's `Injector` allocates a
    // block per 63 injected jobs.
    let (outside, _) = measure(model);
    println!("{name}, called from outside the pool: {outside} allocations");
    assert_eq!(two, 0, "{name}: allocations inside a 2-thread pool");
    assert_eq!(global, 0, "{name}: allocations on the global pool");
}

/// Allocations while a server slot ([`gpt2q::slots::run_job`]) runs a job of `n` tokens on one
/// thread, with log-probabilities (3 alternatives), a stop string and context shifts, its output
/// taken by another thread as it comes (as an HTTP handler does).
fn slot_job_allocations(
    pool: &rayon::ThreadPool,
    session: &mut Session<'_>,
    cached: &mut Vec<u32>,
    n: usize,
) -> usize {
    let model = session.model();
    let spec = GenSpec {
        prompt: model.tokenizer.encode("It was a dark and stormy night"),
        sampler: SamplerConfig {
            seed: 5,
            ..SamplerConfig::default()
        },
        max_tokens: n,
        stops: vec!["never in this text \u{1}".into()],
        stop_token: None,
        logprobs: Some(3),
        prompt_logprobs: false,
        keep: 4,
    };
    let job = Job::new(spec);
    let (mut text, mut tokens) = job.buffers();
    // The taker stands for the HTTP handler: what it allocates to hold the output is not the
    // slot's (under emulation it finds more text at once and its buffers grow more often).
    let started = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            IGNORED.with(|i| i.set(true));
            started.wait();
            while job.take(&mut text, &mut tokens).is_none() {}
        });
        started.wait();
        ALLOCATIONS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        let finish = pool.install(|| run_job(session, &job, cached));
        COUNTING.store(false, Ordering::SeqCst);
        let finish = finish.unwrap();
        assert_eq!(finish.completion_tokens, n);
        job.finish(Ok(finish));
    });
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// A slot's job allocates a fixed amount to set up (the sampler, the history) and nothing per
/// token: 200 tokens cost what 20 do, context shifts included.
fn check_slot_job(model: &Model<'_>) {
    let config = SessionConfig::new(CTX).with_kv(KvType::F16);
    let mut session = Session::with_config(model, config).unwrap();
    let mut cached = Vec::with_capacity(CTX);
    let pool = pool(1);
    slot_job_allocations(pool, &mut session, &mut cached, 20);
    let short = slot_job_allocations(pool, &mut session, &mut cached, 20);
    let long = slot_job_allocations(pool, &mut session, &mut cached, GENERATED);
    println!("slot job: {short} allocations for 20 tokens, {long} for {GENERATED}");
    assert_eq!(long, short, "allocations per token in a slot's job");
}
