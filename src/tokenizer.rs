//! GPT-2's byte-level BPE tokenizer, matching Hugging Face transformers' `GPT2Tokenizer` id for id.
//!
//! This module owns:
//! - the byte ↔ printable-char alphabet of GPT-2's `encoder.py` ([`byte_to_unicode`]), in which
//!   `vocab.json` and `merges.txt` spell their tokens;
//! - encoding: splitting on special tokens, pre-tokenising with a hand-written scanner that behaves as
//!   GPT-2's split regex, and BPE merging of each pre-token's UTF-8 bytes;
//! - decoding, whole ([`Tokenizer::decode`]) and streamed ([`Utf8Stream`]);
//! - the tokenizer section of a `.g2q` file ([`Tokenizer::write_section`], [`Tokenizer::from_section`]).
//!
//! It reads no files and parses no JSON: the converter parses `vocab.json` and hands the entries to
//! [`Tokenizer::from_hf`], and the `.g2q` reader hands [`Tokenizer::from_section`] the section's bytes.
//!
//! Tokenizer section layout (all integers little-endian):
//! ```text
//! u32 n_tokens, u32 n_merges, u32 n_special
//! n_tokens  × { u16 byte_len, byte_len bytes }     token id = index
//! n_merges  × { u32 left_id, u32 right_id }        rank = index; result = token whose bytes are left++right
//! n_special × { u32 id, u16 text_len, UTF-8 text }
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::error::{Error, Result};

/// Id of `<|endoftext|>` in GPT-2's vocabulary.
pub const ENDOFTEXT_ID: u32 = 50256;
/// GPT-2's document separator, used as both BOS and EOS; a special token.
pub const ENDOFTEXT: &str = "<|endoftext|>";

// ------------------------------------------------------------------------------------------------
// The byte alphabet of `bytes_to_unicode`
// ------------------------------------------------------------------------------------------------

/// Bytes that `bytes_to_unicode` maps to the char with the same code point.
const fn is_printable_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff)
}

/// The other bytes (0x00..=0x20, 0x7f..=0xa0, 0xad) get code points 256, 257, ... in byte order.
const FIRST_EXTRA_CODE: u32 = 256;
/// How many bytes are not printable.
const N_EXTRA: usize = 68;

/// The char of every byte.
const BYTE_TO_CHAR: [char; 256] = build_byte_to_char();
/// The byte of code point `FIRST_EXTRA_CODE + i`.
const EXTRA_TO_BYTE: [u8; N_EXTRA] = build_extra_to_byte();

const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = FIRST_EXTRA_CODE;
    let mut b = 0;
    while b < 256 {
        let code = if is_printable_byte(b as u8) {
            b as u32
        } else {
            next_extra += 1;
            next_extra - 1
        };
        table[b] = match char::from_u32(code) {
            Some(c) => c,
            None => panic!("bytes_to_unicode code points are all below 0x144"),
        };
        b += 1;
    }
    assert!(next_extra == FIRST_EXTRA_CODE + N_EXTRA as u32);
    table
}

const fn build_extra_to_byte() -> [u8; N_EXTRA] {
    let mut table = [0; N_EXTRA];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        if !is_printable_byte(b as u8) {
            table[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    assert!(n == N_EXTRA);
    table
}

/// GPT-2's reversible map from bytes to printable unicode chars (the `bytes_to_unicode` table of the
/// original `encoder.py`): printable Latin-1 bytes map to themselves, the rest to U+0100..=U+0143.
pub fn byte_to_unicode(b: u8) -> char {
    BYTE_TO_CHAR[usize::from(b)]
}

/// The inverse of [`byte_to_unicode`]; `None` for chars outside GPT-2's byte alphabet.
pub fn unicode_to_byte(c: char) -> Option<u8> {
    let code = u32::from(c);
    match u8::try_from(code) {
        Ok(b) => is_printable_byte(b).then_some(b),
        Err(_) => {
            let extra = code.checked_sub(FIRST_EXTRA_CODE)?;
            EXTRA_TO_BYTE.get(usize::try_from(extra).ok()?).copied()
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Pre-tokenisation: GPT-2's split regex, by hand
// ------------------------------------------------------------------------------------------------

/// What GPT-2's split regex distinguishes: `\p{L}`, `\p{N}`, `\s`, and everything else.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CharClass {
    Letter,
    Number,
    Space,
    Other,
}

/// The class of `c` as Python's `regex` module sees it: `\s` is the White_Space property (which is
/// `char::is_whitespace`), `\p{L}` the Lu/Ll/Lt/Lm/Lo categories, `\p{N}` Nd/Nl/No.
fn char_class(c: char) -> CharClass {
    if c.is_ascii_alphabetic() {
        CharClass::Letter
    } else if c.is_ascii_digit() {
        CharClass::Number
    } else if c.is_whitespace() {
        CharClass::Space
    } else if c.is_ascii() {
        CharClass::Other
    } else {
        match c.general_category_group() {
            GeneralCategoryGroup::Letter => CharClass::Letter,
            GeneralCategoryGroup::Number => CharClass::Number,
            _ => CharClass::Other,
        }
    }
}

/// The contractions GPT-2's regex splits off (case-sensitively) before anything else.
const CONTRACTIONS: [&str; 7] = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];

/// The pre-tokens of `text`: the matches of `re.findall` with GPT-2's pattern
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
/// Every char is in some alternative, so the matches cover the text without gaps.
struct PreTokens<'a> {
    rest: &'a str,
}

impl<'a> Iterator for PreTokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let len = pretoken_len(self.rest);
        if len == 0 {
            return None;
        }
        let (token, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(token)
    }
}

/// Byte length of the pre-token at the start of `text` (0 if `text` is empty).
fn pretoken_len(text: &str) -> usize {
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return 0;
    };
    if first == '\'' {
        if let Some(contraction) = CONTRACTIONS.iter().find(|c| text.starts_with(**c)) {
            return contraction.len();
        }
    }
    if first == ' ' {
        // ` ?\p{L}+`, ` ?\p{N}+` and ` ?[^\s\p{L}\p{N}]+` take one leading plain space.
        let after_space = chars.as_str();
        if let Some(second) = after_space.chars().next() {
            let class = char_class(second);
            if class != CharClass::Space {
                return first.len_utf8() + run_len(after_space, class);
            }
        }
    }
    match char_class(first) {
        CharClass::Space => whitespace_len(text),
        class => run_len(text, class),
    }
}

