//! What the machine we run on is and how it is doing: memory (total, available, this process's
//! peak), the CPU (model, cores, SIMD features), the board (Raspberry Pi model), its temperature
//! and whether it throttled.
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
}
