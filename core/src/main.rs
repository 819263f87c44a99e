//! `metastore`: with no flags, serves the etcd v3 API on 127.0.0.1:2379 with its data in
//! ./default.metastore, as `etcd` does. SIGINT or SIGTERM drains and stops it.

use std::process::ExitCode;

use metastore_core::config::{self, Command};
use metastore_core::server;

/// `--features count-allocs`: count every heap allocation (`metastore_heap_allocations_total`).
#[cfg(feature = "count-allocs")]
#[global_allocator]
static GLOBAL: metastore_core::alloc_count::CountingAlloc = metastore_core::alloc_count::CountingAlloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tool = match args.first().map(String::as_str) {
        Some("snapshot") if args.get(1).map(String::as_str) == Some("restore") => {
            Some(metastore_core::tools::snapshot_restore(&args[2..]))
        }
        Some("repair") => Some(metastore_core::tools::repair(&args[1..])),
        _ => None,
    };
    if let Some(r) = tool {
        return match r {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("metastore: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cfg = match config::parse_args(args) {
        Ok(Command::Serve(cfg)) => *cfg,
        Ok(Command::Help) => {
            print!("{}", config::usage());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("metastore Version: {}", env!("CARGO_PKG_VERSION"));
            println!("etcd API Version: 3.5");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("metastore: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match &cfg.log_output {
        config::LogOutput::Stderr => {
            logs.with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
        config::LogOutput::Stdout => logs.with_writer(std::io::stdout).with_ansi(false).init(),
        config::LogOutput::File(path) => {
            let file = match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("metastore: --log-outputs {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            logs.with_writer(std::sync::Mutex::new(file)).with_ansi(false).init()
        }
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }

    // Block the stop signals before any thread starts, so every thread inherits the mask and
    // only this one receives them (in sigwait below).
    let set = stop_signals();
    // SAFETY: `set` is a valid, initialised signal set; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let server = match server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("metastore: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid place for the result.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        tracing::error!(rc, "sigwait failed; stopping");
    }
    tracing::info!(signal = sig, "received a stop signal; draining");
    server.stop();
    server.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` points to a sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}