/// Byte length of the run of chars of class `class` at the start of `text`.
fn run_len(text: &str, class: CharClass) -> usize {
    text.chars()
        .take_while(|&c| char_class(c) == class)
        .map(char::len_utf8)
        .sum()
}

/// Byte length of `\s+(?!\S)|\s+` at the start of `text`: a whitespace run that ends the text is
/// taken whole; one followed by a non-space gives up its last char (which may then prefix the next
/// word as its ` ?`), unless that would leave the match empty.
fn whitespace_len(text: &str) -> usize {
    let mut len = 0;
    let mut last_len = 0;
    let mut n_chars = 0;
    for c in text.chars().take_while(|c| c.is_whitespace()) {
        last_len = c.len_utf8();
        len += last_len;
        n_chars += 1;
    }
    let followed_by_non_space = len < text.len();
    if followed_by_non_space && n_chars > 1 {
        len - last_len
    } else {
        len
    }
}

// ------------------------------------------------------------------------------------------------
// The merge table's hash map
// ------------------------------------------------------------------------------------------------

/// The merge table's key for the pair (`left`, `right`).
fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// A fast hasher for the merge table's `u64` keys (murmur3's finaliser: all input bits reach the low
/// bits the table indexes by). The keys come from the model file; user text only drives lookups, so
/// SipHash's flooding resistance buys nothing here.
#[derive(Default, Clone, Copy)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = self.0.rotate_left(32) ^ x;
    }
}

type MergeRanks = HashMap<u64, u32, BuildHasherDefault<PairHasher>>;

// ------------------------------------------------------------------------------------------------
// The tokenizer
// ------------------------------------------------------------------------------------------------

