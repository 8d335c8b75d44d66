//! Memory budget: KV cache element types (accuracy), context shifting (long generations in a
//! small, fixed context), the memory plan and `--mem-limit`, and peak RSS of the real binary.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::gpt2q_command;

use gpt2q::generate::{generate_with_policy, ContextPolicy, StopReason, StopRules};
use gpt2q::kv_cache::KvType;
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::perplexity::perplexity;
use gpt2q::sampler::{Sampler, SamplerConfig};
use gpt2q::session::{MemoryPlan, Session, SessionConfig};

fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gpt2-q8.g2q")
}

fn heldout_ids(model: &Model<'_>, n: usize) -> Vec<u32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heldout.txt");
    let mut ids = model
        .tokenizer
        .encode(&std::fs::read_to_string(path).unwrap());
    ids.truncate(n);
    ids
}

/// Held-out perplexity of the default model in windows of 256 over the first `tokens` tokens,
/// for each KV type.
fn kv_perplexities(tokens: usize) -> Vec<(KvType, f64)> {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let ids = heldout_ids(&model, tokens);
    let window = 256;
    KvType::ALL
        .iter()
        .map(|&kv| {
            let config = SessionConfig {
                all_logits: true,
                ..SessionConfig::new(window)
            }
            .with_kv(kv);
            let mut session = Session::with_config(&model, config).unwrap();
            let report = perplexity(&mut session, &ids, window, window).unwrap();
            println!(
                "KV {kv}: perplexity {:.4} over {} scored tokens",
                report.perplexity(),
                report.scored_tokens
            );
            (kv, report.perplexity())
        })
        .collect()
}

fn check_kv_accuracy(ppl: &[(KvType, f64)]) {
    let f32_ppl = ppl[0].1;
    for &(kv, p) in &ppl[1..] {
        let rel = (p / f32_ppl - 1.0) * 100.0;
        println!("KV {kv}: {rel:+.4}% vs f32");
        let limit = match kv {
            KvType::F16 => 0.1,
            _ => 1.0,
        };
        assert!(rel.abs() <= limit, "KV {kv}: {rel:+.4}% vs f32");
    }
}

#[test]
fn kv_types_keep_perplexity_close_to_f32() {
    // 4 windows here (1 under emulation); the full measurement (16,384 tokens) is the ignored
    // test below.
    let tokens = if common::emulated() { 256 } else { 1024 };
    check_kv_accuracy(&kv_perplexities(tokens));
}

/// The measurement behind the f16 default: `cargo test --release --test memory -- --ignored`.
#[test]
#[ignore = "slow: 3 × 16,384 tokens"]
fn kv_types_perplexity_full_heldout() {
    check_kv_accuracy(&kv_perplexities(16384));
}

fn run_generation(
    model: &Model<'_>,
    kv: KvType,
    ctx: usize,
    policy: ContextPolicy,
    config: SamplerConfig,
    n: usize,
) -> (Vec<u32>, StopReason, usize) {
    let mut session = Session::with_config(model, SessionConfig::new(ctx).with_kv(kv)).unwrap();
    let memory = session.memory_bytes();
    let mut sampler = Sampler::new(config, model.hparams.n_vocab as usize).unwrap();
    let prompt = model
        .tokenizer
        .encode("It was a dark and stormy night, and");
    let rules = StopRules {
        max_new_tokens: n,
        stop_token: None,
    };
    let mut history = Vec::with_capacity(prompt.len() + n);
    let capacity = history.capacity();
    let mut got = Vec::new();
    let stats = generate_with_policy(
        &mut session,
        &mut sampler,
        &prompt,
        rules,
        policy,
        &mut history,
        |t| {
            got.push(t);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(session.memory_bytes(), memory, "the session's memory grew");
    assert_eq!(history.capacity(), capacity, "the history was reallocated");
    assert!(session.pos() <= ctx);
    assert_eq!(&history[prompt.len()..], &got[..]);
    (got, stats.stop, stats.context_shifts)
}

#[test]
fn a_thousand_tokens_in_a_context_of_128_shift_deterministically() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let sampled = SamplerConfig {
        seed: 42,
        ..SamplerConfig::default()
    };
    let policy = ContextPolicy::Shift { keep: 4 };
    // Under emulation 300 tokens (still several shifts) keep the suite's time in bounds.
    let n = if common::emulated() { 300 } else { 1000 };
    let (a, stop, shifts) = run_generation(&model, KvType::F16, 128, policy, sampled.clone(), n);
    assert_eq!(a.len(), n);
    assert_eq!(stop, StopReason::Length);
    // The context holds 4 + 124 tokens; each shift drops 62, so one every 62 tokens.
    assert!(shifts >= (n - 128) / 62, "{shifts} shifts");
    let (b, _, _) = run_generation(&model, KvType::F16, 128, policy, sampled, n);
    assert_eq!(a, b, "the same seed gave different tokens");
}

#[test]
fn shifting_stops_only_when_impossible() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let greedy = SamplerConfig::greedy();
    let p = model
        .tokenizer
        .encode("It was a dark and stormy night, and")
        .len();
    let (got, stop, _) = run_generation(
        &model,
        KvType::F32,
        32,
        ContextPolicy::Stop,
        greedy.clone(),
        100,
    );
    assert_eq!(stop, StopReason::ContextFull);
    // 32 − p tokens fit after the prompt, plus one sampled but never run.
    assert_eq!(got.len(), 32 - p + 1);
    let (got, stop, _) = run_generation(
        &model,
        KvType::F32,
        32,
        ContextPolicy::Shift { keep: 31 },
        greedy,
        100,
    );
    assert_eq!(stop, StopReason::ContextFull);
    assert_eq!(got.len(), 32 - p + 1);
}

