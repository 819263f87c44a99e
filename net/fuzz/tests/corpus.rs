//! The committed seeds are what `src/seeds.rs` generates, and every file in the corpus
//! directories (seeds, plus whatever local fuzzing added) runs through its harness cleanly.
//!
//! `METASTORE_FUZZ_WRITE_SEEDS=1 cargo test` rewrites the seeds (and removes stale ones).

use std::fs;
use std::path::PathBuf;

use metastore_net_fuzz::{grpc_messages, h2_frames, hpack_decode, seeds};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

fn committed_seeds(target: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seed-"))
        .collect();
    names.sort();
    names
}

#[test]
fn committed_seeds_are_generated() {
    let write = std::env::var_os("METASTORE_FUZZ_WRITE_SEEDS").is_some();
    let mut total = 0;
    for target in seeds::TARGETS {
        let dir = corpus_dir(target);
        let generated = seeds::seeds(target);
        assert!(!generated.is_empty(), "{target}: no seeds");
        if write {
            fs::create_dir_all(&dir).unwrap();
            for name in committed_seeds(target) {
                if !generated.iter().any(|(n, _)| *n == name) {
                    fs::remove_file(dir.join(&name)).unwrap();
                }
            }
            for (name, bytes) in &generated {
                fs::write(dir.join(name), bytes).unwrap();
            }
        }
        let mut want: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
        want.sort();
        assert_eq!(
            committed_seeds(target),
            want,
            "{target}: stale or missing seeds; rerun with METASTORE_FUZZ_WRITE_SEEDS=1"
        );
        for (name, bytes) in &generated {
            let on_disk = fs::read(dir.join(name)).unwrap();
            assert!(on_disk == *bytes, "{target}/{name} differs; rerun with METASTORE_FUZZ_WRITE_SEEDS=1");
            total += bytes.len();
        }
    }
    assert!(total < 200 << 10, "seed corpus too large: {total} bytes");
}

#[test]
fn every_corpus_entry_runs_cleanly() {
    for target in seeds::TARGETS {
        let run: fn(&[u8]) = match target {
            "h2_frames" => h2_frames::run,
            "hpack_decode" => hpack_decode::run,
            _ => grpc_messages::run,
        };
        let mut entries: Vec<PathBuf> = fs::read_dir(corpus_dir(target))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        assert!(!entries.is_empty(), "{target}: empty corpus");
        for path in entries {
            let data = fs::read(&path).unwrap();
            run(&data);
        }
    }
}

/// Seeds also run in every read size, so partial-frame handling is covered without a fuzzer.
#[test]
fn h2_seeds_in_every_read_size() {
    for (_, seed) in seeds::seeds("h2_frames") {
        for chunk in [1u8, 2, 9, 10, 100, 0] {
            let mut data = seed.clone();
            data[0] = chunk;
            data[1] |= 0x40; // compare with a one-read run
            h2_frames::run(&data);
        }
    }
    for (_, seed) in seeds::seeds("grpc_messages") {
        for chunk in [1u8, 4, 13, 0] {
            let mut data = seed.clone();
            data[2] = chunk;
            grpc_messages::run(&data);
        }
    }
}
