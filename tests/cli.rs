//! The `gpt2q` command as a user runs it: output streams, exit codes and error messages.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{converted, gpt2q_command, ids, reference};
use gpt2q_convert::convert::Quant;

fn gpt2q(args: &[&str]) -> Output {
    gpt2q_with_stdin(args, None)
}

fn gpt2q_with_stdin(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = gpt2q_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_fails(o: &Output, code: i32, needle: &str) {
    assert_eq!(o.status.code(), Some(code), "stderr: {}", stderr(o));
    assert!(
        stderr(o).contains(needle),
        "expected {needle:?} in: {}",
        stderr(o)
    );
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

#[test]
fn run_uses_the_default_model_and_keeps_stats_off_stdout() {
    let o = gpt2q(&["run", "-p", "Once upon a time", "-n", "8", "--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("Once upon a time"));
    assert!(!stdout(&o).contains("tok/s"));
    assert!(stderr(&o).contains("tok/s"));
}

#[test]
fn greedy_run_prints_the_reference_continuation() {
    let model = converted(Quant::F32);
    let p = &reference()["prompts"][2];
    let prompt = p["text"].as_str().unwrap();
    let o = gpt2q(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        prompt,
        "-n",
        "32",
        "--greedy",
        "--ignore-eos",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = p["greedy"]["full_text"].as_str().unwrap();
    assert_eq!(stdout(&o), format!("{expected}\n"));
}

#[test]
fn same_seed_same_text() {
    let run = |seed: &str| {
        stdout(&gpt2q(&[
            "run", "-p", "The sea", "-n", "24", "--seed", seed, "-q",
        ]))
    };
    assert_eq!(run("42"), run("42"));
    assert_ne!(run("42"), run("43"));
}

#[test]
fn a_mapped_model_generates_what_a_loaded_one_does() {
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-p", "The sea", "-n", "16", "--seed", "5", "-q"];
        args.extend_from_slice(extra);
        let o = gpt2q(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(run(&["--mmap"]), run(&[]));
}

#[test]
fn prompt_from_file_and_stdin() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prompt.txt");
    std::fs::write(&path, "It was a dark and stormy night").unwrap();
    let a = gpt2q(&[
        "run",
        "-f",
        path.to_str().unwrap(),
        "-n",
        "4",
        "--greedy",
        "-q",
    ]);
    let b = gpt2q_with_stdin(
        &["run", "-f", "-", "-n", "4", "--greedy", "-q"],
        Some(b"It was a dark and stormy night"),
    );
    assert!(a.status.success() && b.status.success());
    assert_eq!(stdout(&a), stdout(&b));
    assert!(stdout(&a).starts_with("It was a dark and stormy night"));
}

#[test]
fn invalid_utf8_prompt_names_the_offset() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-prompt.txt");
    std::fs::write(&path, b"abc\xffdef").unwrap();
    assert_fails(
        &gpt2q(&["run", "-f", path.to_str().unwrap()]),
        2,
        "offset 3",
    );
}

#[test]
fn empty_prompt_and_zero_tokens_are_fine() {
    let o = gpt2q(&["run", "-p", "", "-n", "5", "--seed", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = gpt2q(&["run", "-p", "Hello", "-n", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello\n");
}

#[test]
fn huge_token_counts_do_not_reserve_memory_up_front() {
    // 10^11 tokens once made `run` reserve 400 GB of history and abort. It now runs until the
    // context is full (--no-shift) like any other count.
    for n in ["100000000000", "18446744073709551615"] {
        let o = gpt2q(&[
            "run",
            "-p",
            "Hello",
            "-n",
            n,
            "--ctx",
            "8",
            "--no-shift",
            "--greedy",
        ]);
        assert!(o.status.success(), "-n {n}: {}", stderr(&o));
        assert!(stderr(&o).contains("context full"), "{}", stderr(&o));
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    assert_fails(&gpt2q(&["run", "-p", "x", "--top-p", "0"]), 2, "--top-p");
    assert_fails(&gpt2q(&["run", "-p", "x", "--top-p", "1.5"]), 2, "--top-p");
    assert_fails(
        &gpt2q(&["run", "-p", "x", "--temperature", "-1"]),
        2,
        "--temperature",
    );
    assert_fails(
        &gpt2q(&["run", "-p", "x", "--threads", "0"]),
        2,
        "--threads",
    );
    assert_fails(&gpt2q(&["run", "-p", "x", "--ctx", "100000"]), 2, "--ctx");
    assert_fails(&gpt2q(&["run", "-p", "x", "-n", "-3"]), 2, "-3");
    // A missing model file is an I/O error (4) whichever command names it.
    assert_fails(
        &gpt2q(&["run", "-m", "/no/such/model.g2q", "-p", "x"]),
        4,
        "does not exist",
    );
    assert_fails(
        &gpt2q(&["info", "/no/such/model.g2q"]),
        4,
        "/no/such/model.g2q",
    );
    assert_fails(
        &gpt2q(&["verify", "/no/such/model.g2q"]),
        4,
        "/no/such/model.g2q",
    );
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let long = "word ".repeat(50);
    assert_fails(
        &gpt2q(&["run", "-p", &long, "--ctx", "16"]),
        2,
        "more than the context of 16 (--truncate-prompt",
    );
}

#[test]
fn truncate_prompt_keeps_the_last_tokens() {
    let long = "word ".repeat(50);
    let o = gpt2q(&[
        "run",
        "-p",
        &long,
        "--ctx",
        "16",
        "--truncate-prompt",
        "-n",
        "2",
        "--greedy",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("dropped the first"), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(" word word") && out.len() < long.len(),
        "{out:?}"
    );
}

#[test]
fn lossy_prompt_replaces_invalid_bytes() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lossy-prompt.txt");
    std::fs::write(&path, b"abc\xffdef").unwrap();
    let p = path.to_str().unwrap();
    let o = gpt2q(&["run", "-f", p, "--lossy-prompt", "-n", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "abc\u{FFFD}def\n");
    assert_fails(&gpt2q(&["run", "-f", p, "-n", "0"]), 2, "--lossy-prompt");
}

#[test]
fn empty_prompt_starts_from_endoftext() {
    let empty = gpt2q(&["run", "-p", "", "-n", "6", "--greedy", "--ignore-eos"]);
    let eot = gpt2q(&[
        "run",
        "-p",
        "<|endoftext|>",
        "-n",
        "6",
        "--greedy",
        "--ignore-eos",
    ]);
    assert!(empty.status.success() && eot.status.success());
    let continuation = stdout(&eot)["<|endoftext|>".len()..].to_string();
    assert!(continuation.trim().len() > 2, "{continuation:?}");
    assert_eq!(stdout(&empty), continuation);
}

#[test]
fn damaged_model_is_exit_code_3() {
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gpt2-q8.g2q"))
            .unwrap();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("truncated.g2q");
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    assert_fails(
        &gpt2q(&["run", "-m", path.to_str().unwrap(), "-p", "x"]),
        3,
        "truncated",
    );
    assert_fails(&gpt2q(&["verify", path.to_str().unwrap()]), 3, "truncated");
}

#[test]
fn tokenize_prints_the_reference_ids() {
    let p = &reference()["prompts"][5];
    let o = gpt2q(&["tokenize", "--ids", p["text"].as_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected: Vec<String> = ids(&p["ids"]).iter().map(|i| i.to_string()).collect();
    assert_eq!(stdout(&o).trim_end(), expected.join(" "));
    let o = gpt2q(&["tokenize", "Hello world"]);
    assert!(stdout(&o).contains("\" world\""), "{}", stdout(&o));
}

#[test]
fn perplexity_prints_a_parsable_line() {
    let heldout = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heldout.txt");
    let o = gpt2q(&[
        "perplexity",
        "-f",
        heldout.to_str().unwrap(),
        "--ctx",
        "64",
        "--max-tokens",
        "640",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o)
        .lines()
        .find(|l| l.starts_with("perplexity: "))
        .unwrap()
        .to_string();
    let ppl: f64 = line["perplexity: ".len()..].parse().unwrap();
    assert!(ppl > 50.0 && ppl < 1000.0, "{ppl}");
    assert!(stdout(&o).contains("630 scored"), "{}", stdout(&o));
}

#[test]
fn info_and_verify_describe_the_default_model() {
    let o = gpt2q(&["info", "models/tiny-gpt2-q8.g2q", "--ctx", "256"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "4 layers, 256 wide, 4 heads",
        "q8",
        "KV cache",
        "converter:",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    let o = gpt2q(&["verify", "models/tiny-gpt2-q8.g2q"]);
    assert!(
        o.status.success() && stdout(&o).contains("OK"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn perplexity_compare_reports_kl_and_top1_agreement() {
    let base = converted(Quant::F32);
    let heldout = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heldout.txt");
    let o = gpt2q(&[
        "perplexity",
        "-f",
        heldout.to_str().unwrap(),
        "--ctx",
        "128",
        "--max-tokens",
        "1024",
        "--compare",
        base.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let value = |key: &str| -> f64 {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("{key} in {out}"));
        line[key.len() + 2..].parse().unwrap()
    };
    // The default model is q8: its distributions stay very close to f32.
    assert!(value("kl_mean") < 1e-4, "{out}");
    assert!(
        value("kl_p99") >= value("kl_mean") && value("kl_max") >= value("kl_p99"),
        "{out}"
    );
    assert!(value("top1_agreement") > 0.98, "{out}");
    assert!(
        (value("perplexity") / value("base_perplexity") - 1.0).abs() < 0.005,
        "{out}"
    );
}

#[test]
fn bench_json_parses_and_names_its_fields() {
    let o = gpt2q(&[
        "bench", "-p", "16", "-n", "8", "-r", "1", "-t", "1,2", "--format", "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert!(!v["machine"]["kernels"].as_str().unwrap().is_empty());
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, threads) in results.iter().zip([1, 2]) {
        assert_eq!(r["threads"], threads);
        for key in [
            "prefill_tok_s",
            "decode_tok_s",
            "ms_per_token_p99",
            "roofline_pct",
            "membw_gb_s",
        ] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key} in {r}");
        }
        assert_eq!(r["gen_tokens"], 8);
        // The memory bandwidth measured before each counted decode repeat (one here), beside
        // that repeat's speed.
        for key in ["decode_membw_gb_s", "decode_tok_s_repeats"] {
            let v = r[key].as_array().unwrap_or_else(|| panic!("{key} in {r}"));
            assert_eq!(v.len(), 1, "{key} in {r}");
            assert!(v[0].as_f64().unwrap() > 0.0, "{key} in {r}");
        }
        // What could have disturbed the run: numbers, or null where the OS does not tell.
        for key in [
            "huge_page_pct",
            "others_cpu_pct",
            "steal_pct",
            "involuntary_switches",
            "migrations",
        ] {
            assert!(r[key].is_number() || r[key].is_null(), "{key} in {r}");
        }
    }
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(v["machine"]["pid"].as_u64().is_some());
}

#[test]
fn bench_rounds_runs_fresh_processes_and_reports_each() {
    assert_fails(&gpt2q(&["bench", "--rounds", "0"]), 2, "at least 1");
    assert_fails(&gpt2q(&["bench", "--rounds", "2", "--membw"]), 2, "--membw");
    // Each round starts this binary again, which user-mode emulation cannot do without
    // binfmt_misc; the code is the same on every target.
    if common::emulated() {
        return;
    }
    let small = ["-p", "4", "-n", "4", "-r", "1", "-t", "1,2"];
    let o = gpt2q(&[&["bench", "--rounds", "3", "--format", "json"], &small[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(v["rounds"], 3);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "one result per thread count");
    let mut pids = Vec::new();
    for (r, threads) in results.iter().zip([1, 2]) {
        assert_eq!(r["threads"], threads);
        let processes = r["processes"].as_array().unwrap();
        assert_eq!(processes.len(), 3, "{r}");
        let decode: Vec<f64> = processes
            .iter()
            .map(|p| p["decode_tok_s"].as_f64().unwrap())
            .collect();
        assert!(decode.iter().all(|&d| d > 0.0), "{r}");
        for p in processes {
            assert!(p["decode_membw_gb_s"].as_f64().unwrap() > 0.0, "{p}");
        }
        let fastest = decode.iter().copied().fold(0.0, f64::max);
        let slowest = decode.iter().copied().fold(f64::MAX, f64::min);
        assert_eq!(r["decode_tok_s"]["max"].as_f64().unwrap(), fastest);
        assert_eq!(r["decode_tok_s"]["min"].as_f64().unwrap(), slowest);
        let ratio = r["decode_slowest_over_fastest"].as_f64().unwrap();
        assert!((ratio - slowest / fastest).abs() < 1e-3, "{r}");
        let rounds: Vec<u64> = processes
            .iter()
            .map(|p| p["round"].as_u64().unwrap())
            .collect();
        assert_eq!(rounds, [1, 2, 3]);
        pids.push(
            processes
                .iter()
                .map(|p| p["pid"].as_u64().unwrap())
                .collect::<Vec<_>>(),
        );
    }
    // Both thread counts of a round come from one process; the three rounds from three others,
    // none of them the process that reports.
    assert_eq!(pids[0], pids[1]);
    let mut distinct = pids[0].clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    assert!(!distinct.contains(&v["machine"]["pid"].as_u64().unwrap()));

    let o = gpt2q(&[&["bench", "--rounds", "2"], &small[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("2 fresh processes"), "{out}");
    assert!(out.contains("| round | pid |"), "{out}");
    for round in ["| 1 |", "| 2 |"] {
        let rows = out.lines().filter(|l| l.starts_with(round)).count();
        assert_eq!(rows, 2, "{round} once per thread count: {out}");
    }
    let o = gpt2q(&[&["bench", "--rounds", "2", "--format", "csv"], &small[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("round,model,quant,threads,"), "{out}");
    assert_eq!(out.lines().count(), 1 + 2 * 2, "{out}");
}

#[test]
fn bench_synthetic_table_has_a_row_per_quant() {
    let o = gpt2q(&[
        "bench",
        "--synthetic",
        "124M",
        "--quant",
        "q8,q4",
        "-p",
        "4",
        "-n",
        "2",
        "-r",
        "1",
        "-t",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("| synthetic 124M | q8 | 1 |") && out.contains("| synthetic 124M | q4 | 1 |"),
        "{out}"
    );
    assert_fails(
        &gpt2q(&["bench", "--synthetic", "7B"]),
        2,
        "unknown model size",
    );
}

#[test]
fn run_task_presets_work_end_to_end() {
    let o = gpt2q(&[
        "run",
        "--task",
        "summarize",
        "-p",
        "The city council met on Monday to discuss the new park. Residents asked for more trees.",
        "-n",
        "8",
        "--seed",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Only the answer is printed, not the few-shot scaffolding.
    assert!(!stdout(&o).contains("TL;DR:"), "{}", stdout(&o));
    let o = gpt2q(&["run", "--task", "qa", "-p", "What is the capital of Italy?"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let answer = stdout(&o);
    assert!(!answer.contains("Q:"), "{answer}");
    assert_eq!(answer.matches('\n').count(), 1, "one line: {answer:?}");
    assert_fails(
        &gpt2q(&["run", "--task", "poem", "-p", "x"]),
        2,
        "unknown task",
    );
    assert_fails(
        &gpt2q(&["run", "--stop", r"\q", "-p", "x"]),
        2,
        "unknown escape",
    );
}

#[test]
fn bench_ctx_and_kv_are_reported() {
    let o = gpt2q(&[
        "bench", "-p", "8", "-n", "8", "-r", "1", "-t", "1", "--ctx", "64", "--kv", "q8",
        "--format", "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let r = &v["results"][0];
    assert_eq!(
        (r["ctx"].as_u64(), r["kv"].as_str()),
        (Some(64), Some("q8"))
    );
    let o = gpt2q(&[
        "bench", "-p", "8", "-n", "8", "-r", "1", "-t", "1", "--format", "csv",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(",8,8,8,f16,"), "{}", stdout(&o));
    assert_fails(
        &gpt2q(&["bench", "-p", "8", "--ctx", "4"]),
        2,
        "smaller than",
    );
    assert_fails(&gpt2q(&["bench", "--kv", "f8"]), 2, "f8");
}

/// Runs `args` with stdout a pipe whose reader is gone before the command writes anything.
fn gpt2q_into_closed_pipe(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = gpt2q_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut pipe = child.stdin.take().unwrap();
    // The command may end (or stop reading) before taking all of its input.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_is_a_quiet_normal_end_for_every_command() {
    let heldout = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heldout.txt");
    let heldout = heldout.to_str().unwrap();
    let model = "models/tiny-gpt2-q8.g2q";
    let commands: [(&[&str], &[u8]); 6] = [
        (&["run", "-p", "Hello", "-n", "64", "--ignore-eos"], b""),
        (&["tokenize", "Hello, world"], b""),
        (&["info", model], b""),
        (&["verify", model], b""),
        (&["chat", "-n", "8"], b"Hello\nHow are you?\n"),
        (
            &[
                "perplexity",
                "-f",
                heldout,
                "--ctx",
                "64",
                "--max-tokens",
                "128",
            ],
            b"",
        ),
    ];
    for (args, stdin) in commands {
        let o = gpt2q_into_closed_pipe(args, stdin);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            !err.contains("Broken pipe") && !err.contains("error") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn run_stops_quietly_when_its_reader_leaves_midway() {
    // As `gpt2q run ... | head -c5`: read a little, then close the pipe while it generates.
    let mut child = gpt2q_command()
        .args(["run", "-p", "Hello", "-n", "100000", "--ignore-eos", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 5];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_eq!(&first, b"Hello");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}