/// GPT-2's byte-level BPE tokenizer: a vocabulary of byte strings, ranked merges, special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    /// All tokens' bytes back to back: token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    /// Merges in rank order, as (left, right) token ids.
    merges: Vec<(u32, u32)>,
    /// The token each merge produces, by rank.
    merge_results: Vec<u32>,
    /// The rank of each mergeable pair, keyed by [`pair_key`].
    merge_ranks: MergeRanks,
    /// The single-byte token of each byte.
    byte_tokens: [u32; 256],
    /// Special tokens as (text, id); the text is the token's bytes.
    special: Vec<(String, u32)>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_tokens", &self.n_tokens())
            .field("n_merges", &self.merges.len())
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    /// Build from token byte strings (index = id), merges in rank order as pairs of token ids, and
    /// special tokens as (text, id).
    ///
    /// Validates, failing with [`Error::format`] naming the problem: fewer than `u32::MAX` tokens,
    /// merges and special tokens; every token non-empty, at most 65535 bytes and unique (no two tokens may
    /// share bytes: a merge result or a byte would be ambiguous); a token for each of the 256 single
    /// bytes; every merge's parts < `n_tokens`, their concatenation itself a token, and no pair
    /// merged twice; every special id < `n_tokens`, its text non-empty, unique and equal to the
    /// token's bytes (so decoding gives the text back).
    pub fn new(
        tokens: Vec<Vec<u8>>,
        merges: Vec<(u32, u32)>,
        special: Vec<(String, u32)>,
    ) -> Result<Self> {
        check_count("tokens", tokens.len())?;
        check_count("merges", merges.len())?;
        check_count("special tokens", special.len())?;
        let index = index_tokens(&tokens)?;
        let byte_tokens = single_byte_tokens(&index)?;
        let (merge_ranks, merge_results) = index_merges(&tokens, &index, &merges)?;
        check_special(&tokens, &special)?;
        let (bytes, offsets) = flatten_tokens(&tokens);
        Ok(Self {
            bytes,
            offsets,
            merges,
            merge_results,
            merge_ranks,
            byte_tokens,
            special,
        })
    }

    /// Build from Hugging Face files: `vocab` = the (token string in the byte-to-unicode alphabet, id)
    /// entries already parsed out of `vocab.json` by the caller, and `merges_txt` = the text of
    /// `merges.txt` (first line may be a `#version` comment; each other non-empty line is
    /// `left right`). The special token `<|endoftext|>` is registered if present in vocab. Ids must be
    /// `0..n` dense.
    pub fn from_hf(vocab: Vec<(String, u32)>, merges_txt: &str) -> Result<Self> {
        let tokens = decode_vocab(&vocab)?;
        let ids: HashMap<&str, u32> = vocab.iter().map(|(s, id)| (s.as_str(), *id)).collect();
        let merges = parse_merges(merges_txt, &ids)?;
        let special = match ids.get(ENDOFTEXT) {
            Some(&id) => vec![(ENDOFTEXT.to_string(), id)],
            None => Vec::new(),
        };
        Self::new(tokens, merges, special)
    }

    /// Number of tokens in the vocabulary (special tokens included).
    pub fn n_tokens(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The bytes of token `id`, or `None` if `id >= n_tokens`.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = usize::try_from(id).ok()?;
        let start = *self.offsets.get(i)?;
        let end = *self.offsets.get(i.checked_add(1)?)?;
        self.bytes.get(start..end)
    }

    /// The merges in rank order, as (left, right) token ids, for serialisation.
    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    /// The special tokens as (text, id).
    pub fn special_tokens(&self) -> &[(String, u32)] {
        &self.special
    }

    /// Encode text; special-token strings (e.g. `<|endoftext|>`) in the text become their ids.
    /// Where special tokens overlap, the leftmost wins, then the longest.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut scratch = BpeScratch::default();
        let mut finder = SpecialFinder::new(text, &self.special);
        let mut pos = 0;
        while let Some((start, len, id)) = finder.next_match(pos) {
            // `pos` and `start` are char boundaries: both come from `str::find` matches in `text`.
            self.encode_ordinary_into(&text[pos..start], &mut scratch, &mut out);
            out.push(id);
            pos = start + len;
        }
        self.encode_ordinary_into(&text[pos..], &mut scratch, &mut out);
        out
    }

    /// Encode text treating special-token strings as ordinary text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_ordinary_into(text, &mut BpeScratch::default(), &mut out);
        out
    }

    /// Raw bytes of the concatenated tokens (ids >= `n_tokens` are an [`Error::invalid`] naming the
    /// id).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let bytes = self.token_bytes(id).ok_or_else(|| {
                Error::invalid(format!(
                    "token id {id} is out of range: the vocabulary has {} tokens",
                    self.n_tokens()
                ))
            })?;
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// As [`decode_bytes`](Self::decode_bytes), then UTF-8 with invalid sequences replaced by U+FFFD
    /// (as Hugging Face's `errors="replace"`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Append the tokenizer section (layout in the module docs) to `out`.
    pub fn write_section(&self, out: &mut Vec<u8>) {
        put_u32(out, self.n_tokens());
        put_u32(out, self.merges.len());
        put_u32(out, self.special.len());
        for bytes in self
            .offsets
            .windows(2)
            .filter_map(|w| self.bytes.get(w[0]..w[1]))
        {
            put_u16(out, bytes.len());
            out.extend_from_slice(bytes);
        }
        for &(left, right) in &self.merges {
            out.extend_from_slice(&left.to_le_bytes());
            out.extend_from_slice(&right.to_le_bytes());
        }
        for (text, id) in &self.special {
            out.extend_from_slice(&id.to_le_bytes());
            put_u16(out, text.len());
            out.extend_from_slice(text.as_bytes());
        }
    }

    /// Parse a tokenizer section (layout in the module docs); `bytes` must be exactly one section.
    /// Any malformed input is an [`Error::format`]; this never panics, and allocates no more than a
    /// small multiple of `bytes.len()`.
    pub fn from_section(bytes: &[u8]) -> Result<Self> {
        let mut reader = SectionReader { bytes, pos: 0 };
        let n_tokens = reader.u32("token count")?;
        let n_merges = reader.u32("merge count")?;
        let n_special = reader.u32("special token count")?;
        reader.check_counts_fit(n_tokens, n_merges, n_special)?;
        let tokens = (0..n_tokens)
            .map(|id| reader.read_token(id))
            .collect::<Result<Vec<_>>>()?;
        let merges = (0..n_merges)
            .map(|rank| reader.read_merge(rank))
            .collect::<Result<Vec<_>>>()?;
        let special = (0..n_special)
            .map(|i| reader.read_special(i))
            .collect::<Result<Vec<_>>>()?;
        reader.expect_end()?;
        Self::new(tokens, merges, special)
    }

    /// Pre-tokenise `text` (which holds no special tokens) and append each pre-token's BPE ids.
    fn encode_ordinary_into(&self, text: &str, scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        for piece in (PreTokens { rest: text }) {
            self.bpe_into(piece.as_bytes(), scratch, out);
        }
    }

    /// Append the BPE tokens of one pre-token: repeatedly merge the adjacent pair of lowest rank.
    ///
    /// As in `GPT2Tokenizer.bpe`, each round merges *every* occurrence of the lowest-ranked pair, left
    /// to right without overlap, and only then looks at the pairs those merges created. Candidate
    /// pairs wait in a heap ordered by (rank, position); pairs created during a round join it after
    /// the round, so a merge table whose new pairs outrank old ones still behaves as Hugging Face's.
    fn bpe_into(&self, piece: &[u8], scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        if let [b] = piece {
            out.push(self.byte_tokens[usize::from(*b)]);
            return;
        }
        scratch.reset(piece, &self.byte_tokens);
        for node in 0..piece.len().saturating_sub(1) {
            self.push_candidate(scratch, node);
        }
        while let Some(&Reverse((rank, _))) = scratch.heap.peek() {
            self.merge_round(scratch, rank);
        }
        scratch.append_tokens(out);
    }

    /// Merge every live occurrence of the pair of rank `rank`, left to right, then queue the pairs
    /// the merges changed.
    fn merge_round(&self, scratch: &mut BpeScratch, rank: u32) {
        while let Some(&Reverse((r, node))) = scratch.heap.peek() {
            if r != rank {
                break;
            }
            scratch.heap.pop();
            if let Some(merged) = self.live_merge(scratch, rank, node) {
                scratch.merge_at(node, merged);
            }
        }
        let touched = std::mem::take(&mut scratch.touched);
        for &node in &touched {
            self.push_candidate(scratch, node);
        }
        scratch.touched = touched;
        scratch.touched.clear();
    }

    /// The token merge `rank` makes at `node`, if the pair there still is that merge's pair (heap
    /// entries go stale when a neighbour merges).
    fn live_merge(&self, scratch: &BpeScratch, rank: u32, node: usize) -> Option<u32> {
        let (left, right) = *self.merges.get(rank as usize)?;
        let (l, r) = scratch.pair_at(node)?;
        if l == left && r == right {
            self.merge_results.get(rank as usize).copied()
        } else {
            None
        }
    }

    /// Queue the pair starting at `node`, if `node` is live and its pair has a merge.
    fn push_candidate(&self, scratch: &mut BpeScratch, node: usize) {
        let Some((left, right)) = scratch.pair_at(node) else {
            return;
        };
        if let Some(&rank) = self.merge_ranks.get(&pair_key(left, right)) {
            scratch.heap.push(Reverse((rank, node)));
        }
    }
}

