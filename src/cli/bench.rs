//! `gpt2q bench`: tokens per second, the roofline and the machine, as a table, JSON or CSV,
//! with what could have disturbed the measurement (other processes, steal, migrations, weights
//! not on huge pages). `--rounds` reruns it all in fresh processes (see [`rounds`]).

mod rounds;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use gpt2q::bench::{self, BandwidthProbe, CacheSpec, Measurement};
use gpt2q::kernels;
use gpt2q::kv_cache::KvType;
use gpt2q::machine::{self, HugePages, Machine};
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::quant::DType;
use gpt2q::synthetic::{self, Size};
use gpt2q::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model file to benchmark (default: the default model unless --synthetic is given).
    #[arg(short, long, conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Benchmark random weights in the real shapes of a GPT-2 size: 124M, 355M, 774M or 1.5B.
    #[arg(long)]
    synthetic: Option<String>,
    /// Weight formats for --synthetic, comma separated (q8, q4, f16, f32).
    #[arg(long, default_value = "q8,q4", value_delimiter = ',')]
    quant: Vec<String>,
    /// Thread counts to sweep, comma separated (default: every core).
    #[arg(short, long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Prompt tokens processed in one batch (pp).
    #[arg(short = 'p', long, default_value_t = 128)]
    n_prompt: usize,
    /// Decode steps from an empty cache, each computing all logits (tg).
    #[arg(short = 'n', long, default_value_t = 128)]
    n_gen: usize,
    /// Context size of the benchmark session (default: just enough for -p and -n). A larger
    /// context allocates a larger KV cache; pp and tg still start from an empty cache.
    #[arg(short, long)]
    ctx: Option<usize>,
    /// KV cache element type: f32, f16 or q8.
    #[arg(long, default_value = "f16")]
    kv: KvType,
    /// Counted repeats per configuration (after one warm-up).
    #[arg(short, long, default_value_t = 3)]
    repeat: usize,
    /// Output format: table, json or csv.
    #[arg(long, default_value = "table")]
    format: String,
    /// Only measure and print the memory bandwidth.
    #[arg(long)]
    membw: bool,
    /// Map the model file instead of reading it into memory on huge pages (as `run --mmap`).
    #[arg(long)]
    mmap: bool,
    /// Rerun the whole measurement in N fresh processes of this program with the same flags and
    /// report each process's medians and their spread: a speed that differs from one process to
    /// the next shows here, where one process's repeats would hide it.
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Pin pool thread i to CPU i, so the scheduler can neither stack two workers on one CPU
    /// nor move them (an experiment: on a busy machine a pinned thread cannot escape a busy CPU).
    #[arg(long)]
    pin: bool,
}

/// One row of the report.
struct Row {
    model: String,
    quant: String,
    load_ms: f64,
    weight_bytes: usize,
    membw_gbs: f64,
    /// How much of the model's memory is on huge pages, if the OS tells.
    huge: Option<HugePages>,
    /// Whether worker i was pinned to CPU i (`--pin`).
    pinned: bool,
    m: Measurement,
}

impl Row {
    fn decode(&self) -> f64 {
        bench::median(&self.m.decode_tok_s)
    }

    fn achieved_gbs(&self) -> f64 {
        self.weight_bytes as f64 * self.decode() / 1e9
    }

    /// The memory bandwidth decode had: the median of the probes before its repeats, else the
    /// one measured before the run.
    fn decode_membw(&self) -> f64 {
        match self.m.decode_membw_gbs.as_slice() {
            [] => self.membw_gbs,
            v => bench::median(v),
        }
    }

    /// The slowest probe before a decode repeat over the fastest (1 = the bandwidth held still).
    fn decode_membw_ratio(&self) -> Option<f64> {
        let v = &self.m.decode_membw_gbs;
        let (min, max) = (probe(v, Probe::Min)?, probe(v, Probe::Max)?);
        (v.len() > 1 && max > 0.0).then(|| min / max)
    }

    fn roofline_pct(&self) -> f64 {
        100.0 * self.achieved_gbs() / self.decode_membw().max(1e-9)
    }

    fn huge_pct(&self) -> Option<f64> {
        self.huge.map(|h| h.percent())
    }

