//! The log: append-only segment files of framed, checksummed records, written in batches with
//! one write and one `fdatasync` each (group commit). The byte layout is in `storage/FORMAT.md`.
//!
//! At most one batch is ever unsynced: a batch is written only after the previous one's sync
//! completed. So damage from a crash (a torn or partly lost write) is confined to the last batch
//! of the last segment, and recovery can tell it apart from corruption: every batch ends with a
//! commit record; a batch without a valid commit at the very end of the log is a torn tail
//! (never acknowledged: dropped, with a warning); any other bad record is corruption, reported
//! with its file and offset.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::disk::{read_exact_at, Disk, DiskFile};

/// A segment is closed for new batches once it reaches this size (a batch never spans two
/// segments, so a segment may exceed it by one batch). Tests use smaller segments.
pub const SEGMENT_BYTES_TARGET: u64 = 64 << 20;
/// The largest single record (a 1.5 MiB request with its overhead fits many times over).
pub const RECORD_BYTES_MAX: usize = 16 << 20;
/// Segments grow by this much at a time (preallocated, zero-filled).
pub const ALLOCATE_STEP_BYTES: u64 = 4 << 20;
/// Bytes of a segment's header.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// Bytes of a record's frame: length, checksum, kind.
pub const RECORD_HEADER_BYTES: usize = 9;
/// The format version written in every segment header.
pub const FORMAT_VERSION: u32 = 1;
const SEGMENT_MAGIC: &[u8; 8] = b"MSTSEG\0\0";
const SEGMENT_SUFFIX: &str = ".seg";
const _: () = assert!(RECORD_BYTES_MAX as u64 + (RECORD_HEADER_BYTES as u64) < SEGMENT_BYTES_TARGET);

/// Tunables of the log.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// See [`SEGMENT_BYTES_TARGET`].
    pub segment_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { segment_bytes: SEGMENT_BYTES_TARGET }
    }
}

/// Record kinds. Zero is never a kind: preallocated space reads as zeros and ends the data.
pub mod kind {
    /// A Raft log entry.
    pub const RAFT_ENTRY: u8 = 1;
    /// Raft's hard state (term, vote, commit).
    pub const HARD_STATE: u8 = 2;
    /// One MVCC history record (a key's state at one revision).
    pub const HISTORY: u8 = 3;
    /// Ends a batch: its start offset and record count.
    pub const COMMIT: u8 = 4;
    pub fn is_valid(k: u8) -> bool {
        (RAFT_ENTRY..=COMMIT).contains(&k)
    }
}

/// Where a record starts: its segment and the offset of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", segment_name(self.segment), self.offset)
    }
}

pub fn segment_name(seq: u64) -> String {
    format!("{seq:016x}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[derive(Debug)]
pub enum LogError {
    Io(io::Error),
    /// A record that cannot be what was written, outside the torn tail: the file and offset, and
    /// why. Recovery stops; nothing is dropped silently.
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A write or sync failed earlier: the log accepts nothing more until restarted.
    Failed(String),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io(e) => write!(f, "log I/O error: {e}"),
            LogError::Corrupt { file, offset, reason } => write!(
                f,
                "corrupt log record in {} at offset {offset}: {reason}. The records before it are intact. \
                 Way out: restore from a snapshot (`metastore snapshot restore`), or run \
                 `metastore repair --data-dir <dir>` to cut the log at this record (writes acknowledged \
                 after it are lost)",
                file.display()
            ),
            LogError::Failed(why) => write!(f, "the log stopped after a failed disk operation: {why}"),
        }
    }
}

impl std::error::Error for LogError {}

impl From<io::Error> for LogError {
    fn from(e: io::Error) -> Self {
        LogError::Io(e)
    }
}

struct Segment<F> {
    file: Rc<F>,
    /// Bytes of valid data (header and records) on disk.
    end: u64,
    /// The file's length (data and the space reserved ahead), kept here so that no call asks
    /// the file system (a statx per write once cost more syscalls than the write itself).
    size: u64,
}

/// What recovery found: every record of every committed batch, in order.
pub struct Recovered {
    /// A torn tail that was cut: where, and how many bytes.
    pub torn_tail: Option<(Location, u64)>,
    pub records: u64,
}

