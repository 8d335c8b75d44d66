//! The `.g2q` file format: one description of the bytes, shared by the writer (the converter) and
//! the reader (the runtime).
//!
//! This module owns the byte layout (documented for other languages in `docs/FORMAT.md`), parsing
//! and validating a mapped file into a [`Layout`] of borrowed sections, and writing a file
//! atomically. It does not interpret weights: [`crate::model`] turns tensor views into a model.
//!
//! ```text
//! offset 0        preamble (64 bytes): magic, version, section offsets/lengths, CRC-32s
//! offset 64       header: hyper-parameters, metadata (key/value strings), tensor table
//! tokenizer_off   tokenizer section (see `tokenizer::Tokenizer::write_section`)
//! data_off        tensor data, each tensor starting on a 64-byte boundary
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::error::{Error, Result};

/// Tensors' element types are the quantisation module's; re-exported here because the tensor
/// table stores them (by [`DType::code`]).
pub use crate::quant::DType;
use crate::quant::QK;

#[cfg(target_endian = "big")]
compile_error!(
    "gpt2q reads tensors in place from little-endian files and needs a little-endian CPU"
);

/// The first eight bytes of every `.g2q` file.
pub const MAGIC: [u8; 8] = *b"GPT2Q\0\0\x1a";
/// The format version this build reads and writes.
pub const VERSION: u32 = 1;
/// Size of the fixed preamble.
pub const PREAMBLE_LEN: usize = 64;
/// Every tensor's data starts at a multiple of this many bytes.
pub const ALIGN: u64 = 64;
/// Upper bound on tensor-table entries (GPT-2 XL has 582); a crafted header cannot make us allocate more.
pub const MAX_TENSORS: u32 = 4096;
/// Upper bound on metadata entries.
pub const MAX_METADATA: u32 = 256;
/// Upper bound on a tensor's rank.
pub const MAX_DIMS: u32 = 4;

/// The activation function of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GELU, tanh approximation (`gelu_new`, GPT-2's own).
    GeluTanh,
    /// GELU with the exact error function.
    GeluErf,
}

impl Activation {
    fn code(self) -> u32 {
        match self {
            Activation::GeluTanh => 0,
            Activation::GeluErf => 1,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Activation::GeluTanh),
            1 => Some(Activation::GeluErf),
            _ => None,
        }
    }
}

/// The model's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HParams {
    /// Vocabulary size (50257 for GPT-2).
    pub n_vocab: u32,
    /// Maximum context: number of learned positions.
    pub n_ctx: u32,
    /// Width of the residual stream.
    pub n_embd: u32,
    /// Attention heads per layer.
    pub n_head: u32,
    /// Transformer blocks.
    pub n_layer: u32,
    /// Width of the MLP's hidden layer (4 × n_embd in GPT-2).
    pub n_inner: u32,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f32,
    /// MLP activation.
    pub activation: Activation,
    /// Beginning-of-sequence token id.
    pub bos_id: u32,
    /// End-of-sequence token id (`<|endoftext|>`).
    pub eos_id: u32,
}

