//! Our own reader for the [safetensors] format: header parsing and validation, the memory map, and
//! decoding F32/F16/BF16 tensors to `f32`.
//!
//! A file is `u64` (little-endian) header length `N`, `N` bytes of JSON, then the data region. The JSON
//! object maps each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative
//! to the data region) and may hold a `"__metadata__"` object. [`SafetensorsFile::parse`] checks all of
//! it — sizes, dtypes, shapes against byte lengths, bounds and overlaps — and never panics, whatever the
//! bytes, so it can be fuzzed. Tensor data is only touched when [`SafetensorsFile::read_f32`] asks for it.
//!
//! [safetensors]: https://huggingface.co/docs/safetensors

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use gpt2q::{Error, Result};
use memmap2::Mmap;
use serde_json::{Map, Value};

/// Largest JSON header we accept, in bytes (the format's own reference reader uses the same bound).
pub const MAX_HEADER_LEN: u64 = 100 * 1000 * 1000;

/// Bytes taken by the header-length prefix.
const LEN_PREFIX: usize = 8;

/// Key of the optional free-form metadata object in the header.
const METADATA_KEY: &str = "__metadata__";

/// Element type of a stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StDtype {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the top half of a binary32).
    BF16,
    /// Any other dtype the format knows (`I64`, `U8`, `BOOL`, ...): parsed, but not convertible to `f32`.
    Other(String),
}

impl StDtype {
    /// The dtype named `name` in a header and its element size in bytes; `None` for an unknown name
    /// (including the sub-byte types, which no GPT-2 checkpoint uses).
    fn from_name(name: &str) -> Option<(StDtype, usize)> {
        let dtype = match name {
            "F32" => return Some((StDtype::F32, 4)),
            "F16" => return Some((StDtype::F16, 2)),
            "BF16" => return Some((StDtype::BF16, 2)),
            other => StDtype::Other(other.to_string()),
        };
        let size = match name {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
            "I16" | "U16" => 2,
            "I32" | "U32" => 4,
            "I64" | "U64" | "F64" => 8,
            _ => return None,
        };
        Some((dtype, size))
    }

    /// The dtype's name as written in a header.
    pub fn name(&self) -> &str {
        match self {
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
            StDtype::Other(name) => name,
        }
    }

    /// Whether [`SafetensorsFile::read_f32`] can decode this dtype.
    pub fn is_float(&self) -> bool {
        !matches!(self, StDtype::Other(_))
    }

    /// Bytes per element of a float dtype (0 for the others, which are never decoded).
    pub fn float_size(&self) -> usize {
        match self {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::BF16 => 2,
            StDtype::Other(_) => 0,
        }
    }
}

impl fmt::Display for StDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor's entry in the header, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: StDtype,
    /// Dimensions as stored (row-major); empty for a scalar.
    pub shape: Vec<usize>,
    /// Byte range of the data, absolute in the file (already bounds-checked).
    pub range: Range<usize>,
}

impl TensorInfo {
    /// Number of elements (the product of the shape; validated not to overflow at parse time).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open, memory-mapped safetensors file whose header has been validated.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    tensors: BTreeMap<String, TensorInfo>,
}