    fn others_pct(&self) -> Option<f64> {
        self.m.activity.others_percent(machine::cores())
    }

    fn steal_pct(&self) -> Option<f64> {
        self.m.activity.steal_percent(machine::cores())
    }

    /// The slowest worker's speed relative to one thread alone.
    fn slowest_worker(&self) -> Option<f64> {
        self.m
            .worker_speed
            .iter()
            .map(|w| w.relative)
            .min_by(f64::total_cmp)
    }

    /// The CPUs the workers ended the speed probe on, space separated ("?" where unknown).
    fn worker_cpus(&self) -> String {
        let cpu = |w: &bench::WorkerSpeed| w.cpu.map_or("?".to_string(), |c| c.to_string());
        self.m
            .worker_speed
            .iter()
            .map(cpu)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A CPU that more than one worker ended the probe on.
    fn shared_cpu(&self) -> Option<usize> {
        let cpus: Vec<usize> = self.m.worker_speed.iter().filter_map(|w| w.cpu).collect();
        cpus.iter()
            .copied()
            .find(|c| cpus.iter().filter(|&d| d == c).count() > 1)
    }
}

/// Below this speed relative to one thread alone, a worker's CPU was shared or slower.
const SLOW_WORKER: f64 = 0.8;

/// Below this ratio of the slowest bandwidth probe to the fastest during one configuration's
/// decode repeats, the machine's memory bandwidth moved under the measurement.
const MEMBW_MOVED: f64 = 0.85;

/// Below this share of the weights on huge pages, decode reads them measurably slower.
const HUGE_PAGES_WARN_PCT: f64 = 90.0;
/// Above this share of the CPUs used by other processes (or stolen by the hypervisor) during a
/// measurement, its numbers are contended.
const CONTENDED_PCT: f64 = 10.0;

pub fn run(args: Args) -> Result<()> {
    if !matches!(args.format.as_str(), "table" | "json" | "csv") {
        return Err(Error::invalid(format!(
            "--format must be table, json or csv, got {:?}",
            args.format
        )));
    }
    let threads = thread_list(&args.threads)?;
    if let Some(n) = args.rounds {
        return rounds::run(&args, n);
    }
    let before = Machine::probe();
    let membw = bandwidths(&threads, args.pin)?;
    if args.membw {
        for (t, gbs) in &membw {
            outln!("memory bandwidth (streaming read, {t} threads): {gbs:.1} GB/s");
        }
        return Ok(());
    }
    let files = model_files(&args)?;
    let probe = BandwidthProbe::new(bench::probe_buffer_bytes());
    // Peak RSS from here on: the runs, not the bandwidth buffer or building synthetic files
    // (the probe's buffer is subtracted where it is reported).
    machine::reset_peak_rss();
    let mut rows = Vec::new();
    for (label, path, temp) in files {
        let result = bench_file(
            &args,
            (&label, &path),
            &threads,
            (&membw, &probe),
            &mut rows,
        );
        if temp {
            let _ = std::fs::remove_file(&path);
        }
        result?;
    }
    let after = Machine::probe();
    let peak_rss = machine::peak_rss_bytes().map(|b| b.saturating_sub(probe.byte_len()));
    match args.format.as_str() {
        "json" => print_json((&before, &after), peak_rss, &rows),
        "csv" => print_csv(&rows),
        _ => print_table((&before, &after), peak_rss, &rows),
    }
}

fn thread_list(requested: &[usize]) -> Result<Vec<usize>> {
    if requested.contains(&0) {
        return Err(Error::invalid("--threads values must be at least 1"));
    }
    if requested.is_empty() {
        return Ok(vec![machine::cores()]);
    }
    Ok(requested.to_vec())
}

fn pool(threads: usize, pin: bool) -> Result<rayon::ThreadPool> {
    let cores = machine::cores();
    let mut builder = rayon::ThreadPoolBuilder::new().num_threads(threads);
    if pin {
        builder = builder.start_handler(move |i| {
            if !machine::pin_current_thread(i % cores) {
                eprintln!("gpt2q bench: could not pin worker {i} to CPU {}", i % cores);
            }
        });
    }
    builder
        .build()
        .map_err(|e| Error::invalid(format!("cannot start {threads} threads: {e}")))
}

fn bandwidths(threads: &[usize], pin: bool) -> Result<Vec<(usize, f64)>> {
    let bytes = bench::bandwidth_buffer_bytes();
    threads
        .iter()
        .map(|&t| Ok((t, pool(t, pin)?.install(|| bench::memory_bandwidth(bytes)))))
        .collect()
}

/// (label, path, is a temporary synthetic file) for every model to run.
fn model_files(args: &Args) -> Result<Vec<(String, PathBuf, bool)>> {
    let Some(size) = &args.synthetic else {
        let path = args.model.clone().unwrap_or_else(super::default_model_path);
        return Ok(vec![(path.display().to_string(), path, false)]);
    };
    let size = Size::parse(size)?;
    args.quant
        .iter()
        .map(|q| {
            let dtype = match q.as_str() {
                "q8" => DType::Q8,
                "q4" => DType::Q4,
                "f16" => DType::F16,
                "f32" => DType::F32,
                _ => {
                    return Err(Error::invalid(format!(
                        "--quant {q:?}: expected q8, q4, f16 or f32"
                    )))
                }
            };
            let path = std::env::temp_dir().join(format!(
                "gpt2q-bench-{}-{q}-{}.g2q",
                size.name(),
                std::process::id()
            ));
            progress(&format!("building synthetic {} {q} model…", size.name()));
            synthetic::write(size, dtype, &path)?;
            Ok((format!("synthetic {}", size.name()), path, true))
        })
        .collect()
}

fn progress(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2Kbench: {msg}");
    }
}