/// Fail unless `n` items fit the `u32` counts and ids of the section.
fn check_count(what: &str, n: usize) -> Result<()> {
    // `u32::MAX` itself is no id: it marks merged-away nodes in BPE.
    if u32::try_from(n).is_ok_and(|n| n < u32::MAX) {
        Ok(())
    } else {
        Err(Error::format(format!(
            "tokenizer has {n} {what}; at most {} are supported",
            u32::MAX - 1
        )))
    }
}

/// Map each token's bytes to its id, checking tokens are non-empty, short enough and unique.
fn index_tokens(tokens: &[Vec<u8>]) -> Result<HashMap<&[u8], u32>> {
    let mut index = HashMap::with_capacity(tokens.len());
    for (id, bytes) in (0u32..).zip(tokens) {
        if bytes.is_empty() {
            return Err(Error::format(format!("tokenizer token {id} is empty")));
        }
        if bytes.len() > usize::from(u16::MAX) {
            return Err(Error::format(format!(
                "tokenizer token {id} is {} bytes long; at most {} are supported",
                bytes.len(),
                u16::MAX
            )));
        }
        if let Some(first) = index.insert(bytes.as_slice(), id) {
            return Err(Error::format(format!(
                "tokenizer tokens {first} and {id} are the same bytes {:?}",
                String::from_utf8_lossy(bytes)
            )));
        }
    }
    Ok(index)
}

/// The token of each single byte; every byte must have one, or some text could not be encoded.
fn single_byte_tokens(index: &HashMap<&[u8], u32>) -> Result<[u32; 256]> {
    let mut table = [0; 256];
    for (b, slot) in (0u8..=255).zip(table.iter_mut()) {
        *slot = *index.get([b].as_slice()).ok_or_else(|| {
            Error::format(format!(
                "tokenizer has no token for the single byte 0x{b:02x}"
            ))
        })?;
    }
    Ok(table)
}

