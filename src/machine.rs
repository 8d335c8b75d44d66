//! What the machine we run on is and how it is doing: memory (total, available, this process's
//! peak, huge pages), the CPU (model, cores, SIMD features, governor), the board (Raspberry Pi
//! model), its temperature and whether it throttled, and whether other work shared the CPUs
//! (load, steal, context switches, migrations).
//!
//! Every probe of the operating system lives here, read from Linux's `/proc` and `/sys` (and
//! `vcgencmd` on Raspberry Pi OS); each returns `None` where the OS does not tell. The benchmark,
//! the loader ([`crate::mmap`]) and the memory planner ([`crate::session`]) ask this module.

/// The machine's physical memory in bytes (Linux `MemTotal`), if the OS tells.
pub fn memory_bytes() -> Option<usize> {
    meminfo_kib("MemTotal:").map(|k| k.saturating_mul(1024))
}

/// Memory available for new allocations without swapping (Linux `MemAvailable`), if the OS tells.
pub fn available_memory_bytes() -> Option<usize> {
    meminfo_kib("MemAvailable:").map(|k| k.saturating_mul(1024))
}

/// This process's peak resident memory in bytes (Linux `VmHWM`), if the OS tells.
pub fn peak_rss_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&text, "VmHWM:").map(|k| k.saturating_mul(1024))
}

/// Resets the peak-RSS counter (Linux 4.0+), so a measurement after this excludes earlier
/// allocations. Returns whether the OS allowed it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn meminfo_kib(key: &str) -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_kib(&text, key)
}

/// The number after `key` on the line starting with it (`MemTotal:   24000000 kB`).
fn parse_kib(text: &str, key: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// A description of the machine at one moment.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// The SIMD features the kernels can use that this CPU has (e.g. `avx2`, `dotprod`).
    pub features: Vec<&'static str>,
    /// Raspberry Pi (or other device-tree) board model, if any.
    pub board: Option<String>,
    /// SoC temperature in °C, if readable.
    pub temperature_c: Option<f64>,
    /// `vcgencmd get_throttled` bits, if the tool exists (Raspberry Pi OS): bit 2 = throttled
    /// now, bit 18 = throttled since boot, bits 0/16 under-voltage.
    pub throttled: Option<u32>,
    /// The 1-minute load average, if the OS tells.
    pub load_average: Option<f64>,
    /// The CPU frequency governor, if readable.
    pub governor: Option<String>,
}

impl Machine {
    /// Reads the machine's description now (temperature and throttling change; read again
    /// after a run to compare).
    pub fn probe() -> Self {
        Machine {
            cpu: cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            cores: cores(),
            features: cpu_features(),
            board: board_model(),
            temperature_c: temperature_c(),
            throttled: throttled_bits(),
            load_average: load_average(),
            governor: cpu_governor(),
        }
    }
}

/// Logical cores this process may use (1 if the OS does not tell).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU's model name from `/proc/cpuinfo` (x86's `model name`, a Pi's `Model`, else the ARM
/// part number).
pub fn cpu_model() -> Option<String> {
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

/// The SIMD features relevant to the kernels that this CPU reports.
pub fn cpu_features() -> Vec<&'static str> {
    // Not mutated on targets with nothing to detect (armv7 without NEON).
    #[allow(unused_mut)]
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, present) in [
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("f16c", is_x86_feature_detected!("f16c")),
        ] {
            if present {
                found.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        for (name, present) in [
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            (
                "dotprod",
                std::arch::is_aarch64_feature_detected!("dotprod"),
            ),
            ("fp16", std::arch::is_aarch64_feature_detected!("fp16")),
        ] {
            if present {
                found.push(name);
            }
        }
    }
    #[cfg(all(target_arch = "arm", target_feature = "neon"))]
    found.push("neon");
    found
}

/// The device-tree board model (`Raspberry Pi 4 Model B Rev 1.4`), if any.
pub fn board_model() -> Option<String> {
    std::fs::read_to_string("/proc/device-tree/model")
        .ok()
        .map(|s| s.trim_end_matches('\0').trim().to_string())
}

/// The SoC temperature in °C (thermal zone 0), if readable.
pub fn temperature_c() -> Option<f64> {
    std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map(|milli| milli / 1000.0)
}

/// The bits of `vcgencmd get_throttled` (`throttled=0x50000`), if the tool exists.
pub fn throttled_bits() -> Option<u32> {
    let out = std::process::Command::new("vcgencmd")
        .arg("get_throttled")
        .output()
        .ok()?;
    parse_throttled(&String::from_utf8_lossy(&out.stdout))
}