impl HParams {
    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        (self.n_embd / self.n_head.max(1)) as usize
    }

    /// Checks the values are usable: all sizes positive, heads divide the width, ids in range,
    /// sizes small enough that no product overflows.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("n_vocab", self.n_vocab),
            ("n_ctx", self.n_ctx),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("n_layer", self.n_layer),
            ("n_inner", self.n_inner),
        ];
        for (name, v) in sizes {
            if v == 0 || v > 1 << 20 {
                return Err(Error::format(format!(
                    "hyper-parameter {name} = {v} is out of range (1..=1048576)"
                )));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::format(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            )));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(Error::format(format!(
                "layer_norm_eps {} is not a positive number",
                self.layer_norm_eps
            )));
        }
        if self.bos_id >= self.n_vocab || self.eos_id >= self.n_vocab {
            return Err(Error::format(format!(
                "bos/eos ids {}/{} are outside the vocabulary of {}",
                self.bos_id, self.eos_id, self.n_vocab
            )));
        }
        Ok(())
    }

    fn write(&self, out: &mut Vec<u8>) {
        for v in [
            self.n_vocab,
            self.n_ctx,
            self.n_embd,
            self.n_head,
            self.n_layer,
            self.n_inner,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.layer_norm_eps.to_le_bytes());
        out.extend_from_slice(&self.activation.code().to_le_bytes());
        out.extend_from_slice(&self.bos_id.to_le_bytes());
        out.extend_from_slice(&self.eos_id.to_le_bytes());
    }

    fn read(c: &mut Cursor<'_>) -> Result<Self> {
        let mut u = [0u32; 6];
        for v in &mut u {
            *v = c.u32("hyper-parameters")?;
        }
        let layer_norm_eps = f32::from_bits(c.u32("hyper-parameters")?);
        let act = c.u32("hyper-parameters")?;
        let activation = Activation::from_code(act)
            .ok_or_else(|| Error::format(format!("unknown activation code {act}")))?;
        let hp = HParams {
            n_vocab: u[0],
            n_ctx: u[1],
            n_embd: u[2],
            n_head: u[3],
            n_layer: u[4],
            n_inner: u[5],
            layer_norm_eps,
            activation,
            bos_id: c.u32("hyper-parameters")?,
            eos_id: c.u32("hyper-parameters")?,
        };
        hp.validate()?;
        Ok(hp)
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    /// Canonical name, e.g. `h.0.attn.c_attn.weight`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first; matrices are `(out_features, in_features)`.
    pub shape: Vec<u64>,
    /// Absolute file offset of the data (a multiple of [`ALIGN`]).
    pub offset: u64,
    /// Length of the data in bytes.
    pub len: u64,
    /// CRC-32 (IEEE) of the data.
    pub crc32: u32,
}

/// What a writer is told about a tensor before its data exists.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// Canonical name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
}

/// A parsed, validated `.g2q` file borrowing from its bytes.
#[derive(Debug)]
pub struct Layout<'a> {
    /// Hyper-parameters.
    pub hparams: HParams,
    /// Metadata key/value pairs in file order.
    pub metadata: Vec<(String, String)>,
    /// The tokenizer section's bytes.
    pub tokenizer: &'a [u8],
    /// The tensor table.
    pub tensors: Vec<TensorEntry>,
    /// The whole file.
    pub bytes: &'a [u8],
}

impl<'a> Layout<'a> {
    /// Parses and validates `bytes` as a `.g2q` file: magic, version, preamble/header/tokenizer
    /// checksums, and every offset, length and shape in the table. Tensor data checksums are not
    /// checked here (see [`Layout::verify_tensors`]). Never panics, whatever the input.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let pre = Preamble::read(bytes)?;
        let header = section(bytes, PREAMBLE_LEN as u64, pre.header_len as u64, "header")?;
        check_crc("header", header, pre.header_crc)?;
        let tokenizer = section(bytes, pre.tokenizer_offset, pre.tokenizer_len, "tokenizer")?;
        check_crc("tokenizer", tokenizer, pre.tokenizer_crc)?;
        let mut c = Cursor::new(header);
        let hparams = HParams::read(&mut c)?;
        let metadata = read_metadata(&mut c)?;
        let tensors = read_table(&mut c, pre.data_offset, bytes.len() as u64)?;
        if !c.is_empty() {
            return Err(Error::format(format!(
                "{} unexpected bytes after the tensor table",
                c.remaining()
            )));
        }
        Ok(Layout {
            hparams,
            metadata,
            tokenizer,
            tensors,
            bytes,
        })
    }

    /// The metadata value for `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The table entry named `name`.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The data bytes of a table entry (bounds were validated by [`Layout::parse`]).
    pub fn data(&self, entry: &TensorEntry) -> &'a [u8] {
        let start = entry.offset as usize;
        self.bytes
            .get(start..start + entry.len as usize)
            .unwrap_or(&[])
    }

    /// Checks every tensor's CRC-32, and that q8 blocks hold no −128 (the format's codes are
    /// `−127..=127`, which the kernels rely on); the error names the first bad tensor.
    pub fn verify_tensors(&self) -> Result<()> {
        for t in &self.tensors {
            let data = self.data(t);
            let crc = crc32fast::hash(data);
            if crc != t.crc32 {
                return Err(Error::format(format!(
                    "tensor {} is damaged: CRC-32 {crc:08x}, the table says {:08x}",
                    t.name, t.crc32
                )));
            }
            if t.dtype == DType::Q8 {
                check_q8_codes(&t.name, data)?;
            }
        }
        Ok(())
    }
}

