//! `gpt2q bench --rounds N`: the whole measurement in N fresh processes, one after another, each
//! this same program with the same flags (and CSV output), and a report of each process's
//! medians and their spread. Within one process the repeats can agree closely while the next
//! process runs at another speed (which CPUs the threads got, what else ran, the memory
//! bandwidth the host gave the machine at the time); only fresh processes show that. Each
//! process measures the bandwidth before each decode repeat, and the report says when decode
//! followed it from one process to the next.

use std::ffi::OsString;
use std::process::{Command, Stdio};

use gpt2q::bench;
use gpt2q::machine::Machine;
use gpt2q::{Error, Result};

use super::{json_opt, json_str, machine_line, progress, Args, CONTENDED_PCT, CSV_HEADER};

/// Below this ratio of the slowest process's decode speed to the fastest's, the report warns.
const SPREAD_WARN_RATIO: f64 = 0.9;
/// At or above this correlation between the processes' decode speeds and the bandwidth each
/// measured during its decode repeats, decode followed the machine's bandwidth.
const FOLLOWS_BANDWIDTH: f64 = 0.7;
/// How much narrower than the spread between processes the repeats within one may be and still
/// count as spreading as widely.
const WITHIN_MARGIN: f64 = 0.05;

/// One configuration's medians as one process measured them.
#[derive(Clone, Debug, PartialEq)]
struct ProcessRow {
    round: usize,
    pid: u32,
    model: String,
    quant: String,
    threads: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    membw_gb_s: f64,
    /// Median, slowest and fastest bandwidth probe before the process's decode repeats.
    decode_membw: Option<(f64, f64, f64)>,
    /// The slowest and fastest of the process's decode repeats.
    decode_range: Option<(f64, f64)>,
    huge_page_pct: Option<f64>,
    others_cpu_pct: Option<f64>,
    steal_pct: Option<f64>,
    own_cpus: Option<f64>,
    slowest_worker: Option<f64>,
    /// The CPUs the workers ended the speed probe on ("0 1"; one CPU twice: stacked).
    worker_cpus: String,
    involuntary_switches: Option<u64>,
    migrations: Option<u64>,
    load_average: Option<f64>,
    /// The row as the process printed it.
    csv: String,
}