fn parse_throttled(text: &str) -> Option<u32> {
    let hex = text.trim().strip_prefix("throttled=0x")?;
    u32::from_str_radix(hex, 16).ok()
}

/// The 1-minute load average (Linux `/proc/loadavg`), if the OS tells.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The CPU frequency governor of CPU 0 (`performance`, `ondemand`, `schedutil`...), if readable;
/// a virtual machine usually has none.
pub fn cpu_governor() -> Option<String> {
    std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// How much of the memory holding `bytes` is resident, and how much of that on huge pages
/// (anonymous or file-backed, from `/proc/self/smaps`), both in bytes; `None` where the OS does
/// not tell. Mappings only partly inside `bytes` count in proportion to the overlap.
pub fn huge_page_residency(bytes: &[u8]) -> Option<HugePages> {
    let text = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let start = bytes.as_ptr() as usize;
    Some(parse_huge_pages(&text, start, start + bytes.len()))
}

/// Resident and huge-page bytes of a range of this process's memory (see
/// [`huge_page_residency`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugePages {
    /// Resident bytes.
    pub resident: usize,
    /// Resident bytes on huge pages.
    pub huge: usize,
}

impl HugePages {
    /// The huge pages' share of the resident bytes, in percent (0 when nothing is resident).
    pub fn percent(&self) -> f64 {
        100.0 * self.huge as f64 / self.resident.max(1) as f64
    }
}

fn parse_huge_pages(smaps: &str, start: usize, end: usize) -> HugePages {
    let mut total = HugePages::default();
    // (overlap / mapping size) of the mapping whose fields are being read, if it overlaps.
    let mut share: Option<f64> = None;
    for line in smaps.lines() {
        if let Some((lo, hi)) = mapping_range(line) {
            let overlap = end.min(hi).saturating_sub(start.max(lo));
            share = (overlap > 0).then(|| overlap as f64 / (hi - lo) as f64);
            continue;
        }
        let Some(share) = share else { continue };
        let scaled = |key| parse_kib(line, key).map(|k| (k as f64 * 1024.0 * share) as usize);
        if let Some(b) = scaled("Rss:") {
            total.resident += b;
        }
        for key in ["AnonHugePages:", "FilePmdMapped:", "ShmemPmdMapped:"] {
            if let Some(b) = scaled(key) {
                total.huge += b;
            }
        }
    }
    total
}

/// The address range of an smaps mapping header (`7f12a000-7f12c000 r--p ...`).
fn mapping_range(line: &str) -> Option<(usize, usize)> {
    let range = line.split_whitespace().next()?;
    let (lo, hi) = range.split_once('-')?;
    let lo = usize::from_str_radix(lo, 16).ok()?;
    let hi = usize::from_str_radix(hi, 16).ok()?;
    (hi > lo).then_some((lo, hi))
}

/// Counters that tell whether a measurement had the machine to itself: the CPUs' busy and
/// stolen time (a virtual machine's host running someone else), this process's CPU time, and
/// its threads' involuntary context switches and migrations between CPUs. Read one before and
/// one after, and take [`Activity::since`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Activity {
    /// Seconds of wall time (a monotonic clock).
    pub wall_s: f64,
    /// CPU-seconds all CPUs spent busy (user, nice, system, irq, softirq), or `None`.
    pub busy_s: Option<f64>,
    /// CPU-seconds the hypervisor gave our virtual CPUs to others (`steal`), or `None`.
    pub steal_s: Option<f64>,
    /// CPU-seconds this process ran (all its threads, user and system), or `None`.
    pub own_s: Option<f64>,
    /// Involuntary context switches of this process's live threads, or `None`.
    pub involuntary_switches: Option<u64>,
    /// Migrations between CPUs of this process's live threads, or `None` (needs a kernel
    /// with scheduler statistics).
    pub migrations: Option<u64>,
}

/// The shortest interval whose CPU shares are reported: 25 ticks of 10 ms.
const MIN_INTERVAL_S: f64 = 0.25;

/// The kernel's clock ticks per second for `/proc` CPU times (`USER_HZ`, 100 on Linux ports).
const USER_HZ: f64 = 100.0;

