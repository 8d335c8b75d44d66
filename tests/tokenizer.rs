//! The tokenizer against Hugging Face's `GPT2Tokenizer` (fixture cases and the held-out text), the
//! `.g2q` tokenizer section (round trip, and no panics on damaged input), and streaming UTF-8.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use gpt2q::rng::Rng;
use gpt2q::tokenizer::{
    byte_to_unicode, unicode_to_byte, Tokenizer, Utf8Stream, ENDOFTEXT, ENDOFTEXT_ID,
};
use serde_json::Value;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// GPT-2's tokenizer, built once from the tiny-gpt2 fixture's `vocab.json` and `merges.txt`.
fn gpt2() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let vocab: serde_json::Map<String, Value> =
            serde_json::from_str(&read_fixture("tiny-gpt2/vocab.json")).expect("vocab.json");
        let vocab = vocab
            .into_iter()
            .map(|(token, id)| {
                let id = id.as_u64().and_then(|id| u32::try_from(id).ok());
                (token, id.expect("vocab ids are u32"))
            })
            .collect();
        Tokenizer::from_hf(vocab, &read_fixture("tiny-gpt2/merges.txt")).expect("GPT-2 tokenizer")
    })
}

/// One case of `tokenizer-cases.json`, produced by transformers' `GPT2Tokenizer`.
struct Case {
    name: String,
    text: String,
    ids: Vec<u32>,
    decoded: String,
    /// `encode(text, split_special_tokens=True)`, given when the text holds `<|endoftext|>`.
    ids_split_special: Option<Vec<u32>>,
}

fn cases() -> Vec<Case> {
    let json: Value =
        serde_json::from_str(&read_fixture("tokenizer-cases.json")).expect("tokenizer-cases.json");
    let ids = |v: &Value| -> Vec<u32> {
        let ids = v.as_array().expect("ids array");
        ids.iter()
            .map(|id| u32::try_from(id.as_u64().expect("id")).expect("u32 id"))
            .collect()
    };
    let string = |v: &Value| v.as_str().expect("string").to_string();
    let cases = json["cases"].as_array().expect("cases");
    cases
        .iter()
        .map(|c| Case {
            name: string(&c["name"]),
            text: string(&c["text"]),
            ids: ids(&c["ids"]),
            decoded: string(&c["decoded"]),
            ids_split_special: c.get("ids_split_special").map(ids),
        })
        .collect()
}

