//! Model files in memory: a read-only memory map, a private copy on huge pages, or an owned
//! buffer for models built in memory, and typed views of its bytes.
//!
//! This is one of the two places `unsafe` lives (the other is the SIMD kernels): creating the map,
//! and reinterpreting aligned little-endian bytes as `f32`, `f16` and quantised blocks. It does not
//! know the file layout; [`crate::format`] does.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::{Mmap, MmapMut};

use crate::error::{Error, Result};
use crate::machine;
use crate::quant::{BlockQ4, BlockQ8};

/// The huge page size [`ModelFile::load`] aligns to (2 MiB on x86-64 and on 4 KiB-page ARM
/// kernels; a larger one only costs alignment).
const HUGE_PAGE: usize = 2 << 20;

/// The bytes of a model file, mapped read-only from disk or owned.
pub struct ModelFile {
    path: PathBuf,
    backing: Backing,
}

enum Backing {
    Mapped(Mmap),
    /// A private copy: the file's bytes start `offset` bytes into the map (on a huge page
    /// boundary) and are `len` long.
    Loaded {
        map: Mmap,
        offset: usize,
        len: usize,
    },
    /// 8-byte aligned storage (every view needs at most 4) and the length in bytes.
    Owned(Vec<u64>, usize),
}

impl ModelFile {
    /// Maps the file at `path` read-only. The pages are shared with every other process mapping
    /// the same file, and a model larger than free memory pages in from disk as it is used.
    pub fn open(path: &Path) -> Result<Self> {
        let (file, _) = open_regular(path)?;
        // SAFETY: the map is read-only and we never hand out mutable views. Another process
        // truncating or rewriting the file while it is mapped is outside what Rust can guard
        // against (it can raise SIGBUS or change bytes under us); the converter never does it (it
        // writes a new file and renames), and docs/FORMAT.md tells users not to edit a model file
        // that is in use.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            backing: Backing::Mapped(map),
        })
    }

    /// Reads the file at `path` into private anonymous memory, asking the kernel (on Linux) to
    /// back it with transparent huge pages. A decode step streams every weight once: with 4 KiB
    /// pages that crosses a page, a TLB miss and a stop of the hardware prefetcher every 4 KiB,
    /// and a plain read loop measured 9 GB/s on 4 KiB pages against 13 GB/s on huge pages on
    /// the development machine. The memory use is the same as a fully used map; the page cache
    /// copy stays reclaimable. Without huge page support this is a plain read.
    ///
    /// The bytes start on a huge page boundary: the kernel places an anonymous map only on a
    /// page boundary (on Linux 6.7+ on a huge page boundary only when its length is a multiple
    /// of one), and a start within a huge page left the first and last partial huge pages of
    /// the weights on small pages (8–19% of a 16 MB model), differently from one process to the
    /// next.
    pub fn load(path: &Path) -> Result<Self> {
        let (mut file, len) = open_regular(path)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| l.checked_add(2 * HUGE_PAGE).is_some())
            .ok_or_else(|| Error::invalid(format!("{} is too large", path.display())))?;
        // Room to start on a huge page boundary and to end on one; the pages never touched
        // take no memory.
        let size = (len + HUGE_PAGE - 1).next_multiple_of(HUGE_PAGE);
        let mut map = MmapMut::map_anon(size).map_err(|e| Error::io(path, e))?;
        let offset = map.as_ptr().align_offset(HUGE_PAGE);
        // Best effort: huge pages are an optimisation, and the kernel may not offer them.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        file.read_exact(&mut map[offset..offset + len])
            .map_err(|e| Error::io(path, e))?;
        let map = map.make_read_only().map_err(|e| Error::io(path, e))?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            backing: Backing::Loaded { map, offset, len },
        })
    }

    /// [`ModelFile::load`]s the file when it takes at most half of the memory available now
    /// (Linux `MemAvailable`; assumed to fit where the OS does not tell), else [`ModelFile::open`]s
    /// it, so a model larger than free RAM still runs from the page cache; `map` always maps.
    pub fn open_or_load(path: &Path, map: bool) -> Result<Self> {
        let (_, len) = open_regular(path)?;
        let fits = machine::available_memory_bytes().is_none_or(|avail| len <= avail as u64 / 2);
        if map || !fits {
            Self::open(path)
        } else {
            Self::load(path)
        }
    }

    /// Wraps bytes built in memory (tests, synthetic benchmark models).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        ModelFile {
            path: PathBuf::from("<memory>"),
            backing: Backing::Owned(words, bytes.len()),
        }
    }

    /// Where the bytes came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All bytes of the file.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mapped(m) => m,
            Backing::Loaded { map, offset, len } => &map[*offset..*offset + *len],
            Backing::Owned(words, len) => {
                // SAFETY: `words` owns `words.len() * 8 >= len` initialised bytes; u8 has no
                // alignment or validity requirements; the slice borrows `self`.
                unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), *len) }
            }
        }
    }
}