impl Activity {
    /// The counters now.
    pub fn read() -> Self {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let epoch = *EPOCH.get_or_init(std::time::Instant::now);
        let (busy_s, steal_s) = cpu_times().unzip();
        let tasks = task_counters();
        Activity {
            wall_s: epoch.elapsed().as_secs_f64(),
            busy_s,
            steal_s,
            own_s: own_cpu_s(),
            involuntary_switches: tasks.map(|t| t.0),
            migrations: tasks.and_then(|t| t.1),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Activity) -> Activity {
        let d = |a: Option<f64>, b: Option<f64>| Some((a? - b?).max(0.0));
        let n = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Activity {
            wall_s: (self.wall_s - earlier.wall_s).max(0.0),
            busy_s: d(self.busy_s, earlier.busy_s),
            steal_s: d(self.steal_s, earlier.steal_s),
            own_s: d(self.own_s, earlier.own_s),
            involuntary_switches: n(self.involuntary_switches, earlier.involuntary_switches),
            migrations: n(self.migrations, earlier.migrations),
        }
    }

    /// Of an interval ([`Activity::since`]): the share of all CPUs' time that other processes
    /// used, in percent; `None` for an interval too short for the kernel's 10 ms ticks.
    pub fn others_percent(&self, cpus: usize) -> Option<f64> {
        self.cpu_percent((self.busy_s? - self.own_s?).max(0.0), cpus)
    }

    /// Of an interval: the share of all CPUs' time stolen by the hypervisor, in percent (as
    /// [`Activity::others_percent`]).
    pub fn steal_percent(&self, cpus: usize) -> Option<f64> {
        self.cpu_percent(self.steal_s?, cpus)
    }

    /// Of an interval: how many CPUs this process kept busy on average (its threads' CPU time
    /// over the wall time; a waiting rayon worker spins for a while, so this is an upper bound
    /// on useful work). Two threads stacked on one CPU show as at most 1.
    pub fn own_cpus(&self) -> Option<f64> {
        (self.wall_s >= MIN_INTERVAL_S).then(|| self.own_s.unwrap_or(0.0) / self.wall_s)
    }

    fn cpu_percent(&self, cpu_s: f64, cpus: usize) -> Option<f64> {
        let capacity = self.wall_s * cpus.max(1) as f64;
        (self.wall_s >= MIN_INTERVAL_S).then(|| (100.0 * cpu_s / capacity).min(100.0))
    }
}

/// Pins the calling thread to CPU `cpu` (Linux `sched_setaffinity`); returns whether the OS
/// allowed it (not where `cpu` is outside this process's allowed set, nor off Linux).
pub fn pin_current_thread(cpu: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        // glibc's and musl's cpu_set_t: 1024 bits, CPU n at bit n % 8 of byte n / 8 (the
        // layout of little- and big-endian u64 words alike only on little-endian targets, which
        // every target gpt2q builds for is).
        const WORDS: usize = 16;
        if cpu >= WORDS * 64 || cfg!(target_endian = "big") {
            return false;
        }
        let mut mask = [0u64; WORDS];
        mask[cpu / 64] |= 1 << (cpu % 64);
        extern "C" {
            fn sched_setaffinity(pid: i32, cpusetsize: usize, mask: *const u64) -> i32;
        }
        // SAFETY: pid 0 is the calling thread; `mask` is a live, initialised buffer of exactly
        // `cpusetsize` bytes that the call only reads.
        unsafe { sched_setaffinity(0, std::mem::size_of_val(&mask), mask.as_ptr()) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        false
    }
}

/// The CPU the calling thread last ran on (`/proc/thread-self/stat`'s `processor`), if the OS
/// tells.
pub fn current_cpu() -> Option<usize> {
    parse_processor(&std::fs::read_to_string("/proc/thread-self/stat").ok()?)
}

fn parse_processor(stat: &str) -> Option<usize> {
    // Field 39; the fields after the command name's closing parenthesis start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(39 - 3)?.parse().ok()
}

/// (busy, steal) CPU-seconds of all CPUs since boot, from `/proc/stat`'s `cpu` line.
fn cpu_times() -> Option<(f64, f64)> {
    parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu_times(stat: &str) -> Option<(f64, f64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    let steal = v.get(7).copied().unwrap_or(0);
    Some((busy as f64 / USER_HZ, steal as f64 / USER_HZ))
}

/// This process's user + system CPU-seconds, from `/proc/self/stat`.
fn own_cpu_s() -> Option<f64> {
    parse_own_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

fn parse_own_cpu(stat: &str) -> Option<f64> {
    // The command name may hold spaces; the fields after its closing parenthesis are fixed:
    // state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

/// (involuntary context switches, migrations) summed over this process's live threads.
fn task_counters() -> Option<(u64, Option<u64>)> {
    let mut switches = 0u64;
    let mut migrations = Some(0u64);
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        switches += parse_kib(&status, "nonvoluntary_ctxt_switches:")? as u64;
        let sched = std::fs::read_to_string(dir.join("sched")).ok();
        migrations = migrations
            .zip(sched.as_deref().and_then(parse_migrations))
            .map(|(a, b)| a + b);
    }
    Some((switches, migrations))
}

fn parse_migrations(sched: &str) -> Option<u64> {
    let line = sched.lines().find(|l| l.starts_with("se.nr_migrations"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_lines_parse() {
        let text = "MemTotal:       24000000 kB\nVmHWM:\t  123 kB\n";
        assert_eq!(parse_kib(text, "MemTotal:"), Some(24_000_000));
        assert_eq!(parse_kib(text, "VmHWM:"), Some(123));
        assert_eq!(parse_kib(text, "Nope:"), None);
    }

    #[test]
    fn throttled_output_parses() {
        assert_eq!(parse_throttled("throttled=0x50000\n"), Some(0x50000));
        assert_eq!(parse_throttled("throttled=0x0"), Some(0));
        assert_eq!(parse_throttled("error"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_reports_memory() {
        let total = memory_bytes().expect("MemTotal");
        let available = available_memory_bytes().expect("MemAvailable");
        assert!(available <= total);
        assert!(peak_rss_bytes().is_some_and(|p| p > 0 && p < total));
    }

    #[test]
    fn smaps_huge_pages_are_counted_for_the_overlap() {
        let smaps = "1000-3000 rw-p 00000000 00:00 0\nRss:                   8 kB\nAnonHugePages:         4 kB\n\
                     3000-4000 r--p 00000000 00:00 0 /lib/x.so\nRss:                   4 kB\nAnonHugePages:         0 kB\n";
        let whole = parse_huge_pages(smaps, 0x1000, 0x3000);
        assert_eq!(
            whole,
            HugePages {
                resident: 8192,
                huge: 4096
            }
        );
        assert_eq!(whole.percent(), 50.0);
        // Half of the first mapping and none of the second.
        assert_eq!(
            parse_huge_pages(smaps, 0x2000, 0x3000),
            HugePages {
                resident: 4096,
                huge: 2048
            }
        );
        assert_eq!(
            parse_huge_pages(smaps, 0x9000, 0xa000),
            HugePages::default()
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_thread_runs_on_its_cpu() {
        // The CPU the thread is on is in its allowed set, whatever the machine restricts.
        let (wanted, got) = std::thread::spawn(|| {
            let cpu = current_cpu().expect("Linux tells the CPU");
            assert!(pin_current_thread(cpu), "CPU {cpu} is allowed");
            std::thread::yield_now();
            (cpu, current_cpu())
        })
        .join()
        .unwrap();
        assert_eq!(got, Some(wanted));
        assert!(!std::thread::spawn(|| pin_current_thread(1 << 20))
            .join()
            .unwrap());
    }

    #[test]
    fn cpu_and_task_counters_parse() {
        let stat = "cpu  100 50 30 900 7 1 2 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_cpu_times(stat), Some((1.83, 0.4)));
        let own = "42 (my (odd) name) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(parse_own_cpu(own), Some(3.0));
        assert_eq!(parse_migrations("se.nr_migrations   :   17\n"), Some(17));
        let fields: Vec<String> = (3..=45).map(|f| f.to_string()).collect();
        let stat = format!("7 (a b) {}", fields.join(" "));
        assert_eq!(parse_processor(&stat), Some(39));
        let a = Activity {
            wall_s: 1.0,
            busy_s: Some(10.0),
            steal_s: Some(1.0),
            own_s: Some(2.0),
            involuntary_switches: Some(5),
            migrations: None,
        };
        let b = Activity {
            wall_s: 3.0,
            busy_s: Some(13.0),
            steal_s: Some(1.4),
            own_s: Some(4.0),
            involuntary_switches: Some(9),
            migrations: Some(3),
        };
        let d = b.since(&a);
        assert_eq!(d.involuntary_switches, Some(4));
        assert_eq!(d.migrations, None);
        assert!((d.others_percent(2).unwrap() - 25.0).abs() < 1e-9);
        assert!((d.steal_percent(2).unwrap() - 10.0).abs() < 1e-9);
    }
}