/// An error if a q8 block of `data` holds the code −128 (outside the format's `−127..=127`).
fn check_q8_codes(name: &str, data: &[u8]) -> Result<()> {
    const BLOCK: usize = 2 + QK;
    match data
        .chunks_exact(BLOCK)
        .position(|b| b[2..].iter().map(|&q| (q == 0x80) as u32).sum::<u32>() > 0)
    {
        Some(i) => Err(Error::format(format!(
            "tensor {name}: q8 block {i} holds the code -128 (q8 codes are -127..=127)"
        ))),
        None => Ok(()),
    }
}

/// The fixed 64-byte preamble.
#[derive(Debug, Default)]
struct Preamble {
    header_len: u32,
    header_crc: u32,
    tokenizer_crc: u32,
    tokenizer_offset: u64,
    tokenizer_len: u64,
    data_offset: u64,
    file_len: u64,
}

impl Preamble {
    fn read(bytes: &[u8]) -> Result<Self> {
        let p = bytes.get(..PREAMBLE_LEN).ok_or_else(|| {
            Error::format(format!(
                "file is {} bytes, too short for a .g2q header",
                bytes.len()
            ))
        })?;
        if p[..8] != MAGIC {
            return Err(Error::format(
                "not a gpt2q model file (bad magic); convert checkpoints with gpt2q-convert",
            ));
        }
        let version = LE::read_u32(&p[8..12]);
        if version != VERSION {
            return Err(Error::format(format!(
                "unsupported .g2q version {version}; this gpt2q reads version {VERSION} (re-convert the model)"
            )));
        }
        check_crc("preamble", &p[..60], LE::read_u32(&p[60..64]))?;
        let pre = Preamble {
            header_len: LE::read_u32(&p[12..16]),
            header_crc: LE::read_u32(&p[16..20]),
            tokenizer_crc: LE::read_u32(&p[20..24]),
            tokenizer_offset: LE::read_u64(&p[24..32]),
            tokenizer_len: LE::read_u64(&p[32..40]),
            data_offset: LE::read_u64(&p[40..48]),
            file_len: LE::read_u64(&p[48..56]),
        };
        if pre.file_len != bytes.len() as u64 {
            return Err(Error::format(format!(
                "file is {} bytes but its header says {} (truncated or damaged download?)",
                bytes.len(),
                pre.file_len
            )));
        }
        if !pre.data_offset.is_multiple_of(ALIGN) || pre.data_offset > pre.file_len {
            return Err(Error::format(format!(
                "bad tensor data offset {}",
                pre.data_offset
            )));
        }
        Ok(pre)
    }

    fn write(&self) -> [u8; PREAMBLE_LEN] {
        let mut p = [0u8; PREAMBLE_LEN];
        p[..8].copy_from_slice(&MAGIC);
        LE::write_u32(&mut p[8..12], VERSION);
        LE::write_u32(&mut p[12..16], self.header_len);
        LE::write_u32(&mut p[16..20], self.header_crc);
        LE::write_u32(&mut p[20..24], self.tokenizer_crc);
        LE::write_u64(&mut p[24..32], self.tokenizer_offset);
        LE::write_u64(&mut p[32..40], self.tokenizer_len);
        LE::write_u64(&mut p[40..48], self.data_offset);
        LE::write_u64(&mut p[48..56], self.file_len);
        let crc = crc32fast::hash(&p[..60]);
        LE::write_u32(&mut p[60..64], crc);
        p
    }
}

fn section<'a>(bytes: &'a [u8], offset: u64, len: u64, what: &str) -> Result<&'a [u8]> {
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| {
            Error::format(format!(
                "{what} section ({offset}+{len}) runs past the end of the file"
            ))
        })?;
    Ok(&bytes[offset as usize..end as usize])
}

fn check_crc(what: &str, data: &[u8], expected: u32) -> Result<()> {
    let crc = crc32fast::hash(data);
    if crc == expected {
        Ok(())
    } else {
        Err(Error::format(format!(
            "the {what} is damaged (CRC-32 {crc:08x}, expected {expected:08x})"
        )))
    }
}

fn read_metadata(c: &mut Cursor<'_>) -> Result<Vec<(String, String)>> {
    let n = c.u32("metadata count")?;
    if n > MAX_METADATA {
        return Err(Error::format(format!(
            "{n} metadata entries is more than the limit of {MAX_METADATA}"
        )));
    }
    (0..n)
        .map(|_| Ok((c.string("metadata key")?, c.string("metadata value")?)))
        .collect()
}

