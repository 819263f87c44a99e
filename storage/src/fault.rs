//! An in-memory disk that breaks the way real ones do, for crash tests: unsynced writes lost or
//! torn at any byte, directory changes lost without a directory sync, the N-th write or sync
//! failing (a failed sync loses everything unsynced, as Linux may), bits flipped at rest.
//!
//! `crash` returns the disk a power cut would leave: for every file, its synced bytes plus a
//! random prefix of its later writes in order, the last of them possibly cut short; for every
//! directory, its synced entries plus a random prefix of later creations, removals and renames.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::disk::{Disk, DiskFile};

/// A seeded xorshift generator, so every crash is replayable from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What reads see now.
    data: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Writes (and truncations/allocations) since the last sync, in order.
    pending: Vec<Op>,
    /// A failed sync lost the pending writes: they cannot become durable any more.
    lost: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(data: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(off, bytes) => {
            let end = *off as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*off as usize..end].copy_from_slice(bytes);
        }
        Op::SetLen(len) => data.resize(*len as usize, 0),
    }
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(PathBuf, usize),
    Unlink(PathBuf),
}

#[derive(Debug, Clone, Default)]
struct State {
    inodes: Vec<Inode>,
    names: HashMap<PathBuf, usize>,
    durable_names: HashMap<PathBuf, usize>,
    /// Directory changes since the last sync of their directory.
    pending_dir: Vec<DirOp>,
    writes: u64,
    syncs: u64,
    fail_write: Option<u64>,
    fail_sync: Option<u64>,
    /// A failed write still puts this many of its bytes on the file (a short write).
    short_write_bytes: usize,
}

/// The in-memory faulty disk. Cloning shares the same disk.
#[derive(Debug, Clone, Default)]
pub struct FaultDisk {
    state: Rc<RefCell<State>>,
}

#[derive(Debug, Clone)]
pub struct FaultFile {
    state: Rc<RefCell<State>>,
    inode: usize,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

impl FaultDisk {
    pub fn new() -> Self {
        Self::default()
    }

    /// The `n`-th write from now on (1 = the next) fails; `short_bytes` of it still land.
    pub fn fail_write_after(&self, n: u64, short_bytes: usize) {
        let mut s = self.state.borrow_mut();
        s.fail_write = Some(s.writes + n);
        s.short_write_bytes = short_bytes;
    }

    /// The `n`-th sync from now on (1 = the next) fails.
    pub fn fail_sync_after(&self, n: u64) {
        let mut s = self.state.borrow_mut();
        s.fail_sync = Some(s.syncs + n);
    }

    pub fn writes(&self) -> u64 {
        self.state.borrow().writes
    }

    pub fn syncs(&self) -> u64 {
        self.state.borrow().syncs
    }

    /// What a power cut now would leave, chosen by `rng`.
    pub fn crash(&self, rng: &mut Rng) -> FaultDisk {
        let s = self.state.borrow();
        let mut inodes = Vec::with_capacity(s.inodes.len());
        for ino in &s.inodes {
            let mut data = ino.durable.clone();
            if !ino.lost && !ino.pending.is_empty() {
                let keep = rng.below(ino.pending.len() as u64 + 1) as usize;
                for (i, op) in ino.pending.iter().take(keep).enumerate() {
                    if i + 1 == keep {
                        // The last surviving write may be torn at any byte.
                        if let Op::Write(off, bytes) = op {
                            let cut = rng.below(bytes.len() as u64 + 1) as usize;
                            apply(&mut data, &Op::Write(*off, bytes[..cut].to_vec()));
                            continue;
                        }
                    }
                    apply(&mut data, op);
                }
            }
            inodes.push(Inode { data: data.clone(), durable: data, pending: Vec::new(), lost: false });
        }
        let mut names = s.durable_names.clone();
        let keep = rng.below(s.pending_dir.len() as u64 + 1) as usize;
        for op in s.pending_dir.iter().take(keep) {
            match op {
                DirOp::Link(p, i) => {
                    names.insert(p.clone(), *i);
                }
                DirOp::Unlink(p) => {
                    names.remove(p);
                }
            }
        }
        let state = State { inodes, durable_names: names.clone(), names, ..State::default() };
        FaultDisk { state: Rc::new(RefCell::new(state)) }
    }