pub struct Log<D: Disk> {
    disk: D,
    dir: PathBuf,
    cfg: LogConfig,
    segments: BTreeMap<u64, Segment<D::File>>,
    /// The segment new records go to, and where the pending batch starts in it.
    head: u64,
    pending_at: u64,
    /// The pending batch, framed (begins with the segment header if `head` is new).
    pending: Vec<u8>,
    pending_records: u32,
    /// Whether the pending batch holds a record that must be durable before it counts (see
    /// [`Log::append_lazy`]).
    pending_needs_sync: bool,
    head_is_new: bool,
    in_flight: bool,
    /// Everything before this is durable.
    durable: Location,
    failed: Option<String>,
}

/// One batch on its way to disk: write it, sync it, then hand the result to
/// [`Log::finish_flush`]. It owns everything it needs, so the log stays usable meanwhile.
pub struct Flush<F> {
    file: Rc<F>,
    offset: u64,
    buf: Vec<u8>,
    end: Location,
}

/// The outcome of a flush, for [`Log::finish_flush`].
pub struct Flushed {
    result: io::Result<()>,
    end: Location,
    /// The buffer, handed back for reuse.
    pub buf: Vec<u8>,
}

impl<F: DiskFile> Flush<F> {
    /// Writes the batch and syncs it.
    pub async fn run(self) -> Flushed {
        let Flush { file, offset, buf, end } = self;
        let (w, buf) = file.write_at(buf, offset).await;
        let result = match w {
            Ok(()) => file.sync_data().await,
            Err(e) => Err(e),
        };
        Flushed { result, end, buf }
    }