fn read_table(c: &mut Cursor<'_>, data_offset: u64, file_len: u64) -> Result<Vec<TensorEntry>> {
    let n = c.u32("tensor count")?;
    if n > MAX_TENSORS {
        return Err(Error::format(format!(
            "{n} tensors is more than the limit of {MAX_TENSORS}"
        )));
    }
    let mut tensors: Vec<TensorEntry> = Vec::with_capacity(n as usize);
    let mut names = HashSet::new();
    for _ in 0..n {
        let t = read_entry(c)?;
        validate_entry(&t, data_offset, file_len)?;
        if !names.insert(t.name.clone()) {
            return Err(Error::format(format!(
                "tensor {} appears twice in the table",
                t.name
            )));
        }
        tensors.push(t);
    }
    check_no_overlap(&tensors)?;
    Ok(tensors)
}

fn read_entry(c: &mut Cursor<'_>) -> Result<TensorEntry> {
    let name = c.string("tensor name")?;
    let code = c.u32("tensor dtype")?;
    let dtype = DType::from_code(code)
        .ok_or_else(|| Error::format(format!("tensor {name}: unknown dtype code {code}")))?;
    let ndim = c.u32("tensor rank")?;
    if ndim == 0 || ndim > MAX_DIMS {
        return Err(Error::format(format!(
            "tensor {name}: rank {ndim} is not in 1..={MAX_DIMS}"
        )));
    }
    let shape = (0..ndim)
        .map(|_| c.u64("tensor shape"))
        .collect::<Result<Vec<_>>>()?;
    Ok(TensorEntry {
        name,
        dtype,
        shape,
        offset: c.u64("tensor offset")?,
        len: c.u64("tensor length")?,
        crc32: c.u32("tensor checksum")?,
    })
}

fn validate_entry(t: &TensorEntry, data_offset: u64, file_len: u64) -> Result<()> {
    let expected = t.dtype.tensor_bytes(&t.shape).ok_or_else(|| {
        Error::format(format!(
            "tensor {}: shape {:?} cannot be stored as {}",
            t.name,
            t.shape,
            t.dtype.name()
        ))
    })?;
    if expected != t.len {
        return Err(Error::format(format!(
            "tensor {}: {} bytes in the table, but {:?} {} needs {expected}",
            t.name,
            t.len,
            t.shape,
            t.dtype.name()
        )));
    }
    if !t.offset.is_multiple_of(ALIGN) || t.offset < data_offset {
        return Err(Error::format(format!(
            "tensor {}: offset {} is not a {ALIGN}-byte aligned position in the data section",
            t.name, t.offset
        )));
    }
    match t.offset.checked_add(t.len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Error::format(format!(
            "tensor {}: data ({}+{}) runs past the end of the file ({file_len} bytes)",
            t.name, t.offset, t.len
        ))),
    }
}

fn check_no_overlap(tensors: &[TensorEntry]) -> Result<()> {
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.len, t.name.as_str()))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(Error::format(format!(
                "tensors {} and {} overlap",
                w[0].2, w[1].2
            )));
        }
    }
    Ok(())
}