/// A private anonymous buffer of `bytes` bytes, all set to `fill`, backed by transparent huge
/// pages where the kernel offers them (as [`ModelFile::load`]'s weights are): the bench measures
/// the bandwidth of the memory the weights live in.
pub fn huge_page_buffer(bytes: usize, fill: u8) -> std::io::Result<MmapMut> {
    let mut map = MmapMut::map_anon(bytes)?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    map.fill(fill);
    Ok(map)
}

/// `bytes` as `u64`s (aligned and a multiple of 8 bytes, else `None`).
pub fn as_u64(bytes: &[u8]) -> Option<&[u64]> {
    // SAFETY: every 64-bit pattern is a valid u64.
    unsafe { cast_slice(bytes) }
}

/// Opens `path` for reading after checking that it is a non-empty regular file; returns it and
/// its length.
fn open_regular(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if meta.len() == 0 {
        return Err(Error::format(format!("{} is empty", path.display())));
    }
    Ok((file, meta.len()))
}

/// Reinterprets `bytes` as `[T]` when its address is aligned for `T` and its length a multiple of
/// `size_of::<T>()`; `None` otherwise.
///
/// # Safety
/// Every bit pattern of `size_of::<T>()` bytes must be a valid `T` (true for the plain-data types
/// this module instantiates it with).
unsafe fn cast_slice<T>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0
        || !bytes.len().is_multiple_of(size)
    {
        return None;
    }
    // SAFETY: alignment and length were checked above; validity is the caller's contract; the
    // result borrows `bytes`, so it cannot outlive them.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// `bytes` as little-endian `f32`s (we only build for little-endian targets).
pub fn as_f32(bytes: &[u8]) -> Option<&[f32]> {
    // SAFETY: every 32-bit pattern is a valid f32.
    unsafe { cast_slice(bytes) }
}

/// `bytes` as little-endian `f16`s.
pub fn as_f16(bytes: &[u8]) -> Option<&[f16]> {
    // SAFETY: f16 is a transparent u16; every 16-bit pattern is valid.
    unsafe { cast_slice(bytes) }
}

/// `bytes` as q8 blocks.
pub fn as_q8(bytes: &[u8]) -> Option<&[BlockQ8]> {
    // SAFETY: BlockQ8 is repr(C) of an f16 and 32 i8s with no padding (size 34 asserted in
    // `quant`); every bit pattern is valid.
    unsafe { cast_slice(bytes) }
}

/// `bytes` as q4 blocks.
pub fn as_q4(bytes: &[u8]) -> Option<&[BlockQ4]> {
    // SAFETY: BlockQ4 is repr(C) of an f16 and 16 u8s with no padding (size 18 asserted in
    // `quant`); every bit pattern is valid.
    unsafe { cast_slice(bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_bytes_round_trip_and_cast() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let file = ModelFile::from_bytes(&raw);
        assert_eq!(file.bytes(), &raw[..]);
        assert_eq!(as_f32(file.bytes()), Some(&[1.5f32, -2.0][..]));
        assert_eq!(as_f32(&file.bytes()[1..5]), None, "misaligned");
        assert_eq!(as_f32(&file.bytes()[..6]), None, "ragged length");
    }

    #[test]
    fn loading_and_mapping_give_the_same_bytes_and_errors() {
        let dir = std::env::temp_dir().join(format!("gpt2q-mmap-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Larger than a huge page, and not a multiple of a page.
        let raw: Vec<u8> = (0..(5 << 20) + 123).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.join("model.g2q");
        std::fs::write(&path, &raw).unwrap();
        for map in [false, true] {
            let file = ModelFile::open_or_load(&path, map).unwrap();
            assert!(file.bytes() == &raw[..], "map={map}");
            assert_eq!(file.path(), path);
        }
        let loaded = ModelFile::load(&path).unwrap();
        assert_eq!(loaded.bytes().as_ptr().align_offset(HUGE_PAGE), 0);
        let empty = dir.join("empty.g2q");
        std::fs::write(&empty, b"").unwrap();
        for map in [false, true] {
            let missing = ModelFile::open_or_load(&dir.join("missing.g2q"), map);
            assert!(matches!(missing, Err(Error::Io { .. })), "map={map}");
            let empty = ModelFile::open_or_load(&empty, map);
            assert!(matches!(empty, Err(Error::Format(_))), "map={map}");
            let dir = ModelFile::open_or_load(&dir, map);
            assert!(matches!(dir, Err(Error::InvalidInput(_))), "map={map}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_bandwidth_buffer_is_filled_and_viewable_as_words() {
        let buf = huge_page_buffer(3 << 20, 1).unwrap();
        let words = as_u64(&buf).unwrap();
        assert_eq!(words.len(), (3 << 20) / 8);
        assert!(words.iter().all(|&w| w == 0x0101_0101_0101_0101));
    }
}