    /// As [`Flush::run`], with blocking calls on this thread: for a batch that nothing else
    /// would overlap with, where handing the sync to another thread (io_uring's workers) and
    /// being woken by it costs more than the sync itself.
    pub fn run_blocking(self) -> Flushed {
        let Flush { file, offset, buf, end } = self;
        let result = file.write_at_blocking(&buf, offset).and_then(|()| file.sync_data_blocking());
        Flushed { result, end, buf }
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Issues the write and stops, as a crash between the write and its sync would. For crash
    /// tests only.
    #[doc(hidden)]
    pub async fn write_without_sync(self) {
        let _ = self.file.write_at(self.buf, self.offset).await;
    }
}

fn frame(buf: &mut Vec<u8>, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    buf[start + 8] = kind;
    payload(buf);
    let len = buf.len() - start - RECORD_HEADER_BYTES;
    assert!(len <= RECORD_BYTES_MAX, "record of {len} bytes over RECORD_BYTES_MAX");
    let crc = crc32c::crc32c(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    len + RECORD_HEADER_BYTES
}

fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16: flags, zero.
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    // 24..28: reserved, zero.
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

fn check_header(h: &[u8], seq: u64) -> Result<(), String> {
    if h.len() < SEGMENT_HEADER_BYTES as usize || &h[..8] != SEGMENT_MAGIC {
        return Err("not a segment header".into());
    }
    let crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc32c::crc32c(&h[..28]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FORMAT_VERSION {
        return Err(format!("segment format version {version}, this build reads {FORMAT_VERSION}"));
    }
    let s = u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
    if s != seq {
        return Err(format!("header says segment {s:x}, file name says {seq:x}"));
    }
    Ok(())
}

/// One parsed frame, or why it is not one.
enum Frame {
    Record {
        kind: u8,
        len: usize,
    },
    /// Zeros: the end of the data.
    End,
    Bad(String),
}

fn parse_frame(data: &[u8], pos: usize) -> Frame {
    let Some(h) = data.get(pos..pos + RECORD_HEADER_BYTES) else {
        return if data[pos..].iter().all(|&b| b == 0) { Frame::End } else { Frame::Bad("truncated frame".into()) };
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let k = h[8];
    if len == 0 && crc == 0 && k == 0 {
        return Frame::End;
    }
    if !kind::is_valid(k) {
        return Frame::Bad(format!("unknown record kind {k}"));
    }
    if len > RECORD_BYTES_MAX {
        return Frame::Bad(format!("record length {len} over the maximum"));
    }
    let Some(rest) = data.get(pos + 8..pos + RECORD_HEADER_BYTES + len) else {
        return Frame::Bad("record runs past the end of the file".into());
    };
    if crc32c::crc32c(rest) != crc {
        return Frame::Bad("checksum mismatch".into());
    }
    Frame::Record { kind: k, len }
}

/// Whether some valid commit record starts anywhere in `data[from..]` (then the damage before
/// it is not a torn tail: a later batch was written after it).
fn valid_commit_after(data: &[u8], from: usize) -> Option<usize> {
    let mut pos = from;
    while pos + RECORD_HEADER_BYTES <= data.len() {
        if data[pos + 8] == kind::COMMIT {
            if let Frame::Record { kind: kind::COMMIT, .. } = parse_frame(data, pos) {
                return Some(pos);
            }
        }
        pos += 1;
    }
    None
}

impl<D: Disk> Log<D> {
    /// Opens the log in `dir` (creating it if empty), passing every record of every committed
    /// batch, in order, to `visit(location, kind, payload)`. A torn tail is cut (and reported in
    /// the result); any other damage is an error naming the file and offset.
    pub fn open(
        disk: D,
        dir: &Path,
        cfg: LogConfig,
        mut visit: impl FnMut(Location, u8, &[u8]) -> Result<(), String>,
    ) -> Result<(Self, Recovered), LogError> {
        disk.create_dir_all(dir)?;
        let mut seqs: Vec<u64> = disk.list(dir)?.iter().filter_map(|n| parse_segment_name(n)).collect();
        seqs.sort_unstable();
        let mut log = Log {
            disk,
            dir: dir.to_path_buf(),
            cfg,
            segments: BTreeMap::new(),
            head: 0,
            pending_at: 0,
            pending: Vec::new(),
            pending_records: 0,
            pending_needs_sync: false,
            head_is_new: false,
            in_flight: false,
            durable: Location::default(),
            failed: None,
        };
        let mut recovered = Recovered { torn_tail: None, records: 0 };
        let mut batch: Vec<(Location, u8, std::ops::Range<usize>)> = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let path = dir.join(segment_name(seq));
            let file = log.disk.open(&path)?;
            let len = file.len()?;
            // One buffer for every segment: fresh pages for each would cost a fault and a
            // clearing per page.
            data.clear();
            data.resize(len as usize, 0);
            read_exact_at(&file, &mut data, 0)?;
            let corrupt = |offset: u64, reason: String| LogError::Corrupt { file: path.clone(), offset, reason };
            if let Err(why) = check_header(&data, seq) {
                if last && (data.iter().all(|&b| b == 0) || valid_commit_after(&data, 0).is_none()) {
                    // A segment whose first batch never fully landed: nothing in it was acknowledged.
                    recovered.torn_tail = Some((Location { segment: seq, offset: 0 }, len));
                    drop(file);
                    log.disk.remove(&path)?;
                    log.disk.sync_dir(dir)?;
                    continue;
                }
                return Err(corrupt(0, why));
            }
            let mut pos = SEGMENT_HEADER_BYTES as usize;
            let mut batch_start = pos;
            batch.clear();
            let end = loop {
                match parse_frame(&data, pos) {
                    Frame::End => break pos,
                    Frame::Bad(reason) => {
                        if last && valid_commit_after(&data, pos + 1).is_none() {
                            break pos;
                        }
                        return Err(corrupt(pos as u64, reason));
                    }
                    Frame::Record { kind: k, len } => {
                        let loc = Location { segment: seq, offset: pos as u64 };
                        let body = pos + RECORD_HEADER_BYTES..pos + RECORD_HEADER_BYTES + len;
                        if k == kind::COMMIT {
                            let b = &data[body.clone()];
                            let ok = b.len() == 12
                                && u64::from_le_bytes(b[..8].try_into().unwrap_or_default()) == batch_start as u64
                                && u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()) as usize == batch.len();
                            if !ok {
                                return Err(corrupt(pos as u64, "commit record does not match its batch".into()));
                            }
                            for (l, k, r) in batch.drain(..) {
                                visit(l, k, &data[r]).map_err(|reason| corrupt(l.offset, reason))?;
                                recovered.records += 1;
                            }
                            pos = body.end;
                            batch_start = pos;
                        } else {
                            batch.push((loc, k, body.clone()));
                            pos = body.end;
                        }
                    }
                }
            };
            // Records after the last commit belong to a batch that never completed.
            let valid_end = batch_start;
            if valid_end < end || end < len as usize && data[end..].iter().any(|&b| b != 0) {
                if !last {
                    return Err(corrupt(valid_end as u64, "incomplete batch in a sealed segment".into()));
                }
                let cut = data.len() - valid_end;
                recovered.torn_tail = Some((Location { segment: seq, offset: valid_end as u64 }, cut as u64));
                // Zero the torn bytes, so the data ends at the last commit again.
                file.write_at_blocking(&vec![0u8; cut], valid_end as u64)?;
                file.sync_data_blocking()?;
            }
            let size = file.len()?;
            log.segments.insert(seq, Segment { file: Rc::new(file), end: valid_end as u64, size });
            log.head = seq;
        }
        match log.segments.get(&log.head) {
            Some(seg) if seg.end < log.cfg.segment_bytes => {
                log.pending_at = seg.end;
            }
            _ => log.start_segment(),
        }
        log.durable = Location { segment: log.head, offset: log.pending_at };
        Ok((log, recovered))
    }

    /// The next batch goes to a new segment (created when the batch is flushed).
    fn start_segment(&mut self) {
        self.head = self.segments.keys().next_back().map_or(1, |s| s + 1);
        self.pending_at = 0;
        self.head_is_new = true;
    }

    fn check(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(why) => Err(LogError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Appends a record to the pending batch; returns where it will be.
    pub fn append(&mut self, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) -> Result<Location, LogError> {
        let loc = self.append_lazy(kind, payload)?;
        self.pending_needs_sync = true;
        Ok(loc)
    }

    /// Appends a record that nothing waits on being durable by itself — one that recovery can
    /// do without, such as a history record (replaying its raft entry writes it again) or a hard
    /// state that only moves the commit index (etcd does not sync for those either: raft's
    /// `MustSync`). It goes out with the next batch that must be synced ([`Log::needs_sync`]),
    /// so a write costs one sync, not one for its entry and another for what applying it
    /// appended.
    pub fn append_lazy(&mut self, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) -> Result<Location, LogError> {
        self.check()?;
        debug_assert!(kind::is_valid(kind) && kind != kind::COMMIT);
        if self.pending.is_empty() && self.head_is_new {
            self.pending.extend_from_slice(&segment_header(self.head));
        }
        let loc = Location { segment: self.head, offset: self.pending_at + self.pending.len() as u64 };
        frame(&mut self.pending, kind, payload);
        self.pending_records += 1;
        Ok(loc)
    }

    /// Bytes waiting for the next flush.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Whether the pending batch holds a record appended with [`Log::append`] (one that must
    /// be durable): only then is a flush needed, unless the caller wants everything out.
    pub fn needs_sync(&self) -> bool {
        self.pending_needs_sync
    }

    pub fn is_flushing(&self) -> bool {
        self.in_flight
    }

    /// Everything before this location is durable.
    pub fn durable(&self) -> Location {
        self.durable
    }

    /// Where the next record will be.
    pub fn tail(&self) -> Location {
        Location { segment: self.head, offset: self.pending_at + self.pending.len() as u64 }
    }

    /// Takes the pending batch for writing, unless a flush is already in flight (the next batch
    /// waits for it: at most one batch is ever unsynced).
    pub fn start_flush(&mut self) -> Result<Option<Flush<D::File>>, LogError> {
        self.check()?;
        if self.in_flight || self.pending_records == 0 {
            return Ok(None);
        }
        let batch_start = if self.head_is_new { SEGMENT_HEADER_BYTES } else { self.pending_at };
        let count = self.pending_records;
        frame(&mut self.pending, kind::COMMIT, |b| {
            b.extend_from_slice(&batch_start.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
        });
        if self.head_is_new {
            let path = self.dir.join(segment_name(self.head));
            let file = self.disk.create(&path)?;
            self.disk.sync_dir(&self.dir)?;
            self.segments.insert(self.head, Segment { file: Rc::new(file), end: 0, size: 0 });
            self.head_is_new = false;
        }
        let seg = self.segments.get_mut(&self.head).ok_or_else(|| LogError::Failed("head segment missing".into()))?;
        // Space is reserved ahead in steps, so most batches write into allocated blocks (no
        // block allocation on the sync's path) while the file stays close to its data's size.
        let need = self.pending_at + self.pending.len() as u64;
        if need > seg.size {
            let step = ALLOCATE_STEP_BYTES.min(self.cfg.segment_bytes);
            let size = need.div_ceil(step) * step;
            seg.file.allocate(size)?;
            seg.size = seg.size.max(size);
        }
        let buf = std::mem::take(&mut self.pending);
        let end = Location { segment: self.head, offset: self.pending_at + buf.len() as u64 };
        let flush = Flush { file: seg.file.clone(), offset: self.pending_at, buf, end };
        self.pending_at = end.offset;
        self.pending_records = 0;
        self.pending_needs_sync = false;
        self.in_flight = true;
        if self.pending_at >= self.cfg.segment_bytes {
            self.start_segment();
        }
        Ok(Some(flush))
    }

    /// Records a flush's outcome. After a failure the log refuses everything: what was written
    /// since the last good sync may be gone, and only a restart (recovery) knows what survived.
    pub fn finish_flush(&mut self, done: Flushed) -> Result<Location, LogError> {
        self.in_flight = false;
        if self.pending.capacity() == 0 {
            let mut buf = done.buf;
            buf.clear();
            self.pending = buf;
        }
        if let Err(e) = done.result {
            let why = format!("write or sync of the batch ending at {} failed: {e}", done.end);
            self.failed = Some(why.clone());
            return Err(LogError::Failed(why));
        }
        if let Some(seg) = self.segments.get_mut(&done.end.segment) {
            seg.end = seg.end.max(done.end.offset);
        }
        self.durable = done.end;
        Ok(done.end)
    }

    /// Reads a durable record back (checking its frame): its kind and payload.
    pub fn read(&self, loc: Location) -> Result<(u8, Vec<u8>), LogError> {
        let seg = self.segments.get(&loc.segment).ok_or_else(|| LogError::Corrupt {
            file: self.dir.join(segment_name(loc.segment)),
            offset: loc.offset,
            reason: "segment missing".into(),
        })?;
        let path = || self.dir.join(segment_name(loc.segment));
        let mut h = [0u8; RECORD_HEADER_BYTES];
        read_exact_at(&*seg.file, &mut h, loc.offset)?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > RECORD_BYTES_MAX || !kind::is_valid(h[8]) {
            return Err(LogError::Corrupt { file: path(), offset: loc.offset, reason: "bad frame".into() });
        }
        let mut body = vec![0u8; len + 1];
        read_exact_at(&*seg.file, &mut body, loc.offset + 8)?;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if crc32c::crc32c(&body) != crc {
            return Err(LogError::Corrupt { file: path(), offset: loc.offset, reason: "checksum mismatch".into() });
        }
        body.remove(0);
        Ok((h[8], body))
    }

    /// Ends the head segment: the next batch starts a new one (so that GC can take the old one).
    /// Only between batches: returns false while records are pending.
    pub fn seal_head(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        if !self.head_is_new {
            self.start_segment();
        }
        true
    }

    /// The segment new batches go to.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Segments and their data sizes, oldest first.
    pub fn segments(&self) -> Vec<(u64, u64)> {
        self.segments.iter().map(|(s, seg)| (*s, seg.end)).collect()
    }

    /// Bytes the segment files take on disk (what dbSize reports).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size.max(s.end)).sum()
    }

    /// Deletes a whole segment (its records are no longer needed). Never the head.
    pub fn remove_segment(&mut self, seq: u64) -> Result<(), LogError> {
        if seq == self.head {
            return Err(LogError::Failed("refusing to remove the head segment".into()));
        }
        if self.segments.remove(&seq).is_some() {
            self.disk.remove(&self.dir.join(segment_name(seq)))?;
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Cuts the log at its first corrupt record, repeatedly, until it opens: the bad segment is
/// zeroed from the bad record on and every later segment is removed. Returns what was done (an
/// empty list if the log was intact). Everything after the cut is lost, acknowledged or not;
/// this is the documented way out when recovery refuses to start.
pub fn repair<D: Disk + Clone>(disk: D, dir: &Path) -> Result<Vec<String>, LogError> {
    let mut actions = Vec::new();
    for _ in 0..64 {
        match Log::open(disk.clone(), dir, LogConfig::default(), |_, _, _| Ok(())) {
            Ok(_) => return Ok(actions),
            Err(LogError::Corrupt { file, offset, reason }) => {
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let seq = parse_segment_name(&name)
                    .ok_or_else(|| LogError::Failed(format!("cannot repair {}: not a segment", file.display())))?;
                let f = disk.open(&file)?;
                let len = f.len()?;
                let cut = offset.max(SEGMENT_HEADER_BYTES).min(len);
                if offset < SEGMENT_HEADER_BYTES {
                    // The header itself is bad: the whole segment goes.
                    drop(f);
                    disk.remove(&file)?;
                } else {
                    f.write_at_blocking(&vec![0u8; (len - cut) as usize], cut)?;
                    f.sync_data_blocking()?;
                }
                actions.push(format!(
                    "cut {} at offset {offset} ({reason}): {} bytes dropped",
                    file.display(),
                    len - cut
                ));
                let mut later: Vec<u64> =
                    disk.list(dir)?.iter().filter_map(|n| parse_segment_name(n)).filter(|s| *s > seq).collect();
                later.sort_unstable();
                for s in later {
                    disk.remove(&dir.join(segment_name(s)))?;
                    actions.push(format!("removed {} (after the cut)", segment_name(s)));
                }
                disk.sync_dir(dir)?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(LogError::Failed("the log could not be repaired".into()))
}