/// The rank of each merge's pair and the token each merge produces, checking the parts are tokens,
/// their concatenation is a token and no pair is merged twice.
fn index_merges(
    tokens: &[Vec<u8>],
    index: &HashMap<&[u8], u32>,
    merges: &[(u32, u32)],
) -> Result<(MergeRanks, Vec<u32>)> {
    let mut ranks = MergeRanks::with_capacity_and_hasher(merges.len(), Default::default());
    let mut results = Vec::with_capacity(merges.len());
    let mut joined = Vec::new();
    for (rank, &(left, right)) in (0u32..).zip(merges) {
        let part = |id: u32| {
            tokens.get(id as usize).ok_or_else(|| {
                Error::format(format!(
                    "tokenizer merge {rank} ({left}, {right}): token id {id} is out of range \
                     (there are {} tokens)",
                    tokens.len()
                ))
            })
        };
        joined.clear();
        joined.extend_from_slice(part(left)?);
        joined.extend_from_slice(part(right)?);
        let merged = *index.get(joined.as_slice()).ok_or_else(|| {
            Error::format(format!(
                "tokenizer merge {rank} ({left}, {right}) makes {:?}, which is not a token",
                String::from_utf8_lossy(&joined)
            ))
        })?;
        if let Some(first) = ranks.insert(pair_key(left, right), rank) {
            return Err(Error::format(format!(
                "tokenizer merges {first} and {rank} are both the pair ({left}, {right})"
            )));
        }
        results.push(merged);
    }
    Ok((ranks, results))
}

/// Check each special token's id is a token whose bytes are its (non-empty, unique) text.
fn check_special(tokens: &[Vec<u8>], special: &[(String, u32)]) -> Result<()> {
    for (i, (text, id)) in special.iter().enumerate() {
        let bytes = tokens.get(*id as usize).ok_or_else(|| {
            Error::format(format!(
                "special token {text:?} has id {id}, out of range (there are {} tokens)",
                tokens.len()
            ))
        })?;
        if text.is_empty() {
            return Err(Error::format(format!(
                "special token with id {id} has empty text"
            )));
        }
        if bytes.as_slice() != text.as_bytes() {
            return Err(Error::format(format!(
                "special token {text:?} has id {id}, whose bytes are {:?}",
                String::from_utf8_lossy(bytes)
            )));
        }
        if special[..i].iter().any(|(earlier, _)| earlier == text) {
            return Err(Error::format(format!(
                "special token {text:?} is listed twice"
            )));
        }
    }
    Ok(())
}

/// All tokens' bytes back to back, and the offset of each token's start plus the total length.
fn flatten_tokens(tokens: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::with_capacity(tokens.iter().map(Vec::len).sum());
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    offsets.push(0);
    for token in tokens {
        bytes.extend_from_slice(token);
        offsets.push(bytes.len());
    }
    (bytes, offsets)
}

/// The bytes of every vocab entry in id order, checking ids are `0..n` dense and every char is in
/// the byte alphabet.
fn decode_vocab(vocab: &[(String, u32)]) -> Result<Vec<Vec<u8>>> {
    let n = vocab.len();
    let mut tokens: Vec<Option<Vec<u8>>> = vec![None; n];
    for (text, id) in vocab {
        let slot = tokens.get_mut(*id as usize).ok_or_else(|| {
            Error::format(format!(
                "vocab token {text:?} has id {id}; ids must be 0..{n} for {n} entries"
            ))
        })?;
        if slot.is_some() {
            return Err(Error::format(format!("vocab id {id} is given twice")));
        }
        *slot = Some(alphabet_to_bytes(text)?);
    }
    // n entries with distinct ids below n fill every slot.
    Ok(tokens.into_iter().flatten().collect())
}

/// The bytes a vocab/merges token spells in the byte-to-unicode alphabet.
fn alphabet_to_bytes(text: &str) -> Result<Vec<u8>> {
    text.chars()
        .map(|c| {
            unicode_to_byte(c).ok_or_else(|| {
                Error::format(format!(
                    "vocab token {text:?} has {c:?}, which is not in GPT-2's byte alphabet"
                ))
            })
        })
        .collect()
}

/// The merges of `merges.txt` as token-id pairs, in file (= rank) order.
fn parse_merges(merges_txt: &str, ids: &HashMap<&str, u32>) -> Result<Vec<(u32, u32)>> {
    let mut merges = Vec::new();
    for (i, line) in merges_txt.lines().enumerate() {
        if line.trim().is_empty() || (i == 0 && line.starts_with("#version")) {
            continue;
        }
        let line_no = i + 1;
        let mut parts = line.split_whitespace();
        let (Some(left), Some(right), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::format(format!(
                "merges.txt line {line_no}: expected `left right`, found {line:?}"
            )));
        };
        let id = |part: &str| {
            ids.get(part).copied().ok_or_else(|| {
                Error::format(format!(
                    "merges.txt line {line_no}: {part:?} is not in the vocab"
                ))
            })
        };
        merges.push((id(left)?, id(right)?));
    }
    Ok(merges)
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Counts were checked to fit in `Tokenizer::new`.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    // Lengths were checked to fit in `Tokenizer::new`.
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_le_bytes());
}

// ------------------------------------------------------------------------------------------------
// Special tokens in text
// ------------------------------------------------------------------------------------------------

/// Finds special tokens in a text from left to right, remembering where each one next occurs so
/// the text is searched about once per special token.
struct SpecialFinder<'a> {
    text: &'a str,
    special: &'a [(String, u32)],
    /// Where each special token next occurs at or after the last search start; `None` once it no
    /// longer occurs.
    next_at: Vec<Option<usize>>,
}