fn bench_file(
    args: &Args,
    (label, path): (&str, &std::path::Path),
    threads: &[usize],
    (membw, probe): (&[(usize, f64)], &BandwidthProbe),
    rows: &mut Vec<Row>,
) -> Result<()> {
    let start = Instant::now();
    let file = ModelFile::open_or_load(path, args.mmap)?;
    let model = Model::load(&file, false)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let quant = model.meta("quant").unwrap_or("?").to_string();
    for (&t, &(_, gbs)) in threads.iter().zip(membw) {
        let m = pool(t, args.pin)?.install(|| {
            let cache = CacheSpec {
                ctx: args.ctx,
                kv: args.kv,
            };
            let counts = (args.n_prompt, args.n_gen, args.repeat);
            bench::measure(&model, counts, cache, Some(probe), |r| {
                progress(&format!("{label} {quant} t={t} repeat {r}/{}", args.repeat))
            })
        })?;
        rows.push(Row {
            model: label.to_string(),
            quant: quant.clone(),
            load_ms,
            weight_bytes: model.weight_bytes_per_token(),
            membw_gbs: gbs,
            huge: machine::huge_page_residency(file.bytes()),
            pinned: args.pin,
            m,
        });
    }
    progress_done();
    Ok(())
}

/// Clears the progress line.
fn progress_done() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

fn spread(v: &[f64]) -> f64 {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    if v.is_empty() {
        0.0
    } else {
        (hi - lo) / 2.0
    }
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn machine_line(m: &Machine) -> String {
    let mut s = format!(
        "{} ({} cores), kernels: {}",
        m.cpu,
        m.cores,
        kernels::path().name()
    );
    if !m.features.is_empty() {
        s += &format!(", features: {}", m.features.join(" "));
    }
    if let Some(b) = &m.board {
        s += &format!(", board: {b}");
    }
    if let Some(t) = m.temperature_c {
        s += &format!(", {t:.1} °C");
    }
    if let Some(g) = &m.governor {
        s += &format!(", governor: {g}");
    }
    if let Some(l) = m.load_average {
        s += &format!(", load average {l:.2}");
    }
    s
}

fn opt_fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.digits$}"))
}

fn pct(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.digits$}%"))
}

