//! Snapshots for clients (Maintenance.Snapshot, `etcdctl snapshot save`) and restoring a new
//! member from one. The image holds the whole MVCC state, history included; the stream that
//! carries it is padded to a multiple of 512 bytes and followed by the SHA-256 of everything
//! before it, which is what etcd's clients check (`size ≡ 32 mod 512`). Layout in FORMAT.md.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use crate::disk::Disk;
use crate::engine::{
    decode_history, decode_keys, encode_checkpoint, encode_history, encode_keys, restore_store, write_checkpoint,
    CheckpointImage, CheckpointMeta, Reader,
};
use crate::fault::now;
use crate::log::{kind, Log, LogConfig};
use crate::mvcc::{History, MvccError, Revision, Store};
use crate::sha256::{sha256, Sha256};

const MAGIC: &[u8; 8] = b"MSTSNAP\0";
const VERSION: u32 = 1;
/// etcd's snapshot stream carries blocks of this size; its trailer follows the last.
pub const BLOCK_BYTES: usize = 512;
pub const TRAILER_BYTES: usize = 32;

/// The snapshot stream of a store: image, zero padding to a multiple of 512 bytes, SHA-256.
pub fn encode<H: History>(store: &Store<H>, sections: &[(u32, Vec<u8>)]) -> Result<Vec<u8>, MvccError> {
    // The image's length goes first (patched below), its checksum right after it.
    let mut b = Vec::with_capacity(64 << 10);
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&store.current_revision().to_le_bytes());
    b.extend_from_slice(&store.first_revision().to_le_bytes());
    encode_keys(&mut b, store, |_| false);
    let revs = store.history().revisions_from(Revision::default());
    b.extend_from_slice(&(revs.len() as u64).to_le_bytes());
    let mut rec = Vec::new();
    for rev in revs {
        let r = store.history().get(rev)?.ok_or(MvccError::Io)?;
        rec.clear();
        encode_history(&mut rec, rev, &r);
        b.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        b.extend_from_slice(&rec);
    }
    b.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for (tag, data) in sections {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&(data.len() as u64).to_le_bytes());
        b.extend_from_slice(data);
    }
    let len = (b.len() - 8) as u64;
    b[..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&b[8..]);
    b.extend_from_slice(&crc.to_le_bytes());
    b.resize(b.len().div_ceil(BLOCK_BYTES) * BLOCK_BYTES, 0);
    let digest = sha256(&b);
    b.extend_from_slice(&digest);
    Ok(b)
}

/// A decoded snapshot.
pub struct Image {
    pub rev: i64,
    pub compacted: i64,
    keys: Vec<crate::mvcc::KeyState>,
    history: Vec<(Revision, Vec<u8>)>,
    pub sections: Vec<(u32, Vec<u8>)>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image(rev {}, {} keys, {} history records)", self.rev, self.keys.len(), self.history.len())
    }
}

impl Image {
    pub fn live_keys(&self) -> usize {
        self.keys.iter().filter(|k| k.2.is_some()).count()
    }
    pub fn history_records(&self) -> usize {
        self.history.len()
    }
}

/// Checks and decodes a snapshot stream (`skip_hash`: accept one without a valid trailer, as
/// `etcdctl snapshot restore --skip-hash-check` does).
pub fn decode(data: &[u8], skip_hash: bool) -> Result<Image, String> {
    if data.len() < TRAILER_BYTES + 12 || !(data.len() - TRAILER_BYTES).is_multiple_of(BLOCK_BYTES) {
        return Err(format!(
            "not a snapshot: {} bytes is not a whole number of 512-byte blocks plus a trailer",
            data.len()
        ));
    }
    let (body, trailer) = data.split_at(data.len() - TRAILER_BYTES);
    if !skip_hash && sha256(body) != trailer {
        return Err("snapshot SHA-256 trailer mismatch (damaged or truncated file)".into());
    }
    let len = u64::from_le_bytes(body[..8].try_into().map_err(|_| "snapshot too short")?) as usize;
    let Some(crc) = body.get(8 + len..12 + len) else {
        return Err(format!("snapshot image of {len} bytes runs past the file"));
    };
    let image = &body[8..8 + len];
    if crc32c::crc32c(image) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err("snapshot image checksum mismatch".into());
    }
    let mut r = Reader::new(image);
    if r.bytes(8)? != MAGIC {
        return Err("not a MetaStore snapshot".into());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("snapshot format version {version}, this build reads {VERSION}"));
    }
    r.u32()?;
    let rev = r.i64()?;
    let compacted = r.i64()?;
    let (keys, _) = decode_keys(&mut r, false)?;
    let n = r.u64()?;
    let mut history = Vec::new();
    for _ in 0..n {
        let rec = r.blob()?;
        let (rev, _) = decode_history(rec)?;
        history.push((rev, rec.to_vec()));
    }
    let nsec = r.u32()?;
    let mut sections = Vec::new();
    for _ in 0..nsec {
        let tag = r.u32()?;
        let n = r.u64()? as usize;
        sections.push((tag, r.bytes(n)?.to_vec()));
    }
    Ok(Image { rev, compacted, keys, history, sections })
}