impl SafetensorsFile {
    /// Opens and maps `path` read-only and validates its header. No tensor data is read.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < LEN_PREFIX as u64 {
            return Err(Error::format(format!(
                "{}: file is {len} bytes, too short for a safetensors file (needs at least the 8-byte header length)",
                path.display()
            )));
        }
        // SAFETY: `Mmap::map` is unsafe because the mapped bytes could change, or the mapping could
        // fault, if another process modifies or truncates the file while it is mapped. The file is opened
        // read-only and we never write through the map; concurrent modification by other processes is
        // outside our control, and we accept that risk exactly as other mmap-based readers (e.g. ripgrep)
        // document. All offsets into the map are validated against its length before use.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let tensors = Self::parse(&mmap, path)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            tensors,
        })
    }

    /// Parses and validates the header of a whole safetensors file held in `bytes`; `path_for_errors`
    /// only labels error messages. Pure, and never panics on any input.
    pub fn parse(bytes: &[u8], path_for_errors: &Path) -> Result<BTreeMap<String, TensorInfo>> {
        let p = path_for_errors.display();
        let (header, data_start) = split_header(bytes, path_for_errors)?;
        let json: Value = serde_json::from_slice(header)
            .map_err(|e| Error::format(format!("{p}: header is not valid JSON: {e}")))?;
        let Value::Object(entries) = json else {
            return Err(Error::format(format!(
                "{p}: header must be a JSON object, found {}",
                kind(&json)
            )));
        };
        let data_len = bytes.len().saturating_sub(data_start);
        let mut tensors = BTreeMap::new();
        for (name, entry) in &entries {
            if name == METADATA_KEY {
                check_metadata(entry, path_for_errors)?;
                continue;
            }
            let info = parse_entry(name, entry, data_start, data_len, path_for_errors)?;
            tensors.insert(name.clone(), info);
        }
        check_overlaps(&tensors, path_for_errors)?;
        Ok(tensors)
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensors in the file, by stored name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Reads tensor `name` as `f32` values (row-major), decoding little-endian F32, F16 or BF16.
    /// Other dtypes are refused. Non-finite values are returned as they are.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (info, bytes) = self.raw(name)?;
        let mut out = vec![0.0; info.numel()];
        if !decode_into(bytes, &info.dtype, &mut out) {
            return Err(Error::format(format!(
                "{}: tensor {name:?} has dtype {}, expected a float dtype (F32, F16 or BF16)",
                self.path.display(),
                info.dtype
            )));
        }
        Ok(out)
    }

    /// Tensor `name`'s header entry and its stored bytes (still in the file's map: nothing is
    /// read until the bytes are touched).
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let p = self.path.display();
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::invalid(format!("{p}: no tensor named {name:?} in this file")))?;
        let bytes = self.mmap.get(info.range.clone()).ok_or_else(|| {
            Error::format(format!(
                "{p}: tensor {name:?}: byte range {:?} lies outside the {}-byte file",
                info.range,
                self.mmap.len()
            ))
        })?;
        Ok((info, bytes))
    }

    /// Drops the pages holding file bytes `range` from this process's memory once they have
    /// been read, so a conversion's resident size does not grow with the checkpoint. They are
    /// read again from the file if touched later. Advice only: failure is ignored.
    pub fn release(&self, range: Range<usize>) {
        let (start, end) = (
            range.start.min(self.mmap.len()),
            range.end.min(self.mmap.len()),
        );
        if start >= end {
            return;
        }
        #[cfg(unix)]
        // SAFETY: MADV_DONTNEED is "unchecked" because on a private *writable* mapping it
        // discards modifications. This map is read-only and never written through, so the pages
        // are only dropped and later re-read from the file unchanged; no reference into the map
        // is invalidated (the addresses stay mapped). The range lies inside the map (clamped
        // above); memmap2 aligns its start down to a page.
        let _ = unsafe {
            self.mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

/// Splits `bytes` into the JSON header and the offset where the data region starts.
fn split_header<'a>(bytes: &'a [u8], path: &Path) -> Result<(&'a [u8], usize)> {
    let p = path.display();
    let mut prefix = [0u8; LEN_PREFIX];
    let head = bytes.get(..LEN_PREFIX).ok_or_else(|| {
        Error::format(format!(
            "{p}: file is {} bytes, too short for a safetensors file (needs at least the 8-byte header length)",
            bytes.len()
        ))
    })?;
    prefix.copy_from_slice(head);
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_LEN {
        return Err(Error::format(format!(
            "{p}: header length {n} exceeds the limit of {MAX_HEADER_LEN} bytes (not a safetensors file?)"
        )));
    }
    let available = bytes.len() - LEN_PREFIX;
    let header = usize::try_from(n)
        .ok()
        .and_then(|n| bytes.get(LEN_PREFIX..LEN_PREFIX.checked_add(n)?))
        .ok_or_else(|| {
            Error::format(format!(
                "{p}: header length {n} runs past the end of the file ({available} bytes after the length prefix)"
            ))
        })?;
    Ok((header, LEN_PREFIX + header.len()))
}

/// Checks the optional `__metadata__` entry: an object (its values are free-form).
fn check_metadata(entry: &Value, path: &Path) -> Result<()> {
    if entry.is_object() {
        return Ok(());
    }
    Err(Error::format(format!(
        "{}: {METADATA_KEY} must be a JSON object, found {}",
        path.display(),
        kind(entry)
    )))
}

/// Parses and validates one tensor entry of the header.
fn parse_entry(
    name: &str,
    entry: &Value,
    data_start: usize,
    data_len: usize,
    path: &Path,
) -> Result<TensorInfo> {
    let err = |msg: String| Error::format(format!("{}: tensor {name:?}: {msg}", path.display()));
    if name.is_empty() {
        return Err(err("tensor names must not be empty".into()));
    }
    let obj = entry.as_object().ok_or_else(|| {
        err(format!(
            "entry must be a JSON object, found {}",
            kind(entry)
        ))
    })?;
    check_entry_keys(obj).map_err(err)?;
    let (dtype, elem_size) = parse_dtype(obj.get("dtype")).map_err(err)?;
    let shape = parse_shape(obj.get("shape")).map_err(err)?;
    let (begin, end) = parse_offsets(obj.get("data_offsets")).map_err(err)?;
    if begin > end || end > data_len {
        return Err(err(format!(
            "data_offsets [{begin}, {end}] must satisfy begin <= end <= {data_len} (the data region's length)"
        )));
    }
    let nbytes = byte_len(&shape, elem_size).ok_or_else(|| {
        err(format!(
            "shape {shape:?} of {dtype} is too large (size overflows)"
        ))
    })?;
    if nbytes != end - begin {
        return Err(err(format!(
            "shape {shape:?} of {dtype} needs {nbytes} bytes, but data_offsets [{begin}, {end}] span {}",
            end - begin
        )));
    }
    // Cannot overflow: data_start + end <= bytes.len().
    let range = data_start + begin..data_start + end;
    Ok(TensorInfo {
        dtype,
        shape,
        range,
    })
}

/// Refuses entry keys other than `dtype`, `shape` and `data_offsets`.
fn check_entry_keys(obj: &Map<String, Value>) -> std::result::Result<(), String> {
    match obj
        .keys()
        .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
    {
        Some(k) => Err(format!(
            "unexpected key {k:?} (expected only dtype, shape, data_offsets)"
        )),
        None => Ok(()),
    }
}

/// The dtype and its element size.
fn parse_dtype(v: Option<&Value>) -> std::result::Result<(StDtype, usize), String> {
    let name = match v {
        Some(Value::String(s)) => s,
        Some(other) => return Err(format!("dtype must be a string, found {}", kind(other))),
        None => return Err("missing \"dtype\"".into()),
    };
    StDtype::from_name(name).ok_or_else(|| format!("unknown dtype {name:?}"))
}

/// The shape: an array of non-negative integers.
fn parse_shape(v: Option<&Value>) -> std::result::Result<Vec<usize>, String> {
    let dims = match v {
        Some(Value::Array(a)) => a,
        Some(other) => return Err(format!("shape must be an array, found {}", kind(other))),
        None => return Err("missing \"shape\"".into()),
    };
    dims.iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| format!("shape entries must be non-negative integers, found {d}"))
        })
        .collect()
}

