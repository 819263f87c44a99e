//! Interoperability of the HPACK codec with other implementations, using the hpack-test-case
//! stories in `tests/data/hpack` (see its README): every header block that nghttp2, Go's hpack
//! and Python's hpack encoded (including nghttp2's runs with SETTINGS_HEADER_TABLE_SIZE changes)
//! must decode to exactly the recorded header list, in order, with one decoder per story as on a
//! connection; and every raw header list must survive our encoder then our decoder, with and
//! without Huffman coding. The story and case counts are pinned so that a missing or emptied
//! directory fails the test rather than passing vacuously.

use std::path::{Path, PathBuf};

use metastore_net::hpack::{Decoder, Encoder};

/// (directory, stories, cases) as found when the data was copied in.
const ENCODED: &[(&str, usize, usize)] = &[
    ("go-hpack", 32, 3384),
    ("nghttp2", 32, 3384),
    ("nghttp2-change-table-size", 31, 3267),
    ("python-hpack", 32, 3384),
];
const RAW: (&str, usize, usize) = ("raw-data", 32, 3384);

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hpack")
}

/// The story files of one directory, in name order; panics if there are none.
fn stories(dir: &str) -> Vec<(String, Json)> {
    let path = data_dir().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no stories in {}", path.display());
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read(&f).expect("story file");
            let name = f.file_name().expect("file name").to_string_lossy().into_owned();
            let json = Parser::new(&text).parse_document().unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, json)
        })
        .collect()
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A case's `headers`: a list of single-key objects.
fn headers(case: &Json) -> Fields {
    case.get("headers")
        .and_then(Json::as_array)
        .expect("headers")
        .iter()
        .map(|h| match h {
            Json::Object(kv) if kv.len() == 1 => {
                let (k, v) = &kv[0];
                (k.as_bytes().to_vec(), v.as_str().expect("header value").as_bytes().to_vec())
            }
            other => panic!("header entry {other:?}"),
        })
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert_eq!(s.len() % 2, 0);
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn cases(story: &Json) -> &[Json] {
    story.get("cases").and_then(Json::as_array).expect("cases")
}

#[test]
fn decode_stories_of_other_encoders() {
    let mut total_stories = 0;
    let mut total_cases = 0;
    for &(dir, want_stories, want_cases) in ENCODED {
        let mut n_stories = 0;
        let mut n_cases = 0;
        for (name, story) in stories(dir) {
            let mut decoder = Decoder::new(4096);
            decoder.set_max_header_list_size(usize::MAX);
            for (i, case) in cases(&story).iter().enumerate() {
                if let Some(size) = case.get("header_table_size").and_then(Json::as_number) {
                    decoder.set_max_table_size(size as usize);
                }
                let wire = unhex(case.get("wire").and_then(Json::as_str).expect("wire"));
                let mut got = Vec::new();
                decoder
                    .decode(&wire, |n, v| got.push((n.to_vec(), v.to_vec())))
                    .unwrap_or_else(|e| panic!("{dir}/{name} case {i}: {e:?}"));
                assert!(got == headers(case), "{dir}/{name} case {i}: decoded fields differ");
                n_cases += 1;
            }
            n_stories += 1;
        }
        assert_eq!((n_stories, n_cases), (want_stories, want_cases), "{dir}");
        total_stories += n_stories;
        total_cases += n_cases;
    }
    assert_eq!((total_stories, total_cases), (127, 13419));
}

#[test]
fn raw_stories_round_trip_through_our_encoder() {
    let (dir, want_stories, want_cases) = RAW;
    let all = stories(dir);
    for huffman in [true, false] {
        let mut n_stories = 0;
        let mut n_cases = 0;
        let mut plain_bytes = 0;
        let mut wire_bytes = 0;
        for (name, story) in &all {
            let mut encoder = Encoder::new();
            encoder.set_huffman(huffman);
            let mut decoder = Decoder::new(4096);
            decoder.set_max_header_list_size(usize::MAX);
            let mut wire = Vec::new();
            for (i, case) in cases(story).iter().enumerate() {
                let fields = headers(case);
                wire.clear();
                encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])), &mut wire);
                let mut got = Vec::new();
                decoder
                    .decode(&wire, |n, v| got.push((n.to_vec(), v.to_vec())))
                    .unwrap_or_else(|e| panic!("{name} case {i} (huffman {huffman}): {e:?}"));
                assert!(got == fields, "{name} case {i} (huffman {huffman}): fields differ");
                assert_eq!(encoder.dynamic_table_size(), decoder.dynamic_table_size());
                plain_bytes += fields.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
                wire_bytes += wire.len();
                n_cases += 1;
            }
            n_stories += 1;
        }
        assert_eq!((n_stories, n_cases), (want_stories, want_cases));
        // Not a benchmark, a sanity check: HPACK on these real header sets should at least
        // halve them; a regression in table lookups or Huffman choice would show here first.
        eprintln!("raw-data, huffman {huffman}: {plain_bytes} header bytes -> {wire_bytes} on the wire");
        assert!(wire_bytes * 2 < plain_bytes, "{wire_bytes} of {plain_bytes}");
    }
}

