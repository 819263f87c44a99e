//! `metastore-bench`: a load generator for the etcd v3 API, for MetaStore or etcd alike. It has
//! its own lean HTTP/2 client (the `h2` crate over a write-coalescing socket, see `coalesce.rs`)
//! because the client shares the machine's cores with the server: at ~7 µs of client CPU per
//! request it leaves them to the server, where a tonic client's ~60 µs would cap any server near
//! 30k QPS on 2 cores (`PERF-NOTES.md`). Workloads: put, range, txn-put, txn-mixed, null, and the
//! streaming ones: watch-latency, watch-fanout (put-to-event latency and events per second over
//! Watch streams) and lease-keepalive (request to response on LeaseKeepAlive streams); output: a
//! human summary on stdout (progress on stderr), then one JSON line per run. See `--help`.

mod args;
mod coalesce;
mod cpu;
mod grpc;
mod keys;
mod lease;
mod report;
mod run;
mod watch;
mod wire;
mod workload;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cfg = match args::parse(std::env::args().skip(1)) {
        Ok(args::Command::Run(cfg)) => cfg,
        Ok(args::Command::Help) => {
            print!("{}", args::usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("metastore-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = *cfg;
    match run::run(cfg.clone()) {
        Ok(measured) => {
            if !cfg.json {
                println!("{}", report::human(&cfg, &measured));
            }
            println!("{}", report::json(&cfg, &measured));
            if let Some(path) = &cfg.latency_out {
                if let Err(e) = std::fs::write(path, report::latency_json(&cfg, &measured)) {
                    eprintln!("metastore-bench: --latency-out {path}: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("metastore-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