/// Runs `rounds` processes and prints the report in `args.format`.
pub fn run(args: &Args, rounds: usize) -> Result<()> {
    if rounds == 0 {
        return Err(Error::invalid("--rounds must be at least 1"));
    }
    if args.membw {
        return Err(Error::invalid(
            "--rounds reruns the pp/tg measurement; it does not combine with --membw",
        ));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("<current executable>", e))?;
    let child_args = child_args(args);
    let machine = Machine::probe();
    let mut rows = Vec::new();
    for round in 1..=rounds {
        progress(&format!("round {round}/{rounds}"));
        let out = Command::new(&exe)
            .args(&child_args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| Error::io(&exe, e))?;
        if !out.status.success() {
            return Err(Error::invalid(format!(
                "round {round}: `{} {}` failed ({})",
                exe.display(),
                shell_words(&child_args),
                out.status
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        rows.extend(parse_csv(&text, round)?);
    }
    super::progress_done();
    let command = format!("gpt2q {}", shell_words(&child_args));
    match args.format.as_str() {
        "json" => print_json(&machine, rounds, &command, &rows),
        "csv" => print_csv(&rows),
        _ => print_table(&machine, rounds, &command, &rows),
    }
}

/// The flags that rerun `args`' measurement once, with CSV output for this process to read.
fn child_args(args: &Args) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["bench".into()];
    let mut flag = |name: &str, value: String| {
        v.push(name.into());
        v.push(value.into());
    };
    if let Some(size) = &args.synthetic {
        flag("--synthetic", size.clone());
        flag("--quant", args.quant.join(","));
    }
    let list = |xs: &[usize]| {
        xs.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if !args.threads.is_empty() {
        flag("--threads", list(&args.threads));
    }
    flag("--n-prompt", args.n_prompt.to_string());
    flag("--n-gen", args.n_gen.to_string());
    if let Some(ctx) = args.ctx {
        flag("--ctx", ctx.to_string());
    }
    flag("--kv", args.kv.name().to_string());
    flag("--repeat", args.repeat.to_string());
    flag("--format", "csv".to_string());
    if let Some(model) = &args.model {
        v.push("--model".into());
        v.push(model.clone().into_os_string());
    }
    if args.mmap {
        v.push("--mmap".into());
    }
    if args.pin {
        v.push("--pin".into());
    }
    v
}

fn shell_words(args: &[OsString]) -> String {
    args.iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
                format!("'{}'", s.replace('\'', r"'\''"))
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rows of one process's CSV report, read by column name.
fn parse_csv(text: &str, round: usize) -> Result<Vec<ProcessRow>> {
    let bad = |what: &str| {
        Error::invalid(format!(
            "round {round}: unexpected `gpt2q bench` output ({what}): {text:?}"
        ))
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| bad("empty"))?
        .split(',')
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(bad("a row's length differs from the header's"));
        }
        let text_of = |name: &str| column(name).map(|i| cells[i]).ok_or_else(|| bad(name));
        let num = |name: &str| -> Result<f64> { text_of(name)?.parse().map_err(|_| bad(name)) };
        let opt = |name: &str| column(name).and_then(|i| cells[i].parse::<f64>().ok());
        let count = |name: &str| column(name).and_then(|i| cells[i].parse::<u64>().ok());
        rows.push(ProcessRow {
            round,
            pid: text_of("pid")?.parse().map_err(|_| bad("pid"))?,
            model: text_of("model")?.to_string(),
            quant: text_of("quant")?.to_string(),
            threads: text_of("threads")?.parse().map_err(|_| bad("threads"))?,
            prefill_tok_s: num("prefill_tok_s")?,
            decode_tok_s: num("decode_tok_s")?,
            membw_gb_s: num("membw_gb_s")?,
            decode_membw: opt("decode_membw_gb_s")
                .zip(opt("decode_membw_min_gb_s"))
                .zip(opt("decode_membw_max_gb_s"))
                .map(|((m, lo), hi)| (m, lo, hi)),
            decode_range: opt("decode_tok_s_min").zip(opt("decode_tok_s_max")),
            huge_page_pct: opt("huge_page_pct"),
            others_cpu_pct: opt("others_cpu_pct"),
            steal_pct: opt("steal_pct"),
            own_cpus: opt("own_cpus"),
            slowest_worker: opt("slowest_worker"),
            worker_cpus: column("worker_cpus").map_or(String::new(), |i| cells[i].to_string()),
            involuntary_switches: count("involuntary_switches"),
            migrations: count("migrations"),
            load_average: opt("load_average"),
            csv: line.to_string(),
        });
    }
    if rows.is_empty() {
        return Err(bad("no rows"));
    }
    Ok(rows)
}

/// Median, minimum and maximum of the processes' values.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Self {
        Spread {
            median: bench::median(v),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// The slowest process's value over the fastest's (1 = every process alike).
    fn ratio(&self) -> f64 {
        if self.max > 0.0 {
            self.min / self.max
        } else {
            1.0
        }
    }

    fn table_cell(&self) -> String {
        format!("{:.1} ({:.1} – {:.1})", self.median, self.min, self.max)
    }

    fn json(&self) -> String {
        format!(
            "{{\"median\":{:.3},\"min\":{:.3},\"max\":{:.3}}}",
            self.median, self.min, self.max
        )
    }
}

/// One configuration (model, quant, threads) over every process, in first-seen order.
struct Config<'a> {
    model: &'a str,
    quant: &'a str,
    threads: usize,
    rows: Vec<&'a ProcessRow>,
}

impl Config<'_> {
    fn prefill(&self) -> Spread {
        Spread::of(
            &self
                .rows
                .iter()
                .map(|r| r.prefill_tok_s)
                .collect::<Vec<_>>(),
        )
    }

    fn decode(&self) -> Spread {
        Spread::of(&self.rows.iter().map(|r| r.decode_tok_s).collect::<Vec<_>>())
    }

    /// The processes' median bandwidth during decode, if every process measured it.
    fn decode_membw(&self) -> Option<Spread> {
        let v: Option<Vec<f64>> = self
            .rows
            .iter()
            .map(|r| r.decode_membw.map(|b| b.0))
            .collect();
        v.filter(|v| !v.is_empty()).map(|v| Spread::of(&v))
    }

    /// Pearson correlation of the processes' decode speeds with their bandwidth during decode.
    fn decode_follows_membw(&self) -> Option<f64> {
        let pairs: Option<Vec<(f64, f64)>> = self
            .rows
            .iter()
            .map(|r| r.decode_membw.map(|b| (r.decode_tok_s, b.0)))
            .collect();
        correlation(&pairs?)
    }

    /// The median over processes of each one's slowest decode repeat over its fastest, if every
    /// process reported its repeats: how far one process's speed moved while it ran.
    fn within_process_ratio(&self) -> Option<f64> {
        let v: Option<Vec<f64>> = self
            .rows
            .iter()
            .map(|r| {
                r.decode_range
                    .map(|(lo, hi)| if hi > 0.0 { lo / hi } else { 1.0 })
            })
            .collect();
        v.filter(|v| !v.is_empty()).map(|v| bench::median(&v))
    }

    /// Processes whose bandwidth probes moved by more than [`SPREAD_WARN_RATIO`] allows between
    /// one decode repeat and the next.
    fn moved_within(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| {
                r.decode_membw
                    .is_some_and(|(_, lo, hi)| hi > 0.0 && lo / hi < SPREAD_WARN_RATIO)
            })
            .count()
    }
}