/// After a shift the session must hold exactly what a fresh session would after running the
/// surviving tokens: `history[..keep] ++ history[keep + discard..]`.
#[test]
fn a_shift_matches_a_fresh_run_of_the_kept_tokens() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let (ctx, keep) = (32, 5);
    let discard = (ctx - keep) / 2;
    let prompt_len = model
        .tokenizer
        .encode("It was a dark and stormy night, and")
        .len();
    // Tokens until the cache is full, plus the one sampled then, plus one after the shift.
    let n = ctx - prompt_len + 2;
    let (got, stop, shifts) = run_generation(
        &model,
        KvType::F32,
        ctx,
        ContextPolicy::Shift { keep },
        SamplerConfig::greedy(),
        n,
    );
    assert_eq!((stop, shifts, got.len()), (StopReason::Length, 1, n));
    let mut history = model
        .tokenizer
        .encode("It was a dark and stormy night, and");
    history.extend_from_slice(&got);
    let (&last, before) = history.split_last().unwrap();
    let mut kept = before[..keep].to_vec();
    kept.extend_from_slice(&before[keep + discard..]);
    let mut fresh =
        Session::with_config(&model, SessionConfig::new(ctx).with_kv(KvType::F32)).unwrap();
    let logits = fresh.prefill(&kept).unwrap();
    let argmax = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
        .unwrap() as u32;
    assert_eq!(last, argmax);
}

#[test]
fn the_plan_is_what_a_session_allocates() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let weights = file.bytes().len();
    for kv in KvType::ALL {
        for ctx in [1, 100, 512] {
            for all_logits in [false, true] {
                let config = SessionConfig {
                    all_logits,
                    ..SessionConfig::new(ctx)
                }
                .with_kv(kv);
                let plan = MemoryPlan::new(&model.hparams, weights, &config).unwrap();
                let session = Session::with_config(&model, config).unwrap();
                assert_eq!(
                    plan.kv_cache + plan.scratch,
                    session.memory_bytes(),
                    "{config:?}"
                );
            }
        }
    }
    let kv_bytes = |kv| {
        MemoryPlan::new(
            &model.hparams,
            weights,
            &SessionConfig::new(512).with_kv(kv),
        )
        .unwrap()
        .kv_cache
    };
    // 4 layers × 4 heads × 512 positions × 64 × (k, v).
    assert_eq!(kv_bytes(KvType::F32), 4 * 4 * 512 * 64 * 2 * 4);
    assert_eq!(kv_bytes(KvType::F16), kv_bytes(KvType::F32) / 2);
    assert_eq!(kv_bytes(KvType::Q8), 4 * 4 * 512 * (64 + 4) * 2);
    // The largest context within a limit fits, one more does not.
    let limit = weights + (3 << 20);
    let ctx = MemoryPlan::max_ctx_within(&model.hparams, weights, KvType::F32, limit).unwrap();
    let total = |c| {
        MemoryPlan::new(
            &model.hparams,
            weights,
            &SessionConfig::new(c).with_kv(KvType::F32),
        )
        .unwrap()
        .total()
    };
    assert!(ctx < 512 && total(ctx) <= limit && total(ctx + 1) > limit);
    assert_eq!(
        MemoryPlan::max_ctx_within(&model.hparams, weights, KvType::F32, weights),
        None
    );
}