/// A bounds-checked little-endian reader over a byte slice: every read returns `Result`.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end =
            end.ok_or_else(|| Error::format(format!("header ends in the middle of the {what}")))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(LE::read_u32(self.take(4, what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(LE::read_u64(self.take(8, what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u32(what)? as usize;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| Error::format(format!("the {what} is not UTF-8")))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Everything about a file except the tensor data: serialised once to know the offsets, and again
/// with the checksums once the data has been written.
struct HeaderPlan {
    hparams: HParams,
    metadata: Vec<(String, String)>,
    tensors: Vec<TensorEntry>,
}

impl HeaderPlan {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.hparams.write(&mut out);
        out.extend_from_slice(&(self.metadata.len() as u32).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut out, k);
            put_string(&mut out, v);
        }
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&t.dtype.code().to_le_bytes());
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.offset.to_le_bytes());
            out.extend_from_slice(&t.len.to_le_bytes());
            out.extend_from_slice(&t.crc32.to_le_bytes());
        }
        out
    }
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// Writes `.g2q` files. Tensor data is produced one tensor at a time by a callback, so a converter
/// never holds more than one converted tensor in memory.
pub struct ModelWriter {
    plan: HeaderPlan,
    tokenizer: Vec<u8>,
}

impl ModelWriter {
    /// Plans a file: validates the hyper-parameters and every tensor spec (dtype can hold the shape,
    /// names unique), and lays the tensors out in the given order.
    pub fn new(
        hparams: HParams,
        metadata: Vec<(String, String)>,
        tokenizer_section: Vec<u8>,
        specs: Vec<TensorSpec>,
    ) -> Result<Self> {
        hparams.validate()?;
        let mut names = HashSet::new();
        let mut tensors = Vec::with_capacity(specs.len());
        for s in specs {
            let len = s.dtype.tensor_bytes(&s.shape).ok_or_else(|| {
                Error::invalid(format!(
                    "tensor {}: shape {:?} cannot be stored as {}",
                    s.name,
                    s.shape,
                    s.dtype.name()
                ))
            })?;
            if !names.insert(s.name.clone()) {
                return Err(Error::invalid(format!("tensor {} given twice", s.name)));
            }
            tensors.push(TensorEntry {
                name: s.name,
                dtype: s.dtype,
                shape: s.shape,
                offset: 0,
                len,
                crc32: 0,
            });
        }
        let mut writer = ModelWriter {
            plan: HeaderPlan {
                hparams,
                metadata,
                tensors,
            },
            tokenizer: tokenizer_section,
        };
        writer.assign_offsets();
        Ok(writer)
    }

    /// Offsets depend only on the header's size, which the checksums do not change.
    fn assign_offsets(&mut self) {
        let header_len = self.plan.to_bytes().len() as u64;
        let tokenizer_offset = PREAMBLE_LEN as u64 + header_len;
        let mut offset = align_up(tokenizer_offset + self.tokenizer.len() as u64);
        for t in &mut self.plan.tensors {
            t.offset = offset;
            offset = align_up(offset + t.len);
        }
    }

    /// The planned table (offsets assigned, checksums not yet known).
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.plan.tensors
    }

    fn preamble(&self, header: &[u8], file_len: u64) -> Preamble {
        let tokenizer_offset = (PREAMBLE_LEN + header.len()) as u64;
        Preamble {
            header_len: header.len() as u32,
            header_crc: crc32fast::hash(header),
            tokenizer_crc: crc32fast::hash(&self.tokenizer),
            tokenizer_offset,
            tokenizer_len: self.tokenizer.len() as u64,
            data_offset: align_up(tokenizer_offset + self.tokenizer.len() as u64),
            file_len,
        }
    }

    /// Writes the file to `path` atomically: into a temporary file in the same directory, fsync,
    /// then rename over `path`. `tensor_data(i)` must return exactly the planned bytes of tensor
    /// `i`. On any error the temporary file is removed and `path` is untouched.
    pub fn write_atomic(
        self,
        path: &Path,
        tensor_data: impl FnMut(usize, &TensorEntry) -> Result<Vec<u8>>,
    ) -> Result<()> {
        self.write_file(path, &temp_path(path), true, &mut whole(tensor_data))
    }

    /// As [`ModelWriter::write_atomic`], but never replaces an existing `path`, even one that
    /// appears while the file is being written: the finished file is hard-linked into place, which
    /// fails if `path` exists (on file systems without hard links, such as FAT, it checks and then
    /// renames). An existing `path` is an [`Error::InvalidInput`].
    pub fn write_new(
        self,
        path: &Path,
        tensor_data: impl FnMut(usize, &TensorEntry) -> Result<Vec<u8>>,
    ) -> Result<()> {
        self.write_file(path, &temp_path(path), false, &mut whole(tensor_data))
    }

    /// As [`ModelWriter::write_atomic`] (or [`ModelWriter::write_new`] unless `replace`), with
    /// the temporary file at `temp` (same directory as `path`, so the rename is atomic) and the
    /// tensors streamed: `tensor_data(i, entry, sink)` passes tensor `i`'s bytes to `sink` in as
    /// many pieces as it likes, so no whole tensor needs to be in memory. On any error `temp`
    /// is removed and `path` is untouched.
    pub fn write_streaming(
        self,
        path: &Path,
        temp: &Path,
        replace: bool,
        mut tensor_data: impl FnMut(usize, &TensorEntry, &mut ByteSink<'_>) -> Result<()>,
    ) -> Result<()> {
        self.write_file(path, temp, replace, &mut tensor_data)
    }

    fn write_file(
        mut self,
        path: &Path,
        tmp: &Path,
        replace: bool,
        tensor_data: &mut StreamFn<'_>,
    ) -> Result<()> {
        let result = (|| {
            let mut file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
            self.write_body(&mut file, tmp, tensor_data)?;
            file.sync_all().map_err(|e| Error::io(tmp, e))?;
            publish(tmp, path, replace)?;
            sync_parent_dir(path);
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        result
    }

    /// Serialises the whole file into memory (for tests and synthetic models).
    pub fn write_to_vec(
        mut self,
        tensor_data: impl FnMut(usize, &TensorEntry) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut cur = std::io::Cursor::new(Vec::new());
        self.write_body(&mut cur, Path::new("<memory>"), &mut whole(tensor_data))?;
        Ok(cur.into_inner())
    }

    fn write_body<W: Write + Seek>(
        &mut self,
        w: &mut W,
        path: &Path,
        tensor_data: &mut StreamFn<'_>,
    ) -> Result<()> {
        let io = |e| Error::io(path, e);
        let header = self.plan.to_bytes();
        w.write_all(&[0u8; PREAMBLE_LEN]).map_err(io)?;
        w.write_all(&header).map_err(io)?;
        w.write_all(&self.tokenizer).map_err(io)?;
        let mut pos = (PREAMBLE_LEN + header.len() + self.tokenizer.len()) as u64;
        for i in 0..self.plan.tensors.len() {
            let entry = &self.plan.tensors[i];
            w.write_all(&vec![0u8; (entry.offset - pos) as usize])
                .map_err(io)?;
            let (mut written, mut crc) = (0u64, crc32fast::Hasher::new());
            let mut sink = |bytes: &[u8]| {
                written += bytes.len() as u64;
                if written > entry.len {
                    return Err(wrong_length(entry, written));
                }
                crc.update(bytes);
                w.write_all(bytes).map_err(io)
            };
            tensor_data(i, entry, &mut sink)?;
            if written != entry.len {
                return Err(wrong_length(entry, written));
            }
            pos = entry.offset + entry.len;
            self.plan.tensors[i].crc32 = crc.finalize();
        }
        let header = self.plan.to_bytes();
        let preamble = self.preamble(&header, pos);
        w.seek(SeekFrom::Start(0)).map_err(io)?;
        w.write_all(&preamble.write()).map_err(io)?;
        w.write_all(&header).map_err(io)?;
        w.flush().map_err(io)
    }
}

/// Receives one tensor's bytes, in as many pieces as the producer likes.
pub type ByteSink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

/// A tensor-data callback that streams its bytes into a sink.
type StreamFn<'a> = dyn FnMut(usize, &TensorEntry, &mut ByteSink<'_>) -> Result<()> + 'a;

/// Adapts a callback returning each tensor whole to the streaming form.
fn whole(
    mut tensor_data: impl FnMut(usize, &TensorEntry) -> Result<Vec<u8>>,
) -> impl FnMut(usize, &TensorEntry, &mut ByteSink<'_>) -> Result<()> {
    move |i, entry, sink| sink(&tensor_data(i, entry)?)
}

/// A tensor whose bytes do not add up to its planned length.
fn wrong_length(entry: &TensorEntry, written: u64) -> Error {
    Error::invalid(format!(
        "tensor {}: {written} bytes produced, {} planned",
        entry.name, entry.len
    ))
}

/// Moves the finished temporary file `tmp` to `path`; unless `replace`, fails rather than replace
/// an existing `path`.
fn publish(tmp: &Path, path: &Path, replace: bool) -> Result<()> {
    let exists = || {
        Error::invalid(format!(
            "{} already exists; not replacing it",
            path.display()
        ))
    };
    if !replace {
        match std::fs::hard_link(tmp, path) {
            Ok(()) => {
                let _ = std::fs::remove_file(tmp);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
            // No hard links on this file system: check, then rename (not atomic against a racer).
            Err(_) if path.exists() => return Err(exists()),
            Err(_) => {}
        }
    }
    std::fs::rename(tmp, path).map_err(|e| Error::io(path, e))
}

/// `dir/.name.tmp-<pid>`: same directory (so the rename is atomic), hidden, unique per process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Makes the rename durable; failure only weakens durability after a power cut, so it is ignored.
fn sync_parent_dir(path: &Path) {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_code_minus_128_is_refused() {
        let mut blocks = vec![0u8; 3 * (2 + QK)];
        blocks[2 + QK + 2 + 5] = 0x81;
        assert!(check_q8_codes("w", &blocks).is_ok());
        blocks[2 * (2 + QK) + 2 + 31] = 0x80;
        let err = check_q8_codes("w", &blocks).unwrap_err().to_string();
        assert!(
            err.contains("tensor w: q8 block 2 holds the code -128"),
            "{err}"
        );
        // A scale byte of 0x80 is an f16 bit pattern, not a code.
        let mut scale_only = vec![0u8; 2 + QK];
        scale_only[1] = 0x80;
        assert!(check_q8_codes("w", &scale_only).is_ok());
    }

    fn hparams() -> HParams {
        HParams {
            n_vocab: 10,
            n_ctx: 8,
            n_embd: 32,
            n_head: 2,
            n_layer: 1,
            n_inner: 128,
            layer_norm_eps: 1e-5,
            activation: Activation::GeluTanh,
            bos_id: 9,
            eos_id: 9,
        }
    }

    fn small_file() -> Vec<u8> {
        let specs = vec![
            TensorSpec {
                name: "a".into(),
                dtype: DType::F32,
                shape: vec![3],
            },
            TensorSpec {
                name: "b".into(),
                dtype: DType::Q8,
                shape: vec![2, 32],
            },
            TensorSpec {
                name: "c".into(),
                dtype: DType::Q4,
                shape: vec![1, 64],
            },
        ];
        let meta = vec![("converter".to_string(), "test".to_string())];
        let w = ModelWriter::new(hparams(), meta, vec![1, 2, 3], specs).unwrap();
        w.write_to_vec(|i, e| Ok(vec![i as u8 + 1; e.len as usize]))
            .unwrap()
    }

    #[test]
    fn written_file_parses_back() {
        let bytes = small_file();
        let layout = Layout::parse(&bytes).unwrap();
        assert_eq!(layout.hparams, hparams());
        assert_eq!(layout.tokenizer, &[1, 2, 3]);
        assert_eq!(layout.meta("converter"), Some("test"));
        assert_eq!(layout.tensors.len(), 3);
        for (i, t) in layout.tensors.iter().enumerate() {
            assert_eq!(t.offset % ALIGN, 0);
            assert!(layout.data(t).iter().all(|&b| b == i as u8 + 1));
        }
        layout.verify_tensors().unwrap();
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = small_file();
        for n in 0..bytes.len() {
            assert!(Layout::parse(&bytes[..n]).is_err(), "truncated at {n}");
        }
    }

    #[test]
    fn flipped_bytes_are_errors_or_caught_by_verify() {
        let bytes = small_file();
        let layout = Layout::parse(&bytes).unwrap();
        let tokenizer_end =
            layout.tokenizer.as_ptr() as usize - bytes.as_ptr() as usize + layout.tokenizer.len();
        let covered = |i: u64| {
            i < tokenizer_end as u64
                || layout
                    .tensors
                    .iter()
                    .any(|t| (t.offset..t.offset + t.len).contains(&i))
        };
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let ok = Layout::parse(&b).and_then(|l| l.verify_tensors()).is_ok();
            // Alignment padding is the only part no checksum covers.
            assert!(!ok || !covered(i as u64), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn write_new_never_replaces_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("gpt2q-write-new-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.g2q");
        let _ = std::fs::remove_file(&path);
        let writer = || {
            let specs = vec![TensorSpec {
                name: "a".into(),
                dtype: DType::F32,
                shape: vec![3],
            }];
            ModelWriter::new(hparams(), Vec::new(), vec![7], specs).unwrap()
        };
        let data = |_: usize, e: &TensorEntry| Ok(vec![1u8; e.len as usize]);
        writer().write_new(&path, data).unwrap();
        let first = std::fs::read(&path).unwrap();
        Layout::parse(&first).unwrap();
        std::fs::write(&path, b"someone else's file").unwrap();
        let err = writer().write_new(&path, data).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's file");
        writer().write_atomic(&path, data).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["m.g2q"], "temporary files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_version_is_named() {
        let mut bytes = small_file();
        bytes[8] = 2;
        let err = Layout::parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
    }
}
