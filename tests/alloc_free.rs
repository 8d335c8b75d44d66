//! The per-token path allocates nothing: a counting global allocator (its own test binary, since
//! the allocator is per binary) watches every thread while the default model generates 200
//! tokens in a small context, context shifts included. The loop must run on a rayon worker
//! thread (inside `ThreadPool::install` or `rayon::scope`), as `gpt2q run` does: called from
//! outside the pool, rayon's job injection allocates (see the last measurement below).
//!
//! The only `unsafe` outside the kernels and mmap code is here: a `GlobalAlloc` impl cannot be
//! written without it. It forwards every call to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use gpt2q::generate::{generate_with_policy, ContextPolicy, GenerationStats, StopRules};
use gpt2q::kv_cache::KvType;
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::sampler::{Sampler, SamplerConfig};
use gpt2q::session::{Session, SessionConfig};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn note() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments; counting has no effect
// on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

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

/// Warm-up run (first-use set-up: rayon's registry and thread-locals, kernel detection), then
/// the counted one.
fn measure(model: &Model<'_>) -> (usize, GenerationStats) {
    let mut run = Run::new(model);
    run.count();
    let (allocs, stats) = run.count();
    assert_eq!(stats.generated_tokens, GENERATED);
    assert!(stats.context_shifts >= 1, "no context shift happened");
    (allocs, stats)
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// One test function, so no other test's thread allocates while counting.
#[test]
fn generation_allocates_nothing_per_token() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gpt2-q8.g2q");
    let file = ModelFile::open(&path).unwrap();
    let model = Model::load(&file, false).unwrap();

    let (one, stats) = pool(1).install(|| measure(&model));
    println!(
        "1 thread, inside the pool: {one} allocations ({} shifts)",
        stats.context_shifts
    );
    assert_eq!(one, 0, "allocations with one thread");
    if std::env::var_os("GPT2Q_TEST_RUNNER").is_some() {
        // Under qemu a second worker may first steal work (and register with crossbeam's epoch
        // collector, which allocates once per thread) only during the counted run; the
        // multi-threaded cases are proven natively.
        println!("emulated: multi-threaded cases skipped");
        return;
    }
    let (two, _) = pool(2).install(|| measure(&model));
    println!("2 threads, inside the pool: {two} allocations");
    // What `gpt2q run` does: the loop runs on a worker of rayon's global pool (`rayon::scope`).
    let (global, _) = rayon::scope(|_| measure(&model));
    println!(
        "{} threads, on a worker of the global pool: {global} allocations",
        rayon::current_num_threads()
    );
    // Not asserted (rayon's business, not ours): from a thread outside the pool, every parallel
    // product injects a job into rayon's queue, and crossbeam-deque's `Injector` allocates a
    // block per 63 injected jobs.
    let (outside, _) = measure(&model);
    println!("called from outside the pool: {outside} allocations");
    assert_eq!(two, 0, "allocations inside a 2-thread pool");
    assert_eq!(global, 0, "allocations on the global pool");
}