fn gpt2q(args: &[&str]) -> Output {
    gpt2q_command().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn model_mib() -> f64 {
    std::fs::metadata(default_model()).unwrap().len() as f64 / (1024.0 * 1024.0)
}

/// `--mem-limit` a little above the mapped weights, as a string in KiB.
fn limit_above_weights(extra_kib: u64) -> String {
    let bytes = std::fs::metadata(default_model()).unwrap().len();
    format!("{}K", bytes / 1024 + extra_kib)
}

#[test]
fn info_prints_the_plan_for_a_kv_type() {
    let o = gpt2q(&[
        "info",
        "models/tiny-gpt2-q8.g2q",
        "--ctx",
        "256",
        "--kv",
        "q8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "at ctx 256, KV cache q8",
        "weights",
        "KV cache",
        "scratch",
        "total",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    // 4 × 4 × 256 × 68 × 2 bytes = 0.5 MiB.
    assert!(out.contains("KV cache         0.5 MiB"), "{out}");
    assert!(model_mib() > 1.0);
}

#[test]
fn default_ctx_is_capped_to_the_mem_limit() {
    let limit = limit_above_weights(2 << 10);
    let o = gpt2q(&["info", "models/tiny-gpt2-q8.g2q", "--mem-limit", &limit]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let ctx: usize = out
        .split("at ctx ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ctx in:\n{out}"));
    assert!(ctx > 1 && ctx < 512, "ctx {ctx}");
    // The same cap applies to run.
    let o = gpt2q(&[
        "run",
        "-p",
        "Hello",
        "-n",
        "4",
        "--seed",
        "1",
        "--mem-limit",
        &limit,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("ctx {ctx},")),
        "{}",
        stderr(&o)
    );
    // Without a limit the default is the model's maximum.
    let o = gpt2q(&["run", "-p", "Hello", "-n", "1", "--seed", "1"]);
    assert!(stderr(&o).contains("ctx 512,"), "{}", stderr(&o));
}

#[test]
fn run_refuses_a_plan_over_the_mem_limit_and_says_what_fits() {
    let limit = limit_above_weights(2 << 10);
    let o = gpt2q(&[
        "run",
        "-p",
        "Hello",
        "--ctx",
        "512",
        "--kv",
        "f32",
        "--mem-limit",
        &limit,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("over --mem-limit"), "{err}");
    assert!(
        err.contains("--kv q8") && err.contains("would fit"),
        "{err}"
    );
    assert!(stdout(&o).is_empty());
    let o = gpt2q(&["run", "-p", "Hello", "--mem-limit", "4M"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nothing fits"), "{}", stderr(&o));
    let o = gpt2q(&[
        "info",
        "models/tiny-gpt2-q8.g2q",
        "--ctx",
        "512",
        "--mem-limit",
        "4M",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = gpt2q(&["run", "-p", "Hello", "--mem-limit", "lots"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn run_shifts_the_context_and_reports_it() {
    let o = gpt2q(&[
        "run",
        "-p",
        "Hello",
        "-n",
        "200",
        "--ctx",
        "64",
        "--keep",
        "2",
        "--seed",
        "7",
        "--ignore-eos",
        "--kv",
        "q8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("context shifts"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("generated 200 tokens"),
        "{}",
        stderr(&o)
    );
    let o = gpt2q(&[
        "run",
        "-p",
        "Hello",
        "-n",
        "200",
        "--ctx",
        "64",
        "--seed",
        "7",
        "--ignore-eos",
        "--no-shift",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stopped at context full"),
        "{}",
        stderr(&o)
    );
}

/// Peak RSS of a real run stays within the plan: mapped file + KV cache + scratch, plus 16 MB
/// for the binary, the parsed tokenizer, thread stacks and the allocator.
#[cfg(target_os = "linux")]
#[test]
fn peak_rss_stays_within_the_plan() {
    if common::emulated() {
        println!("skipped: under emulation the RSS is the emulator's");
        return;
    }
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let ctx = 512;
    let plan = MemoryPlan::new(
        &model.hparams,
        file.bytes().len(),
        &SessionConfig::new(ctx).with_kv(KvType::F16),
    )
    .unwrap();
    let o = gpt2q(&[
        "run",
        "-p",
        "It was a dark and stormy night, and",
        "-n",
        "600",
        "--ctx",
        "512",
        "--kv",
        "f16",
        "--seed",
        "5",
        "--ignore-eos",
        "--print-peak-rss",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let Some(rss) = err
        .lines()
        .find_map(|l| l.strip_prefix("gpt2q: peak RSS "))
        .and_then(|s| s.strip_suffix(" bytes"))
        .and_then(|s| s.parse::<usize>().ok())
    else {
        println!("skipped: the OS does not report peak RSS ({err})");
        return;
    };
    let budget = plan.total() + (16 << 20);
    println!(
        "peak RSS {:.1} MiB; plan {:.1} MiB; budget {:.1} MiB",
        rss as f64 / 1048576.0,
        plan.total() as f64 / 1048576.0,
        budget as f64 / 1048576.0
    );
    assert!(rss <= budget, "peak RSS {rss} > budget {budget}");
}

/// Two conversations over one loaded model: the weights are shared, each session has its own
/// cache, and interleaving them changes nothing.
#[test]
fn two_sessions_share_one_model_independently() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let a_ids = model.tokenizer.encode("The cat sat on the mat and");
    let b_ids = model.tokenizer.encode("In 1905, Einstein published");
    let alone = |ids: &[u32]| {
        let mut s = Session::with_config(&model, SessionConfig::new(64)).unwrap();
        ids.iter()
            .map(|&t| s.forward(t).unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    let (want_a, want_b) = (alone(&a_ids), alone(&b_ids));
    let mut a = Session::with_config(&model, SessionConfig::new(64)).unwrap();
    let mut b = Session::with_config(&model, SessionConfig::new(64)).unwrap();
    for i in 0..a_ids.len().max(b_ids.len()) {
        if let Some(&t) = a_ids.get(i) {
            assert_eq!(
                a.forward(t).unwrap(),
                &want_a[i][..],
                "session a, token {i}"
            );
        }
        if let Some(&t) = b_ids.get(i) {
            assert_eq!(
                b.forward(t).unwrap(),
                &want_b[i][..],
                "session b, token {i}"
            );
        }
    }
}
