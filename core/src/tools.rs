//! Offline commands of the `metastore` binary: `snapshot restore` (a new member from a
//! snapshot, as `etcdutl snapshot restore` does for etcd) and `repair` (cut a corrupt log at its
//! first bad record, the documented way out when recovery refuses to start).

use std::path::Path;

use metastore_raft::RaftCheckpoint;
use metastore_storage::disk::{Disk, StdDisk};

use crate::config::{self, Command};
use crate::shard::{member_dir, SECTION_RAFT};

/// `metastore snapshot restore FILE --data-dir DIR [--name N] [--initial-cluster-token T]
/// [--initial-advertise-peer-urls U] [--skip-hash-check]`. Returns what to print.
pub fn snapshot_restore(args: &[String]) -> Result<String, String> {
    let mut file = None;
    let mut skip_hash = false;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip-hash-check" | "-skip-hash-check" => skip_hash = true,
            s if !s.starts_with('-') && file.is_none() => file = Some(s.to_string()),
            s => {
                rest.push(s.to_string());
                if !s.contains('=') {
                    if let Some(v) = it.next() {
                        rest.push(v.clone());
                    }
                }
            }
        }
    }
    let file = file.ok_or("usage: metastore snapshot restore FILE --data-dir DIR [flags]")?;
    let cfg = match config::parse_args(rest).map_err(|e| e.0)? {
        Command::Serve(c) => *c,
        _ => return Err("usage: metastore snapshot restore FILE --data-dir DIR [flags]".into()),
    };
    let member = member_dir(&cfg.data_dir);
    if member.exists() {
        return Err(format!("data-dir {:?} exists", cfg.data_dir.display().to_string()));
    }
    let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let img = metastore_storage::snapshot::decode(&bytes, skip_hash).map_err(|e| format!("{file}: {e}"))?;
    // The new member starts a new one-voter group whose raft log begins after the snapshot.
    let raft = RaftCheckpoint { index: 1, term: 1, voters: vec![cfg.member_id()], learners: vec![] };
    metastore_storage::snapshot::restore(StdDisk, &member, &img, 1, vec![(SECTION_RAFT, raft.encode())])?;
    Ok(format!(
        "restored snapshot {file} into {}: revision {}, {} keys, {} history records, member {:x}",
        cfg.data_dir.display(),
        img.rev,
        img.live_keys(),
        img.history_records(),
        cfg.member_id()
    ))
}

/// `metastore repair --data-dir DIR`: cuts the log at its first corrupt record (everything
/// from there on is dropped, acknowledged writes included) and drops checkpoints that need the
/// cut part. Returns what was done.
pub fn repair(args: &[String]) -> Result<String, String> {
    let cfg = match config::parse_args(args.iter().cloned()).map_err(|e| e.0)? {
        Command::Serve(c) => *c,
        _ => return Err("usage: metastore repair --data-dir DIR".into()),
    };
    let member = member_dir(&cfg.data_dir);
    let actions = metastore_storage::log::repair(StdDisk, &member.join("log")).map_err(|e| e.to_string())?;
    let mut report = actions.clone();
    if !actions.is_empty() {
        // Checkpoints may point at history in the cut part: keep none, so recovery replays the
        // log that is left.
        let dir = member.join("checkpoint");
        if let Ok(names) = StdDisk.list(&dir) {
            for n in names {
                let _ = StdDisk.remove(&dir.join(&n));
                report.push(format!("removed checkpoint {n}"));
            }
        }
    }
    if report.is_empty() {
        return Ok(format!("{}: the log is intact; nothing to repair", cfg.data_dir.display()));
    }
    Ok(report.join("\n"))
}

/// Whether `path` holds a data directory's member data.
pub fn has_member(path: &Path) -> bool {
    member_dir(path).exists()
}
