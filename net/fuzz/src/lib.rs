//! Fuzz harnesses for `metastore-net`.
//!
//! Each module holds one target's `run(data)`: how the fuzz input is laid out, how it drives the
//! real codec, and the invariants checked (a failed check panics, which libFuzzer reports as a
//! crash). The binaries in `fuzz_targets/` only call these, so `cargo test` replays the committed
//! corpus through exactly the code the fuzzer runs, without nightly or a fuzzer.
//!
//! [`wire`] builds client frames and checks what the server writes back as a real client would
//! (frame layout, HEADERS/CONTINUATION sequencing, HPACK decodability, flow control).

pub mod grpc_messages;
pub mod h2_frames;
pub mod hpack_decode;
pub mod seeds;
pub mod wire;