/// One line saying what could have disturbed a row's measurement.
fn conditions_line(r: &Row) -> String {
    let a = &r.m.activity;
    let count = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
    let workers: Vec<String> =
        r.m.worker_speed
            .iter()
            .map(|w| match w.cpu {
                Some(c) => format!("{:.2} (CPU {c})", w.relative),
                None => format!("{:.2}", w.relative),
            })
            .collect();
    format!(
        "{} {} t={}{}: weights {} on huge pages; during the repeats other processes used {} of the CPUs, the hypervisor stole {}, this process kept {} CPUs busy; {} involuntary context switches, {} migrations; workers' speed over one thread alone: {}; memory bandwidth before each decode repeat: {}",
        r.model,
        r.quant,
        r.m.threads,
        if r.pinned { " (workers pinned)" } else { "" },
        pct(r.huge_pct(), 0),
        pct(r.others_pct(), 0),
        pct(r.steal_pct(), 1),
        opt_fmt(a.own_cpus(), 2),
        count(a.involuntary_switches),
        count(a.migrations),
        workers.join(", "),
        probes_cell(&r.m.decode_membw_gbs),
    )
}

/// Which summary of a run's repeats [`probe`] gives.
#[derive(Clone, Copy)]
enum Probe {
    Median,
    Min,
    Max,
}

/// The median, smallest or largest of per-repeat values (`None` without any).
fn probe(v: &[f64], which: Probe) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some(match which {
        Probe::Median => bench::median(v),
        Probe::Min => v.iter().copied().fold(f64::INFINITY, f64::min),
        Probe::Max => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// "median (min – max) GB/s" of bandwidth probes, or "n/a".
fn probes_cell(v: &[f64]) -> String {
    match (
        probe(v, Probe::Median),
        probe(v, Probe::Min),
        probe(v, Probe::Max),
    ) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.1} ({lo:.1} – {hi:.1}) GB/s"),
        _ => "n/a".to_string(),
    }
}

/// Warnings for what makes a row's numbers not the machine's clean speed.
fn condition_warnings(r: &Row) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(p) = r.huge_pct().filter(|&p| p < HUGE_PAGES_WARN_PCT) {
        w.push(format!("WARNING: only {p:.0}% of the weights are on huge pages (t={}); decode reads them slower than it could", r.m.threads));
    }
    if let Some(c) = r.shared_cpu() {
        w.push(format!(
            "WARNING: two of the t={} workers were on CPU {c} at once; the scheduler stacked them",
            r.m.threads
        ));
    }
    if let Some(s) = r.slowest_worker().filter(|&s| s < SLOW_WORKER) {
        w.push(format!("WARNING: a t={} worker ran a fixed loop at {:.0}% of one thread's speed alone: its CPU was shared or ran slower (another process, or on a virtual machine a busy sibling on the host)", r.m.threads, 100.0 * s));
    }
    if let Some(ratio) = r.decode_membw_ratio().filter(|&q| q < MEMBW_MOVED) {
        let max = probe(&r.m.decode_membw_gbs, Probe::Max).unwrap_or(0.0);
        w.push(format!("WARNING: the memory bandwidth moved between {:.1} and {max:.1} GB/s during the t={} decode repeats (the machine's, not this program's: on a shared host other tenants' traffic or the hypervisor changes it); decode, which streams the weights, moves with it", max * ratio, r.m.threads));
    }
    let busy = r.others_pct().unwrap_or(0.0) + r.steal_pct().unwrap_or(0.0);
    if busy > CONTENDED_PCT {
        w.push(format!("WARNING: other work took {busy:.0}% of the CPUs during the t={} repeats; these numbers are contended", r.m.threads));
    }
    w
}

fn throttle_warning(before: &Machine, after: &Machine) -> Option<String> {
    let now = after.throttled? & 0x4 != 0;
    let new_since_boot =
        (after.throttled? & 0x4_0000) != 0 && (before.throttled.unwrap_or(0) & 0x4_0000) == 0;
    (now || new_since_boot).then(|| {
        format!("WARNING: the board throttled during the run (get_throttled=0x{:x}); these numbers are not its real speed", after.throttled.unwrap_or(0))
    })
}