impl<'a> SpecialFinder<'a> {
    fn new(text: &'a str, special: &'a [(String, u32)]) -> Self {
        let next_at = special
            .iter()
            .map(|(token, _)| text.find(token.as_str()))
            .collect();
        Self {
            text,
            special,
            next_at,
        }
    }

    /// The first special token at or after byte `pos` as (start, length, id): the leftmost, and of
    /// those the longest.
    fn next_match(&mut self, pos: usize) -> Option<(usize, usize, u32)> {
        let mut best: Option<(usize, usize, u32)> = None;
        for ((token, id), next_at) in self.special.iter().zip(&mut self.next_at) {
            if next_at.is_some_and(|at| at < pos) {
                *next_at = find_from(self.text, token, pos);
            }
            let Some(start) = *next_at else { continue };
            let key = (start, Reverse(token.len()));
            if best.is_none_or(|(s, len, _)| key < (s, Reverse(len))) {
                best = Some((start, token.len(), *id));
            }
        }
        best
    }
}

/// Byte offset of the first `needle` in `text` at or after `pos`.
fn find_from(text: &str, needle: &str, pos: usize) -> Option<usize> {
    Some(text.get(pos..)?.find(needle)? + pos)
}

// ------------------------------------------------------------------------------------------------
// BPE working memory
// ------------------------------------------------------------------------------------------------

/// Marks a node merged into its left neighbour; never a token id (see [`check_count`]).
const DEAD: u32 = u32::MAX;
/// No neighbour.
const NONE: usize = usize::MAX;

/// Reusable buffers for BPE on one pre-token: its current tokens as a doubly linked list over the
/// byte positions they started from, and the heap of candidate merges.
#[derive(Default)]
struct BpeScratch {
    /// The token at each node, or [`DEAD`].
    ids: Vec<u32>,
    /// The next live node, or [`NONE`].
    next: Vec<usize>,
    /// The previous live node, or [`NONE`].
    prev: Vec<usize>,
    /// Candidate merges as (rank, left node); entries may be stale.
    heap: BinaryHeap<Reverse<(u32, usize)>>,
    /// Nodes whose pair to the right changed in the current round.
    touched: Vec<usize>,
}

impl BpeScratch {
    /// Start a piece: one node per byte, holding the byte's token.
    fn reset(&mut self, piece: &[u8], byte_tokens: &[u32; 256]) {
        let n = piece.len();
        self.ids.clear();
        self.ids
            .extend(piece.iter().map(|&b| byte_tokens[usize::from(b)]));
        self.next.clear();
        self.next.extend((1..n).chain([NONE]));
        self.prev.clear();
        self.prev
            .extend([NONE].into_iter().chain(0..n.saturating_sub(1)));
        self.heap.clear();
        self.touched.clear();
    }

    /// The tokens of the pair starting at `node`, if `node` is live and has a right neighbour.
    fn pair_at(&self, node: usize) -> Option<(u32, u32)> {
        let left = *self.ids.get(node)?;
        let right = *self.ids.get(*self.next.get(node)?)?;
        (left != DEAD).then_some((left, right))
    }

    /// Replace the pair starting at live `node` by `merged`, and note the pairs this changes.
    fn merge_at(&mut self, node: usize, merged: u32) {
        let right = self.next[node];
        let after = self.next[right];
        self.ids[node] = merged;
        self.ids[right] = DEAD;
        self.next[node] = after;
        if after != NONE {
            self.prev[after] = node;
        }
        self.touched.push(node);
        if self.prev[node] != NONE {
            self.touched.push(self.prev[node]);
        }
    }

    /// Append the live tokens, left to right.
    fn append_tokens(&self, out: &mut Vec<u32>) {
        let mut node = 0;
        while let (Some(&id), Some(&next)) = (self.ids.get(node), self.next.get(node)) {
            out.push(id);
            node = next;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Reading a section
// ------------------------------------------------------------------------------------------------

/// A bounds-checked little-endian cursor over a tokenizer section.
struct SectionReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> SectionReader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, or an error naming `what` was being read.
    fn take(&mut self, n: usize, what: impl fmt::Display) -> Result<&'a [u8]> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or_else(|| {
                Error::format(format!(
                    "tokenizer section truncated: {what} needs {n} bytes at offset {}, {} left",
                    self.pos,
                    self.remaining()
                ))
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: impl fmt::Display) -> Result<[u8; N]> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    fn u16(&mut self, what: impl fmt::Display) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: impl fmt::Display) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Fail early (before allocating) if the counts need more bytes than are left: each token takes
    /// at least 2, each merge 8, each special token 6.
    fn check_counts_fit(&self, n_tokens: u32, n_merges: u32, n_special: u32) -> Result<()> {
        let needed = 2 * u64::from(n_tokens) + 8 * u64::from(n_merges) + 6 * u64::from(n_special);
        if needed > self.remaining() as u64 {
            return Err(Error::format(format!(
                "tokenizer section claims {n_tokens} tokens, {n_merges} merges and {n_special} \
                 special tokens, which need at least {needed} bytes, but {} are left",
                self.remaining()
            )));
        }
        Ok(())
    }

