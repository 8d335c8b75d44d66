//! The output file while it is being written: `OUT.partial-PID`, visible next to `OUT`, renamed
//! into place only when complete.
//!
//! A partial file is removed on any error (by the writer), on SIGINT, SIGTERM and SIGHUP (by the
//! handler [`remove_partials_on_signals`] installs, which the command-line tool does), and, when
//! the process died some other way (SIGKILL, a crash, a power cut), by the next conversion to the
//! same output ([`stale_partials`] finds it; the PID in its name says whether its writer is gone).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

/// Partial files registered for removal on a signal, at most this many at once (a process runs
/// one conversion; tests run a few side by side).
const SLOTS: usize = 32;

/// NUL-terminated paths of the partial files being written, read by the signal handler. The
/// strings are leaked, never freed, so the handler can never read a freed one.
static PARTIALS: [AtomicPtr<u8>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];

/// `OUT.partial-PID` for this process.
pub fn partial_path(out: &Path) -> PathBuf {
    partial_path_of(out, std::process::id())
}

fn partial_path_of(out: &Path, pid: u32) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{pid}"));
    out.with_file_name(name)
}

/// The partial file of one conversion, registered for removal on a signal while this lives.
#[derive(Debug)]
pub struct PartialFile {
    path: PathBuf,
    slot: Option<usize>,
}

impl PartialFile {
    /// Registers `OUT.partial-PID` (the file itself is created by the writer).
    pub fn new(out: &Path) -> Self {
        let path = partial_path(out);
        let slot = register(&path);
        PartialFile { path, slot }
    }

    /// Where the file is written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            PARTIALS[slot].store(std::ptr::null_mut(), Ordering::SeqCst);
        }
    }
}

/// Puts `path` in a free slot for the signal handler; `None` if all are taken or the path has a
/// NUL byte (then only the next run's stale-file check covers it).
fn register(path: &Path) -> Option<usize> {
    let c = path_cstring(path)?;
    let ptr = Box::leak(c.into_bytes_with_nul().into_boxed_slice()).as_mut_ptr();
    (0..SLOTS).find(|&i| {
        PARTIALS[i]
            .compare_exchange(
                std::ptr::null_mut(),
                ptr,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    })
}

#[cfg(unix)]
fn path_cstring(path: &Path) -> Option<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).ok()
}

#[cfg(not(unix))]
fn path_cstring(_: &Path) -> Option<std::ffi::CString> {
    None
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that remove every registered partial file,
/// then let the signal take its default course (the process ends as if unhandled). Call once,
/// from a program's `main`; a no-op off Unix.
pub fn remove_partials_on_signals() {
    #[cfg(unix)]
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: FFI. `on_signal` only calls async-signal-safe functions (unlink, signal,
        // raise) and reads atomics.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    for slot in &PARTIALS {
        let path = slot.load(Ordering::SeqCst);
        if !path.is_null() {
            // SAFETY: FFI. Registered pointers are leaked NUL-terminated strings, valid forever.
            unsafe { libc::unlink(path as *const libc::c_char) };
        }
    }
    // SAFETY: FFI; both are async-signal-safe. With the default action restored, raising the
    // signal again ends the process with the status a shell expects (e.g. 130 for SIGINT).
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// A partial file found next to an output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    /// Its path.
    pub path: PathBuf,
    /// The process that was writing it.
    pub pid: u32,
    /// Whether that process still exists (then the file may be another conversion in flight).
    pub alive: bool,
}

/// The `OUT.partial-PID` files of other processes next to `out`.
pub fn stale_partials(out: &Path) -> Vec<Stale> {
    let (Some(name), Some(dir)) = (out.file_name(), out.parent()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.partial-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Stale> = entries
        .filter_map(|e| {
            let file = e.ok()?.file_name();
            let pid: u32 = file.to_str()?.strip_prefix(&prefix)?.parse().ok()?;
            (pid != std::process::id()).then(|| Stale {
                path: partial_path_of(out, pid),
                pid,
                alive: process_exists(pid),
            })
        })
        .collect();
    found.sort_by_key(|s| s.pid);
    found
}

/// Whether a process with this PID exists (off Unix: assumed, so nothing is removed).
fn process_exists(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: FFI; signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_are_named_after_the_output_and_found_by_pid() {
        let dir = std::env::temp_dir().join(format!("gpt2q-partials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("m.g2q");
        assert_eq!(
            partial_path(&out).file_name().unwrap().to_string_lossy(),
            format!("m.g2q.partial-{}", std::process::id())
        );
        // Ours is not reported; a live process's (pid 1) and a dead one's are, told apart.
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        for pid in [std::process::id(), 1, dead] {
            std::fs::write(partial_path_of(&out, pid), b"x").unwrap();
        }
        std::fs::write(dir.join("other.g2q.partial-1"), b"x").unwrap();
        let found = stale_partials(&out);
        let summary: Vec<(u32, bool)> = found.iter().map(|s| (s.pid, s.alive)).collect();
        let mut expected = vec![(1, true), (dead, false)];
        expected.sort();
        assert_eq!(summary, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
