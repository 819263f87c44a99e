//! Our HPACK encoder and decoder must agree on every header list and on the dynamic table after
//! every block, or a connection silently corrupts headers from then on. This test drives one
//! encoder/decoder pair per run through thousands of seeded pseudo-random header lists: names from
//! the static table, gRPC's and random bytes (all 256 byte values appear, so every Huffman code is
//! exercised), values from empty to larger than the whole table, a mix of the three indexing modes,
//! repeated fields (to hit dynamic-table matches and evictions), Huffman on, off and toggled per
//! block, and SETTINGS_HEADER_TABLE_SIZE changes between blocks, including several in a row that go
//! down and back up.

use metastore_net::hpack::{Decoder, Encoder, Indexing};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize, printable: bool) -> Vec<u8> {
        (0..len).map(|_| if printable { b' ' + self.below(95) as u8 } else { self.next() as u8 }).collect()
    }
}

const NAMES: &[&str] = &[
    ":authority",
    ":method",
    ":path",
    ":scheme",
    ":status",
    "accept-encoding",
    "cache-control",
    "content-type",
    "cookie",
    "authorization",
    "user-agent",
    "te",
    "grpc-status",
    "grpc-message",
    "grpc-encoding",
    "grpc-timeout",
    "x-custom",
];

const VALUES: &[&str] =
    &["GET", "POST", "/", "http", "https", "200", "404", "gzip, deflate", "application/grpc", "0", "trailers"];

#[derive(Clone, Copy, PartialEq)]
enum HuffmanMode {
    On,
    Off,
    Toggled,
}

type Field = (Vec<u8>, Vec<u8>);

fn random_field(rng: &mut XorShift, recent: &[Field]) -> Field {
    if !recent.is_empty() && rng.below(3) == 0 {
        return recent[rng.below(recent.len())].clone();
    }
    let name = match rng.below(4) {
        0 | 1 => NAMES[rng.below(NAMES.len())].as_bytes().to_vec(),
        2 => {
            let len = 1 + rng.below(30);
            rng.bytes(len, true)
        }
        _ => {
            let len = 1 + rng.below(30);
            rng.bytes(len, false)
        }
    };
    let value = match rng.below(8) {
        0 | 1 => VALUES[rng.below(VALUES.len())].as_bytes().to_vec(),
        2 => Vec::new(),
        3 => {
            // Sometimes larger than the whole table.
            let len = rng.below(6000);
            rng.bytes(len, true)
        }
        4 | 5 => {
            let len = rng.below(100);
            rng.bytes(len, false)
        }
        _ => {
            let len = rng.below(200);
            rng.bytes(len, true)
        }
    };
    (name, value)
}

fn run(seed: u64, mode: HuffmanMode) -> (usize, usize) {
    let mut rng = XorShift(seed);
    let mut encoder = Encoder::new();
    let mut decoder = Decoder::new(4096);
    decoder.set_max_header_list_size(usize::MAX);
    encoder.set_huffman(mode != HuffmanMode::Off);
    let mut recent: Vec<Field> = Vec::new();
    let mut block = Vec::new();
    let mut fields_checked = 0;
    let mut size_changes = 0;
    for round in 0..3000 {
        // The peer changed SETTINGS_HEADER_TABLE_SIZE, maybe several times before our next block;
        // our decoder's view of it follows, as it would once our own SETTINGS are acknowledged.
        if rng.below(10) == 0 {
            for _ in 0..1 + rng.below(3) {
                let size = [0, 32, 100, 256, 1000, 4096, 8192][rng.below(7)];
                encoder.set_max_table_size(size);
                decoder.set_max_table_size(size);
                size_changes += 1;
            }
        }
        if mode == HuffmanMode::Toggled {
            encoder.set_huffman(rng.below(2) == 0);
        }
        let n = rng.below(12);
        let list: Vec<Field> = (0..n).map(|_| random_field(&mut rng, &recent)).collect();
        block.clear();
        if rng.below(4) == 0 {
            encoder.encode(list.iter().map(|(n, v)| (&n[..], &v[..])), &mut block);
        } else {
            encoder.begin_block(&mut block);
            for (name, value) in &list {
                let indexing = match rng.below(6) {
                    0 => Indexing::Without,
                    1 => Indexing::Never,
                    _ => Indexing::Incremental,
                };
                encoder.encode_field(name, value, indexing, &mut block);
            }
        }
        let mut got = Vec::new();
        decoder
            .decode(&block, |n, v| got.push((n.to_vec(), v.to_vec())))
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e:?}"));
        assert!(got == list, "seed {seed} round {round}: fields differ");
        assert_eq!(
            encoder.dynamic_table_size(),
            decoder.dynamic_table_size(),
            "seed {seed} round {round}: tables out of step"
        );
        assert!(decoder.dynamic_table_size() <= 4096);
        fields_checked += list.len();
        recent.extend(list);
        if recent.len() > 64 {
            recent.drain(..recent.len() - 64);
        }
    }
    (fields_checked, size_changes)
}

#[test]
fn random_header_lists_round_trip() {
    let mut fields = 0;
    let mut changes = 0;
    for (seed, mode) in [
        (1, HuffmanMode::On),
        (2, HuffmanMode::Off),
        (3, HuffmanMode::Toggled),
        (0xdead_beef, HuffmanMode::On),
        (0x1234_5678_9abc, HuffmanMode::Toggled),
    ] {
        let (f, c) = run(seed, mode);
        fields += f;
        changes += c;
    }
    assert!(fields > 50_000, "{fields}");
    assert!(changes > 1000, "{changes}");
}