/// Pearson's correlation coefficient of the pairs (`None` for fewer than three, or when either
/// side does not vary).
fn correlation(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 3 {
        return None;
    }
    let n = pairs.len() as f64;
    let (mx, my) = pairs
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

fn configs(rows: &[ProcessRow]) -> Vec<Config<'_>> {
    let mut out: Vec<Config<'_>> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|c| {
            (c.model, c.quant, c.threads) == (r.model.as_str(), r.quant.as_str(), r.threads)
        }) {
            Some(c) => c.rows.push(r),
            None => out.push(Config {
                model: &r.model,
                quant: &r.quant,
                threads: r.threads,
                rows: vec![r],
            }),
        }
    }
    out
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.digits$}"))
}

fn count_cell(v: Option<u64>) -> String {
    v.map_or("n/a".to_string(), |v| v.to_string())
}

fn print_table(machine: &Machine, rounds: usize, command: &str, rows: &[ProcessRow]) -> Result<()> {
    outln!("machine: {}", machine_line(machine));
    outln!("{rounds} fresh processes, one after another, each `{command}`");
    outln!();
    outln!("| model | quant | threads | pp tok/s median (min – max) | tg tok/s median (min – max) | tg slowest / fastest | GB/s during tg median (min – max) |");
    outln!("|---|---|---|---|---|---|---|");
    let configs = configs(rows);
    for c in &configs {
        outln!(
            "| {} | {} | {} | {} | {} | {:.2} | {} |",
            c.model,
            c.quant,
            c.threads,
            c.prefill().table_cell(),
            c.decode().table_cell(),
            c.decode().ratio(),
            c.decode_membw()
                .map_or("n/a".to_string(), |s| s.table_cell()),
        );
    }
    outln!();
    outln!("| round | pid | model | quant | threads | pp tok/s | tg tok/s (repeats min – max) | membw GB/s | GB/s during tg (min – max) | huge pages % | others' CPU % | steal % | CPUs busy | slowest worker | worker CPUs | invol. switches | migrations | load avg |");
    outln!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        outln!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1}{} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.round,
            r.pid,
            r.model,
            r.quant,
            r.threads,
            r.prefill_tok_s,
            r.decode_tok_s,
            r.decode_range
                .map_or(String::new(), |(lo, hi)| format!(" ({lo:.1} – {hi:.1})")),
            r.membw_gb_s,
            r.decode_membw.map_or("n/a".to_string(), |(m, lo, hi)| format!(
                "{m:.1} ({lo:.1} – {hi:.1})"
            )),
            cell(r.huge_page_pct, 0),
            cell(r.others_cpu_pct, 0),
            cell(r.steal_pct, 1),
            cell(r.own_cpus, 2),
            cell(r.slowest_worker, 2),
            r.worker_cpus,
            count_cell(r.involuntary_switches),
            count_cell(r.migrations),
            cell(r.load_average, 2),
        );
    }
    outln!();
    outln!("each process: medians over its repeats; the first table: median, slowest and fastest process");
    for w in warnings(&configs) {
        outln!("{w}");
    }
    Ok(())
}