// ---- a small JSON reader, enough for these files (no dependency for one test) ----

#[derive(Debug)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    /// Members in document order.
    Object(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<f64> {
        match self {
            Json::Number(n) => Some(*n),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Self {
        Self { s, pos: 0 }
    }

    fn parse_document(&mut self) -> Result<Json, String> {
        let v = self.value()?;
        self.ws();
        if self.pos != self.s.len() {
            return Err(format!("trailing bytes at {}", self.pos));
        }
        Ok(v)
    }

    fn ws(&mut self) {
        while matches!(self.s.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        self.ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", b as char, self.pos))
        }
    }

    fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(format!("bad literal at {}", self.pos))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.peek().ok_or("unexpected end")? {
            b'{' => {
                self.pos += 1;
                let mut members = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.expect(b':')?;
                    members.push((key, self.value()?));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err(format!("bad object at {}", self.pos)),
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(format!("bad array at {}", self.pos)),
                    }
                }
            }
            b'"' => Ok(Json::String(self.string()?)),
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'n' => self.literal("null", Json::Null),
            _ => {
                let start = self.pos;
                while matches!(self.peek(), Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.pos]).map_err(|e| e.to_string())?;
                text.parse().map(Json::Number).map_err(|_| format!("bad number at {start}"))
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.s.get(self.pos..self.pos + 4).ok_or("short \\u escape")?;
        let text = std::str::from_utf8(digits).map_err(|e| e.to_string())?;
        self.pos += 4;
        u32::from_str_radix(text, 16).map_err(|e| e.to_string())
    }

    fn string(&mut self) -> Result<String, String> {
        if self.peek() != Some(b'"') {
            return Err(format!("expected string at {}", self.pos));
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let b = self.peek().ok_or("unterminated string")?;
            self.pos += 1;
            match b {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let e = self.peek().ok_or("unterminated escape")?;
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xd800..0xdc00).contains(&cp) && self.s[self.pos..].starts_with(b"\\u") {
                                self.pos += 2;
                                let low = self.hex4()?;
                                cp = 0x10000 + ((cp - 0xd800) << 10) + (low.wrapping_sub(0xdc00) & 0x3ff);
                            }
                            char::from_u32(cp).ok_or("bad \\u escape")?
                        }
                        _ => return Err(format!("bad escape at {}", self.pos)),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(b),
            }
        }
    }
}

#[test]
fn json_reader_handles_what_the_stories_use() {
    let j =
        Parser::new(br#"{"a": [1, -2.5e1, true, null], "b": "x\u0026y\"\\\/\n", "c": {}}"#).parse_document().unwrap();
    assert_eq!(j.get("b").and_then(Json::as_str), Some("x&y\"\\/\n"));
    let a = j.get("a").and_then(Json::as_array).unwrap();
    assert_eq!(a[1].as_number(), Some(-25.0));
    assert!(matches!(a[2], Json::Bool(true)) && matches!(a[3], Json::Null));
    assert!(Parser::new(b"[1,]").parse_document().is_err());
    assert!(Parser::new(b"{\"a\" 1}").parse_document().is_err());
}