/// `data_offsets`: an array of exactly two non-negative integers.
fn parse_offsets(v: Option<&Value>) -> std::result::Result<(usize, usize), String> {
    let bad = |found: &dyn fmt::Display| {
        format!("data_offsets must be [begin, end] with non-negative integers, found {found}")
    };
    let arr = match v {
        Some(Value::Array(a)) => a,
        Some(other) => return Err(bad(other)),
        None => return Err("missing \"data_offsets\"".into()),
    };
    let as_usize = |x: &Value| x.as_u64().and_then(|x| usize::try_from(x).ok());
    match arr.as_slice() {
        [b, e] => match (as_usize(b), as_usize(e)) {
            (Some(b), Some(e)) => Ok((b, e)),
            _ => Err(bad(&Value::Array(arr.clone()))),
        },
        _ => Err(bad(&Value::Array(arr.clone()))),
    }
}

/// Bytes needed by `shape` elements of `elem_size` bytes; `None` on overflow.
fn byte_len(shape: &[usize], elem_size: usize) -> Option<usize> {
    shape
        .iter()
        .try_fold(elem_size, |acc, &d| acc.checked_mul(d))
}

/// Refuses two non-empty tensors whose byte ranges intersect.
fn check_overlaps(tensors: &BTreeMap<String, TensorInfo>, path: &Path) -> Result<()> {
    let mut spans: Vec<(&Range<usize>, &str)> = tensors
        .iter()
        .filter(|(_, t)| !t.range.is_empty())
        .map(|(n, t)| (&t.range, n.as_str()))
        .collect();
    spans.sort_by_key(|(r, _)| (r.start, r.end));
    let mut furthest: Option<(&Range<usize>, &str)> = None;
    for (range, name) in spans {
        if let Some((prev, prev_name)) = furthest {
            if range.start < prev.end {
                return Err(Error::format(format!(
                    "{}: tensors {prev_name:?} (bytes {prev:?}) and {name:?} (bytes {range:?}) overlap",
                    path.display()
                )));
            }
        }
        if furthest.is_none_or(|(prev, _)| range.end > prev.end) {
            furthest = Some((range, name));
        }
    }
    Ok(())
}

/// Decodes little-endian `bytes` of a float dtype into `out` (one value per element; `bytes`
/// holds exactly `out.len()` elements). Returns false for a non-float dtype.
pub fn decode_into(bytes: &[u8], dtype: &StDtype, out: &mut [f32]) -> bool {
    match dtype {
        StDtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        StDtype::F16 => halves_to_f32(bytes, out, |bits| half::f16::from_bits(bits).to_f32()),
        StDtype::BF16 => halves_to_f32(bytes, out, |bits| half::bf16::from_bits(bits).to_f32()),
        StDtype::Other(_) => return false,
    }
    true
}

/// Decodes little-endian 16-bit floats, widened by `widen`.
fn halves_to_f32(bytes: &[u8], out: &mut [f32], widen: impl Fn(u16) -> f32) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = widen(u16::from_le_bytes([c[0], c[1]]));
    }
}

/// A short description of a JSON value's kind, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