    fn read_token(&mut self, id: u32) -> Result<Vec<u8>> {
        let len = self.u16(format_args!("token {id}'s length"))?;
        Ok(self
            .take(usize::from(len), format_args!("token {id}"))?
            .to_vec())
    }

    fn read_merge(&mut self, rank: u32) -> Result<(u32, u32)> {
        let left = self.u32(format_args!("merge {rank}"))?;
        let right = self.u32(format_args!("merge {rank}"))?;
        Ok((left, right))
    }

    fn read_special(&mut self, i: u32) -> Result<(String, u32)> {
        let id = self.u32(format_args!("special token {i}'s id"))?;
        let len = self.u16(format_args!("special token {i}'s length"))?;
        let text = self.take(usize::from(len), format_args!("special token {i}"))?;
        let text = std::str::from_utf8(text).map_err(|e| {
            Error::format(format!(
                "tokenizer section: special token {i} is not UTF-8 ({e})"
            ))
        })?;
        Ok((text.to_string(), id))
    }

    fn expect_end(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(Error::format(format!(
                "tokenizer section has {extra} unexpected bytes after its end (offset {})",
                self.pos
            ))),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Streaming UTF-8
// ------------------------------------------------------------------------------------------------

/// Incremental UTF-8 for streaming generated text: feed token bytes, get back the longest complete
/// valid prefix as `&str`, holding back an incomplete trailing sequence (up to 3 bytes); invalid
/// bytes become U+FFFD exactly as a whole-text lossy decode would replace them. Its buffers are
/// reused, so steady-state calls do not allocate.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// Bytes not yet returned: after a `push`, at most an incomplete sequence.
    pending: Vec<u8>,
    /// The text returned by the last call.
    out: String,
}

impl Utf8Stream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `bytes`; returns the text they complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> &str {
        self.pending.extend_from_slice(bytes);
        self.out.clear();
        let used = decode_lossy_into(&self.pending, &mut self.out, true);
        self.pending.drain(..used);
        &self.out
    }

    /// Flush what is left: an incomplete trailing sequence becomes U+FFFD. The stream is then empty
    /// and can be reused.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        decode_lossy_into(&self.pending, &mut self.out, false);
        self.pending.clear();
        &self.out
    }
}

/// Append `bytes` to `out` as UTF-8 with each invalid sequence replaced by U+FFFD; returns how many
/// bytes were used: all, unless `hold_back_incomplete` and `bytes` end inside a sequence.
fn decode_lossy_into(bytes: &[u8], out: &mut String, hold_back_incomplete: bool) -> usize {
    let mut chunks = bytes.utf8_chunks().peekable();
    while let Some(chunk) = chunks.next() {
        out.push_str(chunk.valid());
        let invalid = chunk.invalid();
        if invalid.is_empty() {
            continue;
        }
        let at_end = chunks.peek().is_none();
        if hold_back_incomplete && at_end && is_incomplete_sequence(invalid) {
            return bytes.len() - invalid.len();
        }
        out.push(char::REPLACEMENT_CHARACTER);
    }
    bytes.len()
}

