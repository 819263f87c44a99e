#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness (input layout, invariants) is in src/grpc_messages.rs, shared with the corpus replay test.
fuzz_target!(|data: &[u8]| metastore_net_fuzz::grpc_messages::run(data));
