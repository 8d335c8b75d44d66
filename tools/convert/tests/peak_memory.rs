//! The converter's peak memory does not grow with the checkpoint: it stays under the largest
//! tensor in f32, plus the output's metadata, plus 64 MB.
//!
//! Alone in its own test binary on purpose: Linux folds the parent's peak resident size into a
//! child's `ru_maxrss` at exec, so the process that starts the converter must itself stay small
//! (no conversions running beside it).

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gpt2q_convert::synthetic::{write_checkpoint, Dtype, Shape};

/// Under qemu (the aarch64 and armv7 CI runs) the memory measured would be qemu's.
const EMULATED: bool = cfg!(any(target_arch = "aarch64", target_arch = "arm"));

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-gpt2")
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("peak-memory-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `gpt2q-convert ARGS`, quiet.
fn converter(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpt2q-convert"));
    cmd.args(args.iter().map(|a| a.as_ref()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Waits for process `pid`: its wait status and peak resident memory in bytes.
fn wait_with_peak_rss(pid: u32) -> (libc::c_int, u64) {
    let mut status = 0;
    // SAFETY: FFI; `rusage` is plain data (all zeros is valid), both out-parameters are valid
    // for writes, and `pid` is our child, not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(r, pid as libc::pid_t, "wait4 failed");
    // Linux reports ru_maxrss in KiB.
    (status, usage.ru_maxrss as u64 * 1024)
}

/// A checkpoint several times larger than its largest tensor: gpt2-medium's depth (24 layers)
/// at half its width, 407 MB of f32. A converter that kept the file resident would need all of
/// it; the bound allows the largest tensor (the 103 MB embedding) plus the output's metadata
/// (tokenizer) plus 64 MB.
#[test]
fn peak_memory_stays_under_the_largest_tensor_plus_64_mb() {
    if EMULATED {
        println!("skipped under emulation (qemu's memory is not the converter's)");
        return;
    }
    let dir = scratch_dir("memory");
    let shape = Shape::new(24, 512, 8);
    let ckpt = dir.join("ckpt");
    let file_bytes = write_checkpoint(&ckpt, shape, Dtype::F32, 5, &fixture()).unwrap();
    let largest = (50257 * shape.n_embd * 4) as u64;
    let metadata = ["vocab.json", "merges.txt"]
        .iter()
        .map(|f| std::fs::metadata(ckpt.join(f)).unwrap().len())
        .sum::<u64>();
    let bound = largest + metadata + (64 << 20);
    assert!(
        file_bytes > 2 * bound,
        "the checkpoint must dwarf the bound"
    );
    for quant in ["q8", "f32"] {
        let out = dir.join(format!("out-{quant}.g2q"));
        // Reaped by `wait_with_peak_rss` (wait4, which also returns its resource usage).
        #[allow(clippy::zombie_processes)]
        let child = converter(&[&ckpt, &"-o", &out, &"-q", &quant, &"--quiet"])
            .spawn()
            .unwrap();
        let (status, peak) = wait_with_peak_rss(child.id());
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{quant}: status {status}"
        );
        println!(
            "{quant}: peak RSS {:.1} MB for a {:.1} MB checkpoint (bound {:.1} MB)",
            peak as f64 / 1e6,
            file_bytes as f64 / 1e6,
            bound as f64 / 1e6
        );
        assert!(
            peak < bound,
            "{quant}: peak RSS {peak} over the bound {bound}"
        );
        std::fs::remove_file(&out).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