/// Whether `bytes` is the start of a valid UTF-8 sequence that more bytes could complete.
fn is_incomplete_sequence(bytes: &[u8]) -> bool {
    matches!(std::str::from_utf8(bytes), Err(e) if e.error_len().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretokens(text: &str) -> Vec<&str> {
        PreTokens { rest: text }.collect()
    }

    /// Expected splits taken from Python's `regex.findall` with GPT-2's pattern.
    #[test]
    fn scanner_splits_as_gpt2s_regex() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            (" ", &[" "]),
            ("hello world", &["hello", " world"]),
            ("  hello", &[" ", " hello"]),
            ("hello   ", &["hello", "   "]),
            ("a \n", &["a", " \n"]),
            ("a  \nb", &["a", "  ", "\n", "b"]),
            ("x\n\n  y", &["x", "\n\n ", " y"]),
            ("\t\tx", &["\t", "\t", "x"]),
            ("a\u{a0}b", &["a", "\u{a0}", "b"]),
            ("x \u{3000}y", &["x", " ", "\u{3000}", "y"]),
            ("it's", &["it", "'s"]),
            ("don't", &["don", "'t"]),
            ("IT'S", &["IT", "'", "S"]),
            ("'ll've", &["'ll", "'ve"]),
            ("'''", &["'''"]),
            ("!'s", &["!'", "s"]),
            (" 123abc", &[" 123", "abc"]),
            (" !!", &[" !!"]),
            ("Ⅻ½x", &["Ⅻ½", "x"]),
            ("नमस्ते", &["नमस", "्", "त", "े"]),
            ("a\u{345}b", &["a", "\u{345}", "b"]),
        ];
        for &(text, expected) in cases {
            assert_eq!(pretokens(text), expected, "{text:?}");
        }
    }

    #[test]
    fn letters_are_general_category_l_not_alphabetic() {
        // Alphabetic, but a mark (Mc, Mn) or a symbol (So): `\p{L}` excludes them.
        for c in ['\u{93e}', '\u{345}', 'Ⓐ'] {
            assert!(c.is_alphabetic());
            assert_eq!(char_class(c), CharClass::Other, "{c:?}");
        }
        assert_eq!(char_class('ª'), CharClass::Letter);
        assert_eq!(char_class('ʰ'), CharClass::Letter);
        assert_eq!(char_class('Ⅻ'), CharClass::Number);
        assert_eq!(char_class('\u{b}'), CharClass::Space);
        assert_eq!(char_class('\u{85}'), CharClass::Space);
        assert_eq!(char_class('\u{1c}'), CharClass::Other);
        assert_eq!(char_class('\u{200b}'), CharClass::Other);
    }

    /// 256 single bytes plus `extra`, merges by bytes in rank order, and `special` by text.
    fn small(extra: &[&str], merges: &[(&str, &str)], special: &[&str]) -> Tokenizer {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        tokens.extend(extra.iter().map(|t| t.as_bytes().to_vec()));
        let id = |t: &str| {
            let i = tokens.iter().position(|b| b == t.as_bytes()).expect(t);
            u32::try_from(i).expect("id")
        };
        let merges = merges.iter().map(|&(l, r)| (id(l), id(r))).collect();
        let special = special.iter().map(|&s| (s.to_string(), id(s))).collect();
        Tokenizer::new(tokens, merges, special).expect("valid tokenizer")
    }

    /// `GPT2Tokenizer.bpe`, transcribed: merge all occurrences of the lowest-ranked pair per round.
    fn reference_bpe(tok: &Tokenizer, piece: &[u8]) -> Vec<u32> {
        let mut word: Vec<u32> = piece
            .iter()
            .map(|&b| tok.byte_tokens[usize::from(b)])
            .collect();
        loop {
            let best = word
                .windows(2)
                .filter_map(|w| tok.merge_ranks.get(&pair_key(w[0], w[1])))
                .min();
            let Some(&rank) = best else { break };
            let (first, second) = tok.merges[rank as usize];
            let mut merged = Vec::new();
            let mut i = 0;
            while i < word.len() {
                if word[i] == first && word.get(i + 1) == Some(&second) {
                    merged.push(tok.merge_results[rank as usize]);
                    i += 2;
                } else {
                    merged.push(word[i]);
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }

    fn bpe(tok: &Tokenizer, piece: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        tok.bpe_into(piece, &mut BpeScratch::default(), &mut out);
        out
    }

    #[test]
    fn bpe_merges_every_occurrence_before_new_pairs() {
        // ("ab", "a") outranks ("a", "b"), which creates it: Hugging Face still merges both "ab"s
        // of "abab" first, giving [ab, ab] rather than [aba, b].
        let tok = small(&["ab", "aba"], &[("ab", "a"), ("a", "b")], &[]);
        assert_eq!(bpe(&tok, b"abab"), [256, 256]);
        assert_eq!(bpe(&tok, b"abab"), reference_bpe(&tok, b"abab"));
        // Overlapping occurrences of a pair merge left to right.
        let tok = small(&["aa"], &[("a", "a")], &[]);
        assert_eq!(bpe(&tok, b"aaa"), [256, 97]);
        assert_eq!(bpe(&tok, b"aaaa"), [256, 256]);
    }

    #[test]
    fn bpe_matches_reference_on_random_words() {
        let tok = small(
            &[
                "ab", "ba", "aa", "abc", "cab", "aab", "bab", "abab", "cc", "ccc", "bc",
            ],
            &[
                ("b", "a"),
                ("ab", "c"),
                ("a", "b"),
                ("c", "ab"),
                ("ab", "ab"),
                ("a", "a"),
                ("b", "ab"),
                ("cc", "c"),
                ("aa", "b"),
                ("c", "c"),
                ("b", "c"),
            ],
            &[],
        );
        let mut state = 0x1234_5678_9abc_def1_u64;
        for _ in 0..5000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 13) as usize;
            let word: Vec<u8> = (0..len)
                .map(|i| b"abc"[(state >> (8 + 2 * i)) as usize % 3])
                .collect();
            assert_eq!(
                bpe(&tok, &word),
                reference_bpe(&tok, &word),
                "{:?}",
                String::from_utf8_lossy(&word)
            );
        }
    }

    #[test]
    fn special_tokens_match_leftmost_then_longest() {
        let tok = small(&["<a>", "<a><b>", "<b>"], &[], &["<a>", "<a><b>", "<b>"]);
        let (a, ab, b) = (256, 257, 258);
        assert_eq!(tok.encode("x<a><b>y"), [120, ab, 121]);
        assert_eq!(tok.encode("<a><a><b><b>"), [a, ab, b]);
        assert_eq!(tok.encode("<a>"), [a]);
        assert_eq!(tok.encode("<b"), [60, 98]);
        assert_eq!(tok.encode_ordinary("<b>"), [60, 98, 62]);
    }

    #[test]
    fn section_reader_caps_counts_by_input_length() {
        let mut section = Vec::new();
        for count in [u32::MAX, 0, 0] {
            section.extend_from_slice(&count.to_le_bytes());
        }
        let err = Tokenizer::from_section(&section).expect_err("huge count");
        assert!(err.to_string().contains("need at least"), "{err}");
    }
}