    /// The same as `crash`, but every unsynced byte and directory change is lost.
    pub fn crash_clean(&self) -> FaultDisk {
        let s = self.state.borrow();
        let inodes = s
            .inodes
            .iter()
            .map(|i| Inode { data: i.durable.clone(), durable: i.durable.clone(), pending: Vec::new(), lost: false })
            .collect();
        let state = State {
            inodes,
            names: s.durable_names.clone(),
            durable_names: s.durable_names.clone(),
            ..State::default()
        };
        FaultDisk { state: Rc::new(RefCell::new(state)) }
    }

    /// Flips one bit of a file's bytes at rest (what reads and crashes see).
    pub fn flip_bit(&self, path: &Path, byte: usize, bit: u8) -> bool {
        let mut s = self.state.borrow_mut();
        let Some(&i) = s.names.get(path) else { return false };
        let ino = &mut s.inodes[i];
        if byte >= ino.data.len() {
            return false;
        }
        ino.data[byte] ^= 1 << (bit % 8);
        if byte < ino.durable.len() {
            ino.durable[byte] ^= 1 << (bit % 8);
        }
        true
    }

    /// Paths of every file, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.state.borrow().names.keys().cloned().collect();
        v.sort();
        v
    }

    /// Length of a file's visible bytes.
    pub fn file_len(&self, path: &Path) -> Option<usize> {
        let s = self.state.borrow();
        s.names.get(path).map(|&i| s.inodes[i].data.len())
    }
}

impl Disk for FaultDisk {
    type File = FaultFile;

    fn open(&self, path: &Path) -> io::Result<FaultFile> {
        let s = self.state.borrow();
        let inode = *s.names.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(FaultFile { state: self.state.clone(), inode })
    }

    fn create(&self, path: &Path) -> io::Result<FaultFile> {
        let mut s = self.state.borrow_mut();
        if s.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let inode = s.inodes.len();
        s.inodes.push(Inode::default());
        s.names.insert(path.to_path_buf(), inode);
        s.pending_dir.push(DirOp::Link(path.to_path_buf(), inode));
        Ok(FaultFile { state: self.state.clone(), inode })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.state.borrow();
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.names.remove(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.pending_dir.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let i = s.names.remove(from).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.names.insert(to.to_path_buf(), i);
        // A rename is atomic: both halves land together or not at all.
        s.pending_dir.push(DirOp::Link(to.to_path_buf(), i));
        s.pending_dir.push(DirOp::Unlink(from.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let ops = std::mem::take(&mut s.pending_dir);
        let mut rest = Vec::new();
        for op in ops {
            let in_dir = match &op {
                DirOp::Link(p, _) | DirOp::Unlink(p) => p.parent() == Some(dir),
            };
            if !in_dir {
                rest.push(op);
                continue;
            }
            match op {
                DirOp::Link(p, i) => {
                    s.durable_names.insert(p, i);
                }
                DirOp::Unlink(p) => {
                    s.durable_names.remove(&p);
                }
            }
        }
        s.pending_dir = rest;
        Ok(())
    }
}

impl FaultFile {
    fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.writes += 1;
        let fail = s.fail_write == Some(s.writes);
        let n = if fail { s.short_write_bytes.min(buf.len()) } else { buf.len() };
        let op = Op::Write(offset, buf[..n].to_vec());
        let ino = &mut s.inodes[self.inode];
        apply(&mut ino.data, &op);
        ino.pending.push(op);
        if fail {
            Err(eio("write"))
        } else {
            Ok(())
        }
    }

    fn sync(&self) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.syncs += 1;
        let fail = s.fail_sync == Some(s.syncs);
        let ino = &mut s.inodes[self.inode];
        if fail || ino.lost {
            // The kernel may have dropped the dirty pages: nothing pending will ever be durable.
            ino.lost = true;
            return Err(eio("sync"));
        }
        for op in std::mem::take(&mut ino.pending) {
            apply(&mut ino.durable, &op);
        }
        Ok(())
    }
}

impl DiskFile for FaultFile {
    fn write_at(&self, buf: Vec<u8>, offset: u64) -> impl Future<Output = (io::Result<()>, Vec<u8>)> {
        let r = self.write(&buf, offset);
        std::future::ready((r, buf))
    }