fn print_table(
    (before, after): (&Machine, &Machine),
    peak_rss: Option<usize>,
    rows: &[Row],
) -> Result<()> {
    outln!("machine: {}", machine_line(before));
    if let (Some(a), Some(b)) = (before.temperature_c, after.temperature_c) {
        outln!("temperature: {a:.1} °C before, {b:.1} °C after");
    }
    if let Some(w) = throttle_warning(before, after) {
        outln!("{w}");
    }
    outln!();
    outln!("| model | quant | threads | pp tok/s | tg tok/s | ms/tok p50 / p90 / p99 | TTFT ms | GB/s (roofline) | load ms |");
    outln!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        outln!(
            "| {} | {} | {} | {:.1} ± {:.1} | {:.1} ± {:.1} | {:.2} / {:.2} / {:.2} | {:.1} | {:.1} of {:.1} ({:.0}%) | {:.0} |",
            r.model,
            r.quant,
            r.m.threads,
            bench::median(&r.m.prefill_tok_s),
            spread(&r.m.prefill_tok_s),
            r.decode(),
            spread(&r.m.decode_tok_s),
            bench::percentile(&r.m.step_ms, 50.0),
            bench::percentile(&r.m.step_ms, 90.0),
            bench::percentile(&r.m.step_ms, 99.0),
            bench::median(&r.m.ttft_ms),
            r.achieved_gbs(),
            r.decode_membw(),
            r.roofline_pct(),
            r.load_ms,
        );
    }
    outln!();
    for r in rows {
        outln!("{}", conditions_line(r));
    }
    for w in rows.iter().flat_map(condition_warnings) {
        outln!("{w}");
    }
    if let (Some(r), Some(rss)) = (rows.first(), peak_rss) {
        outln!();
        outln!(
            "pp = {} prompt tokens in one batch; tg = {} decode steps from an empty cache (all logits); ctx {}, KV {}; medians ± half-range over repeats",
            r.m.prompt_tokens, r.m.gen_tokens, r.m.ctx, r.m.kv
        );
        outln!(
            "weights streamed per token: {:.1} MiB; peak RSS: {:.1} MiB",
            mib(r.weight_bytes),
            mib(rss)
        );
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The values of `v`, comma separated (a JSON array's inside).
fn json_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn json_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("null".to_string(), |v| v.to_string())
}

fn print_json(
    (before, after): (&Machine, &Machine),
    peak_rss: Option<usize>,
    rows: &[Row],
) -> Result<()> {
    let results: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                concat!(
                    "{{\"model\":{},\"quant\":{},\"threads\":{},\"prompt_tokens\":{},\"gen_tokens\":{},\"ctx\":{},\"kv\":{},",
                    "\"prefill_tok_s\":{:.3},\"prefill_tok_s_spread\":{:.3},\"decode_tok_s\":{:.3},\"decode_tok_s_spread\":{:.3},",
                    "\"ms_per_token_p50\":{:.4},\"ms_per_token_p90\":{:.4},\"ms_per_token_p99\":{:.4},\"ttft_ms\":{:.3},",
                    "\"load_ms\":{:.3},\"weight_bytes_per_token\":{},\"achieved_gb_s\":{:.3},\"membw_gb_s\":{:.3},\"decode_membw_gb_s\":[{}],\"decode_tok_s_repeats\":[{}],\"roofline_pct\":{:.2},",
                    "\"huge_page_pct\":{},\"others_cpu_pct\":{},\"steal_pct\":{},\"own_cpus\":{},\"involuntary_switches\":{},\"migrations\":{},",
                    "\"pinned\":{},\"worker_speed\":[{}]}}"
                ),
                json_str(&r.model),
                json_str(&r.quant),
                r.m.threads,
                r.m.prompt_tokens,
                r.m.gen_tokens,
                r.m.ctx,
                json_str(r.m.kv.name()),
                bench::median(&r.m.prefill_tok_s),
                spread(&r.m.prefill_tok_s),
                r.decode(),
                spread(&r.m.decode_tok_s),
                bench::percentile(&r.m.step_ms, 50.0),
                bench::percentile(&r.m.step_ms, 90.0),
                bench::percentile(&r.m.step_ms, 99.0),
                bench::median(&r.m.ttft_ms),
                r.load_ms,
                r.weight_bytes,
                r.achieved_gbs(),
                r.membw_gbs,
                json_list(&r.m.decode_membw_gbs),
                json_list(&r.m.decode_tok_s),
                r.roofline_pct(),
                json_opt(r.huge_pct().map(|v| format!("{v:.2}"))),
                json_opt(r.others_pct().map(|v| format!("{v:.2}"))),
                json_opt(r.steal_pct().map(|v| format!("{v:.2}"))),
                json_opt(r.m.activity.own_cpus().map(|v| format!("{v:.3}"))),
                json_opt(r.m.activity.involuntary_switches),
                json_opt(r.m.activity.migrations),
                r.pinned,
                r.m.worker_speed
                    .iter()
                    .map(|w| format!(
                        "{{\"cpu\":{},\"relative\":{:.3}}}",
                        json_opt(w.cpu),
                        w.relative
                    ))
                    .collect::<Vec<_>>()
                    .join(","),
            )
        })
        .collect();
    outln!(
        "{{\"machine\":{{\"cpu\":{},\"cores\":{},\"kernels\":{},\"features\":[{}],\"board\":{},\"temperature_c_before\":{},\"temperature_c_after\":{},\"throttled_after\":{},\"load_average\":{},\"governor\":{},\"pid\":{}}},\"peak_rss_bytes\":{},\"results\":[{}]}}",
        json_str(&before.cpu),
        before.cores,
        json_str(kernels::path().name()),
        before.features.iter().map(|f| json_str(f)).collect::<Vec<_>>().join(","),
        before.board.as_deref().map_or("null".to_string(), json_str),
        json_opt(before.temperature_c),
        json_opt(after.temperature_c),
        json_opt(after.throttled),
        json_opt(before.load_average),
        before.governor.as_deref().map_or("null".to_string(), json_str),
        std::process::id(),
        json_opt(peak_rss),
        results.join(",")
    );
    Ok(())
}

