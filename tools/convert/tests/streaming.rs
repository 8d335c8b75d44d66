//! The converter as a parallel, interruptible program: the bytes it writes do not depend on the
//! thread count, and a conversion interrupted or killed midway leaves nothing a later run trips
//! over. (Its bounded memory is tests/peak_memory.rs's.)

#![cfg(unix)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpt2q_convert::convert::{convert, Options, Quant, Weighting};

const EPOCH: u64 = 1_795_824_000;

/// Under qemu (the aarch64 and armv7 CI runs) processes are emulated: their memory and signal
/// behaviour is qemu's, and the q4 search is far slower.
const EMULATED: bool = cfg!(any(target_arch = "aarch64", target_arch = "arm"));

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-gpt2")
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("streaming-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(quant: Quant, weighting: Weighting) -> Options {
    Options {
        quant,
        force: true,
        name: Some("tiny".into()),
        created_epoch: Some(EPOCH),
        weighting,
    }
}

/// Converts on a pool of `threads` threads and returns the file's bytes.
fn convert_on(threads: usize, out: &Path, opts: &Options) -> Vec<u8> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| convert(&fixture(), out, opts, &mut |_, _, _| {}))
        .unwrap();
    std::fs::read(out).unwrap()
}

#[test]
fn parallel_conversion_is_byte_identical_to_single_threaded() {
    let dir = scratch_dir("threads");
    let text = std::fs::read_to_string(fixture().join("../heldout.txt")).unwrap();
    let calib = Weighting::Activations { text, tokens: 256 };
    let cases = if EMULATED {
        vec![(Quant::Q8, Weighting::Uniform)]
    } else {
        vec![
            (Quant::F16, Weighting::Uniform),
            (Quant::Q8, Weighting::Uniform),
            (Quant::Q4, Weighting::Uniform),
            (Quant::Q4Pure, Weighting::Uniform),
            (Quant::Q4Pure, calib),
        ]
    };
    for (quant, weighting) in cases {
        let opts = options(quant, weighting.clone());
        let one = convert_on(1, &dir.join("one.g2q"), &opts);
        let three = convert_on(3, &dir.join("three.g2q"), &opts);
        assert!(
            one == three,
            "{} ({weighting:?}): 1 and 3 threads wrote different files",
            quant.name()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `gpt2q-convert ARGS`, stdout and stderr captured.
fn converter(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpt2q-convert"));
    cmd.args(args.iter().map(|a| a.as_ref()))
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: FFI; `pid` is our child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// Starts a one-thread q4-pure conversion of the fixture (about a second of work) and stops it
/// (SIGSTOP) as soon as its partial file exists, so the test then acts on a conversion known to
/// be midway.
fn start_and_freeze(out: &Path) -> (std::process::Child, PathBuf) {
    let child = converter(&[&fixture(), &"-o", &out, &"-q", &"q4-pure", &"-t", &"1"])
        .spawn()
        .unwrap();
    let partial = out.with_file_name(format!(
        "{}.partial-{}",
        out.file_name().unwrap().to_string_lossy(),
        child.id()
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !partial.exists() {
        assert!(Instant::now() < deadline, "no partial file appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(child.id(), libc::SIGSTOP);
    assert!(partial.exists() && !out.exists(), "caught too late");
    (child, partial)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn interrupted_conversion_leaves_nothing_and_a_rerun_succeeds() {
    if EMULATED {
        println!("skipped under emulation (signals reach qemu, not the converter)");
        return;
    }
    let dir = scratch_dir("interrupt");
    let out = dir.join("model.g2q");
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let (child, _) = start_and_freeze(&out);
        signal(child.id(), sig);
        signal(child.id(), libc::SIGCONT);
        let status = child.wait_with_output().unwrap().status;
        assert_eq!(
            status.signal(),
            Some(sig),
            "{status}: the signal should end the process"
        );
        assert!(
            names_in(&dir).is_empty(),
            "left behind: {:?}",
            names_in(&dir)
        );
    }
    let rerun = converter(&[&fixture(), &"-o", &out, &"-q", &"q8"])
        .output()
        .unwrap();
    assert!(rerun.status.success());
    assert_eq!(names_in(&dir), ["model.g2q"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_conversions_partial_file_is_removed_by_the_next_run() {
    if EMULATED {
        println!("skipped under emulation (signals reach qemu, not the converter)");
        return;
    }
    let dir = scratch_dir("killed");
    let out = dir.join("model.g2q");
    let (child, partial) = start_and_freeze(&out);
    signal(child.id(), libc::SIGKILL);
    child.wait_with_output().unwrap();
    // Nothing can clean up after SIGKILL: the partial file stays, under its visible name.
    assert_eq!(
        names_in(&dir),
        [partial.file_name().unwrap().to_string_lossy()]
    );
    let rerun = converter(&[&fixture(), &"-o", &out, &"-q", &"q8"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(rerun.status.success(), "{stderr}");
    assert!(
        stderr.contains("removed") && stderr.contains(&*partial.to_string_lossy()),
        "{stderr}"
    );
    assert_eq!(names_in(&dir), ["model.g2q"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