    fn sync_data(&self) -> impl Future<Output = io::Result<()>> {
        std::future::ready(self.sync())
    }

    fn write_at_blocking(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(buf, offset)
    }

    fn sync_data_blocking(&self) -> io::Result<()> {
        self.sync()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let s = self.state.borrow();
        let data = &s.inodes[self.inode].data;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let ino = &mut s.inodes[self.inode];
        if (ino.data.len() as u64) < len {
            let op = Op::SetLen(len);
            apply(&mut ino.data, &op);
            ino.pending.push(op);
        }
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let ino = &mut s.inodes[self.inode];
        let op = Op::SetLen(len);
        apply(&mut ino.data, &op);
        ino.pending.push(op);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state.borrow().inodes[self.inode].data.len() as u64)
    }
}

/// Runs a future that is ready at once (the fault disk's and the std disk's always are).
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("fault and std disk futures are always ready"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_may_vanish_synced_ones_never() {
        let d = FaultDisk::new();
        let p = Path::new("/d/f");
        let f = d.create(p).unwrap();
        d.sync_dir(Path::new("/d")).unwrap();
        now(f.write_at(b"hello".to_vec(), 0)).0.unwrap();
        now(f.sync_data()).unwrap();
        now(f.write_at(b" world".to_vec(), 5)).0.unwrap();
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let c = d.crash(&mut Rng::new(seed));
            let f = c.open(p).unwrap();
            let mut buf = vec![0u8; 11];
            let n = f.read_at(&mut buf, 0).unwrap();
            assert!(n >= 5 && &buf[..5] == b"hello");
            assert_eq!(&buf[5..n], &b" world"[..n - 5], "a torn write is a prefix");
            seen.insert(n);
        }
        assert!(seen.contains(&5) && seen.contains(&11) && seen.len() > 2, "lost, whole and torn: {seen:?}");
        let c = d.crash_clean();
        assert_eq!(c.file_len(p), Some(5));
    }

    #[test]
    fn directory_changes_need_a_directory_sync() {
        let d = FaultDisk::new();
        d.create(Path::new("/d/a")).unwrap();
        assert!(d.crash_clean().open(Path::new("/d/a")).is_err());
        d.sync_dir(Path::new("/d")).unwrap();
        d.rename(Path::new("/d/a"), Path::new("/d/b")).unwrap();
        let c = d.crash_clean();
        assert!(c.open(Path::new("/d/a")).is_ok() && c.open(Path::new("/d/b")).is_err());
        d.sync_dir(Path::new("/d")).unwrap();
        let c = d.crash_clean();
        assert!(c.open(Path::new("/d/a")).is_err() && c.open(Path::new("/d/b")).is_ok());
    }

    #[test]
    fn injected_failures() {
        let d = FaultDisk::new();
        let f = d.create(Path::new("/d/f")).unwrap();
        d.fail_write_after(1, 2);
        assert!(now(f.write_at(b"abcd".to_vec(), 0)).0.is_err());
        assert_eq!(f.len().unwrap(), 2, "a short write leaves part of the bytes");
        d.fail_sync_after(1);
        assert!(now(f.sync_data()).is_err());
        assert!(now(f.sync_data()).is_err(), "after a failed sync the file never syncs again");
        d.sync_dir(Path::new("/d")).unwrap();
        assert_eq!(d.crash(&mut Rng::new(1)).file_len(Path::new("/d/f")), Some(0));
        assert!(d.flip_bit(Path::new("/d/f"), 0, 3));
    }
}