fn print_csv(rows: &[Row]) -> Result<()> {
    outln!("{CSV_HEADER}");
    let pid = std::process::id();
    let load = machine::load_average();
    for r in rows {
        outln!(
            "{},{},{},{},{},{},{},{:.3},{:.3},{:.4},{:.4},{:.4},{:.3},{:.3},{:.3},{:.2},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.model.replace(',', " "),
            r.quant,
            r.m.threads,
            r.m.prompt_tokens,
            r.m.gen_tokens,
            r.m.ctx,
            r.m.kv,
            bench::median(&r.m.prefill_tok_s),
            r.decode(),
            bench::percentile(&r.m.step_ms, 50.0),
            bench::percentile(&r.m.step_ms, 90.0),
            bench::percentile(&r.m.step_ms, 99.0),
            bench::median(&r.m.ttft_ms),
            r.achieved_gbs(),
            r.membw_gbs,
            r.roofline_pct(),
            csv_opt(r.huge_pct()),
            csv_opt(r.others_pct()),
            csv_opt(r.steal_pct()),
            csv_opt(r.m.activity.own_cpus()),
            csv_opt(r.slowest_worker()),
            r.worker_cpus(),
            r.m.activity.involuntary_switches.map_or(String::new(), |v| v.to_string()),
            r.m.activity.migrations.map_or(String::new(), |v| v.to_string()),
            csv_opt(load),
            pid,
            csv_opt(probe(&r.m.decode_membw_gbs, Probe::Median)),
            csv_opt(probe(&r.m.decode_membw_gbs, Probe::Min)),
            csv_opt(probe(&r.m.decode_membw_gbs, Probe::Max)),
            csv_opt(probe(&r.m.decode_tok_s, Probe::Min)),
            csv_opt(probe(&r.m.decode_tok_s, Probe::Max)),
        );
    }
    Ok(())
}

/// The CSV columns, in order (`--rounds` reads its processes' rows by these names).
const CSV_HEADER: &str = "model,quant,threads,prompt_tokens,gen_tokens,ctx,kv,prefill_tok_s,decode_tok_s,ms_p50,ms_p90,ms_p99,ttft_ms,achieved_gb_s,membw_gb_s,roofline_pct,huge_page_pct,others_cpu_pct,steal_pct,own_cpus,slowest_worker,worker_cpus,involuntary_switches,migrations,load_average,pid,decode_membw_gb_s,decode_membw_min_gb_s,decode_membw_max_gb_s,decode_tok_s_min,decode_tok_s_max";

fn csv_opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.2}"))
}