/// A readable account of how `actual` differs from `expected`: the first differing position and the
/// tokens around it on both sides.
fn ids_diff(tok: &Tokenizer, expected: &[u32], actual: &[u32]) -> String {
    let first = expected
        .iter()
        .zip(actual)
        .position(|(e, a)| e != a)
        .unwrap_or(expected.len().min(actual.len()));
    let window = |ids: &[u32]| {
        let from = first.saturating_sub(3);
        let to = (first + 5).min(ids.len());
        ids.get(from..to)
            .unwrap_or_default()
            .iter()
            .map(|&id| {
                let bytes = tok.token_bytes(id).unwrap_or(b"<out of range>");
                format!("{id}:{:?}", String::from_utf8_lossy(bytes))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "{} expected ids vs {} actual; first difference at index {first}\n    expected: … {}\n    \
         actual:   … {}",
        expected.len(),
        actual.len(),
        window(expected),
        window(actual)
    )
}

/// Everything wrong with one case, as lines of a report.
fn case_failures(tok: &Tokenizer, case: &Case) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check_ids = |what: &str, expected: &[u32], actual: Vec<u32>| {
        if expected != actual {
            failures.push(format!("{what}: {}", ids_diff(tok, expected, &actual)));
        }
    };
    check_ids("encode", &case.ids, tok.encode(&case.text));
    if let Some(expected) = &case.ids_split_special {
        check_ids("encode_ordinary", expected, tok.encode_ordinary(&case.text));
    }
    match tok.decode(&case.ids) {
        Ok(decoded) if decoded == case.decoded => {}
        other => failures.push(format!(
            "decode: expected {:?}, got {other:?}",
            case.decoded
        )),
    }
    match tok.decode(&tok.encode(&case.text)) {
        Ok(round_trip) if round_trip == case.text => {}
        other => failures.push(format!("decode(encode(text)) gave {other:?}")),
    }
    failures
        .into_iter()
        .map(|f| format!("case {} ({:?}): {f}", case.name, case.text))
        .collect()
}

#[test]
fn fixture_cases_match_hugging_face() {
    let tok = gpt2();
    let cases = cases();
    assert_eq!(cases.len(), 62, "tokenizer-cases.json should hold 62 cases");
    let failures: Vec<String> = cases.iter().flat_map(|c| case_failures(tok, c)).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn heldout_text_encodes_as_hugging_face() {
    let tok = gpt2();
    let text = read_fixture("heldout.txt");
    let start = Instant::now();
    let ids = tok.encode(&text);
    let elapsed = start.elapsed();
    eprintln!(
        "encoded heldout.txt ({} bytes) into {} tokens in {elapsed:?}",
        text.len(),
        ids.len()
    );
    let expected_start = [
        37286, 367, 1677, 18276, 13889, 25, 198, 13295, 880, 22027, 43159, 711, 1549, 262, 393,
        1352,
    ];
    let head = &ids[..expected_start.len().min(ids.len())];
    assert_eq!(
        head,
        expected_start,
        "{}",
        ids_diff(tok, &expected_start, head)
    );
    assert_eq!(ids.len(), 79220, "token count of heldout.txt");
    assert_eq!(tok.decode(&ids).expect("decode"), text);
}

#[test]
fn gpt2_vocabulary_shape() {
    let tok = gpt2();
    assert_eq!(tok.n_tokens(), 50257);
    assert_eq!(tok.merges().len(), 50000);
    assert_eq!(
        tok.special_tokens(),
        [(ENDOFTEXT.to_string(), ENDOFTEXT_ID)]
    );
    assert_eq!(tok.token_bytes(ENDOFTEXT_ID), Some(ENDOFTEXT.as_bytes()));
    assert_eq!(tok.token_bytes(50257), None);
    assert_eq!(tok.encode(ENDOFTEXT), [ENDOFTEXT_ID]);
    assert_eq!(
        tok.encode("a<|endoftext|><|endoftext|>b"),
        [64, ENDOFTEXT_ID, ENDOFTEXT_ID, 65]
    );
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let err = gpt2()
        .decode(&[15496, 50257])
        .expect_err("id 50257 is out of range");
    assert!(err.to_string().contains("50257"), "{err}");
    assert!(matches!(err, gpt2q::Error::InvalidInput(_)), "{err:?}");
}

#[test]
fn byte_alphabet_is_gpt2s() {
    assert_eq!(byte_to_unicode(b'A'), 'A');
    assert_eq!(byte_to_unicode(b' '), 'Ġ');
    assert_eq!(byte_to_unicode(b'\n'), 'Ċ');
    assert_eq!(byte_to_unicode(0x00), 'Ā');
    assert_eq!(byte_to_unicode(0xad), 'Ń');
    for b in 0..=255u8 {
        assert_eq!(
            unicode_to_byte(byte_to_unicode(b)),
            Some(b),
            "byte {b:#04x}"
        );
    }
    for c in [' ', '\n', '\u{a0}', '\u{ad}', '\u{144}', '😀'] {
        assert_eq!(unicode_to_byte(c), None, "{c:?} is not in the alphabet");
    }
}

fn section_of(tok: &Tokenizer) -> Vec<u8> {
    let mut section = Vec::new();
    tok.write_section(&mut section);
    section
}

#[test]
fn section_round_trips() {
    let tok = gpt2();
    let section = section_of(tok);
    let back = Tokenizer::from_section(&section).expect("parse own section");
    assert_eq!(back.n_tokens(), tok.n_tokens());
    assert_eq!(back.merges(), tok.merges());
    assert_eq!(back.special_tokens(), tok.special_tokens());
    for id in 0..u32::try_from(tok.n_tokens()).expect("n_tokens") {
        assert_eq!(back.token_bytes(id), tok.token_bytes(id), "token {id}");
    }
    assert_eq!(section_of(&back), section, "re-serialised section differs");
    for case in cases() {
        assert_eq!(
            back.encode(&case.text),
            tok.encode(&case.text),
            "case {}",
            case.name
        );
    }
}

/// Parse damaged input; it must not panic, and a tokenizer it accepts must work.
fn parse_damaged(bytes: &[u8]) {
    if let Ok(tok) = Tokenizer::from_section(bytes) {
        let ids = tok.encode("Hello, world! <|endoftext|> 123");
        tok.decode(&ids).expect("ids from encode decode");
    }
}

#[test]
fn truncated_sections_are_errors() {
    let section = section_of(gpt2());
    let mut lengths: Vec<usize> = (0..64).collect();
    lengths.extend((1..200).map(|i| i * section.len() / 200));
    lengths.push(section.len() - 1);
    for len in lengths {
        let result = Tokenizer::from_section(&section[..len]);
        assert!(result.is_err(), "prefix of {len} bytes parsed");
    }
}

#[test]
fn damaged_sections_never_panic() {
    let section = section_of(gpt2());
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let mut damaged = section.clone();
        for _ in 0..1 + rng.below(4) {
            // Half the damage lands on the header and the first tokens, where counts and lengths are.
            let at = if round % 2 == 0 {
                rng.below(64)
            } else {
                rng.below(damaged.len())
            };
            damaged[at] ^= 1 << rng.below(8);
        }
        parse_damaged(&damaged);
    }
    for _ in 0..300 {
        let garbage: Vec<u8> = (0..rng.below(48)).map(|_| rng.next_u64() as u8).collect();
        parse_damaged(&garbage);
    }
    let mut trailing = section.clone();
    trailing.push(0);
    assert!(
        Tokenizer::from_section(&trailing).is_err(),
        "trailing byte accepted"
    );
}

/// 256 single-byte tokens plus `extra`, merges between them by bytes, and no special tokens.
fn small_tokenizer(extra: &[&str], merges: &[(&str, &str)]) -> gpt2q::Result<Tokenizer> {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    tokens.extend(extra.iter().map(|t| t.as_bytes().to_vec()));
    let id = |t: &str| {
        let id = tokens.iter().position(|b| b == t.as_bytes());
        u32::try_from(id.unwrap_or(usize::MAX)).unwrap_or(u32::MAX)
    };
    let merges = merges.iter().map(|(l, r)| (id(l), id(r))).collect();
    Tokenizer::new(tokens, merges, Vec::new())
}

#[test]
fn new_rejects_malformed_tables() {
    let ok = small_tokenizer(&["ab", "abc"], &[("a", "b"), ("ab", "c")]).expect("valid");
    assert_eq!(ok.encode("abcab"), [257, 256]);

    let expect_format_error = |result: gpt2q::Result<Tokenizer>, needle: &str| {
        let err = result.expect_err(needle);
        assert!(matches!(err, gpt2q::Error::Format(_)), "{err:?}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    };
    expect_format_error(small_tokenizer(&["abc"], &[("a", "b")]), "not a token");
    expect_format_error(small_tokenizer(&["ab", "ab"], &[]), "same bytes");
    expect_format_error(
        small_tokenizer(&["ab"], &[("a", "b"), ("a", "b")]),
        "both the pair",
    );
    expect_format_error(small_tokenizer(&[""], &[]), "empty");
    expect_format_error(Tokenizer::new(vec![vec![0]], vec![], vec![]), "0x01");
    let bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    expect_format_error(
        Tokenizer::new(bytes.clone(), vec![(0, 256)], vec![]),
        "out of range",
    );
    expect_format_error(
        Tokenizer::new(bytes.clone(), vec![], vec![("A".into(), 256)]),
        "out of range",
    );
    expect_format_error(
        Tokenizer::new(bytes, vec![], vec![("B".into(), 65)]),
        "whose bytes are",
    );
}

#[test]
fn from_hf_rejects_bad_files() {
    let vocab = |extra: &[(&str, u32)]| {
        let mut v: Vec<(String, u32)> = (0..=255u8)
            .map(|b| (byte_to_unicode(b).to_string(), u32::from(b)))
            .collect();
        v.extend(extra.iter().map(|(s, id)| (s.to_string(), *id)));
        v
    };
    let tok = Tokenizer::from_hf(vocab(&[("ab", 256)]), "#version: 0.2\na b\n").expect("valid");
    assert_eq!(tok.encode("ab"), [256]);
    assert!(tok.special_tokens().is_empty());
    let no_header = Tokenizer::from_hf(vocab(&[("ab", 256)]), "a b").expect("valid");
    assert_eq!(no_header.merges(), [(97, 98)]);

    let error = |vocab, merges: &str| {
        Tokenizer::from_hf(vocab, merges)
            .expect_err("bad")
            .to_string()
    };
    assert!(error(vocab(&[("ab", 300)]), "").contains("300"));
    assert!(error(vocab(&[("ab", 5)]), "").contains("twice"));
    assert!(error(vocab(&[("a b", 256)]), "").contains("alphabet"));
    assert!(error(vocab(&[("ab", 256)]), "a b c").contains("line 1"));
    assert!(error(vocab(&[("ab", 256)]), "#version\na zz").contains("line 2"));
}

#[test]
fn utf8_stream_reassembles_tokens() {
    let tok = gpt2();
    let text = "I love 🍕 and 世界! 👨‍👩‍👧 naïve";
    let mut stream = Utf8Stream::new();
    let mut streamed = String::new();
    for &id in &tok.encode(text) {
        let bytes = tok.token_bytes(id).expect("token");
        let piece = stream.push(bytes);
        assert!(text[streamed.len()..].starts_with(piece), "{piece:?}");
        streamed.push_str(piece);
    }
    streamed.push_str(stream.finish());
    assert_eq!(streamed, text);

    // One byte at a time too: nothing comes out until a char is complete.
    let mut streamed = String::new();
    for &b in text.as_bytes() {
        streamed.push_str(stream.push(&[b]));
    }
    assert_eq!(stream.finish(), "");
    assert_eq!(streamed, text);
}

#[test]
fn utf8_stream_replaces_invalid_bytes() {
    let mut stream = Utf8Stream::new();
    assert_eq!(stream.push(b"a\xffb"), "a\u{fffd}b");
    assert_eq!(stream.push(&[0xe4, 0xb8]), "");
    assert_eq!(stream.push(&[0x96, b'!']), "世!");
    assert_eq!(stream.push(&[0xe4, 0xb8]), "");
    assert_eq!(stream.push(b"x"), "\u{fffd}x");
    assert_eq!(stream.push(&[0xf0, 0x9f]), "");
    assert_eq!(stream.finish(), "\u{fffd}");
    assert_eq!(stream.push(b"fresh"), "fresh");
}

/// Streaming any bytes in any pieces gives what one lossy decode of them all gives.
#[test]
fn utf8_stream_matches_whole_lossy_decode() {
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let alphabet: [&[u8]; 8] = [
        b"a",
        "é".as_bytes(),
        "世".as_bytes(),
        "🍕".as_bytes(),
        &[0xff],
        &[0x80],
        &[0xe4, 0xb8],
        &[0xf0, 0x9f, 0x8d],
    ];
    let mut stream = Utf8Stream::new();
    for _ in 0..500 {
        let bytes: Vec<u8> = (0..rng.below(12))
            .flat_map(|_| alphabet[rng.below(alphabet.len())].iter().copied())
            .collect();
        let mut streamed = String::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(1 + rng.below(rest.len()));
            streamed.push_str(stream.push(piece));
            rest = tail;
        }
        streamed.push_str(stream.finish());
        assert_eq!(streamed, String::from_utf8_lossy(&bytes), "{bytes:x?}");
    }
}