/// Warnings about processes that disagree and about processes that shared the machine.
fn warnings(configs: &[Config<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    for c in configs {
        let d = c.decode();
        if c.rows.len() > 1 && d.ratio() < SPREAD_WARN_RATIO {
            out.push(format!(
                "WARNING: {} {} t={}: decode differs between processes: slowest {:.1}, fastest {:.1} tok/s ({:.0}% apart); compare single runs with care",
                c.model, c.quant, c.threads, d.min, d.max, 100.0 * (1.0 - d.ratio())
            ));
            if let Some(within) = c
                .within_process_ratio()
                .filter(|&w| w <= d.ratio() + WITHIN_MARGIN)
            {
                out.push(format!(
                    "NOTE: {} {} t={}: within each process the decode repeats themselves ranged as widely (slowest / fastest {within:.2}, median over processes) as the processes did ({:.2}): the speed changed while each process ran, not from one process to the next",
                    c.model, c.quant, c.threads, d.ratio()
                ));
            }
            if let (Some(bw), Some(r)) = (c.decode_membw(), c.decode_follows_membw()) {
                if bw.ratio() < SPREAD_WARN_RATIO && r >= FOLLOWS_BANDWIDTH {
                    out.push(format!(
                        "NOTE: {} {} t={}: the memory bandwidth measured during decode ranged {:.1}–{:.1} GB/s between processes (and moved by more than {:.0}% within {} of {}), and decode followed it (correlation {r:.2}): the machine's bandwidth changed, not this program's speed",
                        c.model, c.quant, c.threads, bw.min, bw.max, 100.0 * (1.0 - SPREAD_WARN_RATIO), c.moved_within(), c.rows.len()
                    ));
                }
            }
        }
        let stacked = c.rows.iter().filter(|r| stacked(&r.worker_cpus)).count();
        if stacked > 0 {
            out.push(format!(
                "WARNING: {} {} t={}: in {stacked} of {} processes two workers were on one CPU at once (the scheduler stacked them; --pin prevents it)",
                c.model, c.quant, c.threads, c.rows.len()
            ));
        }
        let contended = c
            .rows
            .iter()
            .filter(|r| {
                r.others_cpu_pct.unwrap_or(0.0) + r.steal_pct.unwrap_or(0.0) > CONTENDED_PCT
            })
            .count();
        if contended > 0 {
            out.push(format!(
                "WARNING: {} {} t={}: in {contended} of {} processes other work took more than {CONTENDED_PCT:.0}% of the CPUs; those numbers are contended",
                c.model, c.quant, c.threads, c.rows.len()
            ));
        }
    }
    out
}

/// Whether a `worker_cpus` cell names one CPU twice.
fn stacked(worker_cpus: &str) -> bool {
    let cpus: Vec<&str> = worker_cpus
        .split_whitespace()
        .filter(|c| *c != "?")
        .collect();
    cpus.iter().enumerate().any(|(i, c)| cpus[..i].contains(c))
}

fn print_json(machine: &Machine, rounds: usize, command: &str, rows: &[ProcessRow]) -> Result<()> {
    let results: Vec<String> = configs(rows)
        .iter()
        .map(|c| {
            let processes: Vec<String> = c
                .rows
                .iter()
                .map(|r| {
                    format!(
                        concat!(
                            "{{\"round\":{},\"pid\":{},\"prefill_tok_s\":{:.3},\"decode_tok_s\":{:.3},\"membw_gb_s\":{:.3},\"decode_membw_gb_s\":{},",
                            "\"huge_page_pct\":{},\"others_cpu_pct\":{},\"steal_pct\":{},\"own_cpus\":{},\"slowest_worker\":{},\"worker_cpus\":{},",
                            "\"involuntary_switches\":{},\"migrations\":{},\"load_average\":{}}}"
                        ),
                        r.round,
                        r.pid,
                        r.prefill_tok_s,
                        r.decode_tok_s,
                        r.membw_gb_s,
                        json_opt(r.decode_membw.map(|b| b.0)),
                        json_opt(r.huge_page_pct),
                        json_opt(r.others_cpu_pct),
                        json_opt(r.steal_pct),
                        json_opt(r.own_cpus),
                        json_opt(r.slowest_worker),
                        json_str(&r.worker_cpus),
                        json_opt(r.involuntary_switches),
                        json_opt(r.migrations),
                        json_opt(r.load_average),
                    )
                })
                .collect();
            format!(
                "{{\"model\":{},\"quant\":{},\"threads\":{},\"prefill_tok_s\":{},\"decode_tok_s\":{},\"decode_slowest_over_fastest\":{:.4},\"processes\":[{}]}}",
                json_str(c.model),
                json_str(c.quant),
                c.threads,
                c.prefill().json(),
                c.decode().json(),
                c.decode().ratio(),
                processes.join(",")
            )
        })
        .collect();
    outln!(
        "{{\"machine\":{{\"cpu\":{},\"cores\":{},\"load_average\":{},\"pid\":{}}},\"rounds\":{rounds},\"command\":{},\"results\":[{}]}}",
        json_str(&machine.cpu),
        machine.cores,
        json_opt(machine.load_average),
        std::process::id(),
        json_str(command),
        results.join(",")
    );
    Ok(())
}

fn print_csv(rows: &[ProcessRow]) -> Result<()> {
    outln!("round,{CSV_HEADER}");
    for r in rows {
        outln!("{},{}", r.round, r.csv);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(rows: &[&str]) -> String {
        let mut s = format!("{CSV_HEADER}\n");
        for r in rows {
            s += r;
            s.push('\n');
        }
        s
    }

    const ROW: &str = "synthetic 124M,q8,2,128,128,128,f16,700.5,220.25,4.5,5.4,6.7,182.6,28.9,35.0,83.00,100.00,12.50,0.10,1.90,0.95,0 1,7,3,1.25,4242,34.0,33.0,35.0,218.0,222.0";

    #[test]
    fn process_rows_are_read_by_column_name() {
        let rows = parse_csv(&csv(&[ROW]), 3).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.round, r.pid, r.threads), (3, 4242, 2));
        assert_eq!(
            (r.model.as_str(), r.quant.as_str()),
            ("synthetic 124M", "q8")
        );
        assert_eq!(
            (r.prefill_tok_s, r.decode_tok_s, r.membw_gb_s),
            (700.5, 220.25, 35.0)
        );
        assert_eq!(
            (r.huge_page_pct, r.others_cpu_pct, r.steal_pct),
            (Some(100.0), Some(12.5), Some(0.1))
        );
        assert_eq!(
            (r.involuntary_switches, r.migrations, r.load_average),
            (Some(7), Some(3), Some(1.25))
        );
        // Probes the OS did not answer are empty cells.
        assert_eq!((r.own_cpus, r.slowest_worker), (Some(1.9), Some(0.95)));
        assert_eq!(r.worker_cpus, "0 1");
        let blank = ROW.replace(",100.00,12.50,0.10,1.90,0.95,0 1,7,3,1.25,", ",,,,,,,,,,");
        let r = &parse_csv(&csv(&[&blank]), 1).unwrap()[0];
        assert_eq!(
            (r.huge_page_pct, r.migrations, r.load_average),
            (None, None, None)
        );
    }

    /// Three processes whose decode speeds and bandwidth during decode are `(tok/s, GB/s)`.
    fn bandwidth_configs(runs: &[(f64, f64)]) -> Vec<ProcessRow> {
        runs.iter()
            .enumerate()
            .flat_map(|(i, (tok_s, gbs))| {
                let row = ROW.replace("220.25", &tok_s.to_string()).replace(
                    ",34.0,33.0,35.0",
                    &format!(",{gbs},{},{}", gbs - 1.0, gbs + 1.0),
                );
                parse_csv(&csv(&[&row]), i + 1).unwrap()
            })
            .collect()
    }

    #[test]
    fn decode_that_follows_the_machines_bandwidth_is_said_to() {
        let rows = bandwidth_configs(&[(210.0, 32.0), (290.0, 63.0), (215.0, 33.5), (280.0, 60.0)]);
        let c = configs(&rows);
        let bw = c[0].decode_membw().unwrap();
        assert_eq!((bw.min, bw.max), (32.0, 63.0));
        assert!(c[0].decode_follows_membw().unwrap() > 0.95);
        let w = warnings(&c);
        assert!(w.iter().any(|w| w.contains("decode followed it")), "{w:?}");
        // The same spread with a steady bandwidth is this program's, and is not excused.
        let rows = bandwidth_configs(&[(210.0, 33.0), (290.0, 33.5), (215.0, 32.8)]);
        let w = warnings(&configs(&rows));
        assert!(
            w.iter().any(|w| w.contains("differs between processes")),
            "{w:?}"
        );
        assert!(!w.iter().any(|w| w.contains("decode followed it")), "{w:?}");
        // Bandwidth that varies while decode does not follow it excuses nothing either.
        let rows = bandwidth_configs(&[(210.0, 63.0), (290.0, 33.5), (250.0, 40.0)]);
        let w = warnings(&configs(&rows));
        assert!(!w.iter().any(|w| w.contains("decode followed it")), "{w:?}");
        assert_eq!(correlation(&[(1.0, 2.0), (2.0, 4.0)]), None);
        assert_eq!(correlation(&[(1.0, 2.0), (2.0, 2.0), (3.0, 2.0)]), None);
    }

    /// The warnings for processes (rounds 1, 2, …) that printed these CSV rows.
    fn warnings_for(rows: &[&str]) -> Vec<String> {
        let rows: Vec<ProcessRow> = rows
            .iter()
            .enumerate()
            .flat_map(|(i, r)| parse_csv(&csv(&[r]), i + 1).unwrap())
            .collect();
        warnings(&configs(&rows))
    }

    #[test]
    fn processes_that_each_moved_as_much_are_said_to() {
        // Decode 150 and 220 in two processes, each of whose repeats ranged 150-220: the speed
        // moved over time. With steady repeats (218-222) the processes differ on their own.
        let moving = ROW.replace(",218.0,222.0", ",150.0,220.0");
        let slow = moving.replace("220.25", "150.0");
        let w = warnings_for(&[&moving, &slow, &moving]);
        assert!(
            w.iter()
                .any(|w| w.contains("changed while each process ran")),
            "{w:?}"
        );
        let slow = ROW.replace("220.25", "150.0");
        let w = warnings_for(&[ROW, &slow, ROW]);
        assert!(
            w.iter().any(|w| w.contains("differs between processes")),
            "{w:?}"
        );
        assert!(
            !w.iter()
                .any(|w| w.contains("changed while each process ran")),
            "{w:?}"
        );
    }

    #[test]
    fn malformed_output_is_an_error() {
        assert!(parse_csv("", 1).is_err());
        assert!(parse_csv(&csv(&[]), 1).is_err());
        assert!(parse_csv(&csv(&["a,b"]), 1).is_err());
        assert!(parse_csv(&csv(&[&ROW.replace("220.25", "fast")]), 1).is_err());
    }

    #[test]
    fn spreads_and_warnings_follow_the_processes() {
        let slow = ROW.replace("220.25", "150.0");
        let rows: Vec<ProcessRow> = [ROW, &slow, ROW]
            .iter()
            .enumerate()
            .flat_map(|(i, r)| parse_csv(&csv(&[r]), i + 1).unwrap())
            .collect();
        let configs = configs(&rows);
        assert_eq!(configs.len(), 1);
        let d = configs[0].decode();
        assert_eq!((d.median, d.min, d.max), (220.25, 150.0, 220.25));
        let w = warnings(&configs);
        assert!(
            w.iter().any(|w| w.contains("differs between processes")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("in 3 of 3 processes other work")),
            "{w:?}"
        );
        assert!(!w.iter().any(|w| w.contains("stacked")), "{w:?}");
        assert!(stacked("1 1") && stacked("0 1 0") && !stacked("0 1") && !stacked("? ?"));
        assert_eq!(Spread::of(&[5.0, 5.0]).ratio(), 1.0);
    }
}