/// Writes a new member's data from a snapshot into `member_dir` (which must not exist yet):
/// its history as the first log segment, and a checkpoint at raft index `raft_index` whose
/// sections are `sections` (the caller's raft state for the new member).
pub fn restore<D: Disk + Clone>(
    disk: D,
    member_dir: &Path,
    img: &Image,
    raft_index: u64,
    sections: Vec<(u32, Vec<u8>)>,
) -> Result<(), String> {
    let log_dir = member_dir.join("log");
    let (log, _) =
        Log::open(disk.clone(), &log_dir, LogConfig::default(), |_, _, _| Ok(())).map_err(|e| e.to_string())?;
    let log = Rc::new(RefCell::new(log));
    let mut history = Vec::with_capacity(img.history.len());
    for (rev, rec) in &img.history {
        let loc = log.borrow_mut().append(kind::HISTORY, |b| b.extend_from_slice(rec)).map_err(|e| e.to_string())?;
        history.push((*rev, loc, (rec.len() + crate::log::RECORD_HEADER_BYTES) as u32));
        if log.borrow().pending_bytes() > 4 << 20 {
            flush(&log)?;
        }
    }
    flush(&log)?;
    let mut ckpt = CheckpointImage::new(
        CheckpointMeta { applied_index: raft_index, replay_from: log.borrow().tail(), sections },
        img.rev,
        img.compacted,
        img.keys.clone(),
        history,
    );
    let store = restore_store(&mut ckpt, log.clone())?;
    let image = encode_checkpoint(&store, &ckpt.meta);
    write_checkpoint(&disk, &member_dir.join("checkpoint"), raft_index, &image).map_err(|e| e.to_string())?;
    Ok(())
}

fn flush<D: Disk>(log: &Rc<RefCell<Log<D>>>) -> Result<(), String> {
    let f = log.borrow_mut().start_flush().map_err(|e| e.to_string())?;
    if let Some(f) = f {
        let done = now(f.run());
        log.borrow_mut().finish_flush(done).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// SHA-256 of a stream, incrementally (for tools that check a file without loading it).
pub fn digest_of(chunks: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for c in chunks {
        h.update(c);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{load_checkpoint, DurableHistory};
    use crate::fault::FaultDisk;
    use crate::mvcc::{MemHistory, RangeOptions};

    fn sample() -> Store<MemHistory> {
        let mut s = Store::new();
        for i in 0..50 {
            let mut w = s.write();
            w.put(format!("k{}", i % 9).as_bytes(), Some(format!("v{i}").as_bytes()), None);
        }
        let mut w = s.write();
        w.delete_range(b"k3", b"");
        drop(w);
        s.compact(20).unwrap();
        s
    }

    #[test]
    fn the_stream_is_blocks_plus_a_sha256_trailer_and_round_trips() {
        let s = sample();
        let bytes = encode(&s, &[(9, b"extra".to_vec())]).unwrap();
        assert_eq!(bytes.len() % 512, 32, "what etcdctl snapshot save checks");
        let img = decode(&bytes, false).unwrap();
        assert_eq!((img.rev, img.compacted), (s.current_revision(), s.first_revision()));
        assert_eq!(img.live_keys(), s.live_keys());
        assert_eq!(img.history_records(), s.history_records());
        assert_eq!(img.sections, vec![(9, b"extra".to_vec())]);
        let mut damaged = bytes.clone();
        damaged[100] ^= 1;
        assert!(decode(&damaged, false).unwrap_err().contains("SHA-256"));
        assert!(decode(&damaged, true).unwrap_err().contains("checksum"));
        assert!(decode(&bytes[..bytes.len() - 1], false).is_err());
    }

    #[test]
    fn restore_builds_a_member_that_reads_the_same() {
        let s = sample();
        let img = decode(&encode(&s, &[]).unwrap(), false).unwrap();
        let disk = FaultDisk::new();
        let dir = Path::new("/restored/member");
        restore(disk.clone(), dir, &img, 1, vec![(1, b"raft".to_vec())]).unwrap();
        let mut ck = load_checkpoint(&disk, &dir.join("checkpoint")).unwrap().unwrap();
        assert_eq!(ck.meta.applied_index, 1);
        assert!(!ck.in_log.is_empty(), "the checkpoint refers to the current records in the log");
        let (log, _) =
            Log::open(disk.clone(), &dir.join("log"), LogConfig::default(), |l, k, p| ck.visit_log(l, k, p)).unwrap();
        let restored: Store<DurableHistory<FaultDisk>> = restore_store(&mut ck, Rc::new(RefCell::new(log))).unwrap();
        for rev in [20, 30, 51, 52] {
            let o = RangeOptions { rev, ..Default::default() };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            s.range_each(b"\0", b"\0", &o, |r| a.push((r.key.to_vec(), r.value.to_vec(), r.version))).unwrap();
            restored.range_each(b"\0", b"\0", &o, |r| b.push((r.key.to_vec(), r.value.to_vec(), r.version))).unwrap();
            assert_eq!(a, b, "revision {rev}");
        }
        assert_eq!(restored.hash_kv(0).unwrap().0, s.hash_kv(0).unwrap().0, "same history, same hash");
    }
}
