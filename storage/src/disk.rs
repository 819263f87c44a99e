//! The only way storage reaches a disk. Each method's contract is what the engine relies on,
//! and what the fault-injecting implementation breaks on purpose.
//!
//! Writes and syncs are async (the server issues them through io_uring and keeps serving while
//! they are in flight); reads and file management are blocking (recovery, historical reads of
//! cold history, segment rotation: none of them on a hot path).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

/// A directory of files.
pub trait Disk {
    type File: DiskFile;

    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Self::File>;

    /// Creates a new, empty file (fails if it exists). Durable only after `sync_dir`.
    fn create(&self, path: &Path) -> io::Result<Self::File>;

    /// File names in `dir` (not paths), in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Removes a file. Durable only after `sync_dir`.
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// Atomically replaces `to` with `from`. Durable only after `sync_dir`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes the directory's entries (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file.
pub trait DiskFile {
    /// Writes all of `buf` at `offset`, handing the buffer back. The bytes are visible to reads
    /// at once but durable only after a successful `sync_data`; after a crash any unsynced
    /// byte may be lost or may survive (and a write may be torn at any byte).
    fn write_at(&self, buf: Vec<u8>, offset: u64) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;

    /// Makes every write that completed before this call durable. If it fails, nothing written
    /// since the last successful sync may be assumed durable (Linux may drop the dirty pages).
    fn sync_data(&self) -> impl Future<Output = io::Result<()>>;

    /// `write_at` without the reactor: for recovery and other rare, off-path writes.
    fn write_at_blocking(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// `sync_data` without the reactor: for recovery and other rare, off-path syncs.
    fn sync_data_blocking(&self) -> io::Result<()>;

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Reserves space so that later writes up to `len` do not allocate (and the file's length
    /// becomes at least `len`). Durable only after `sync_data`.
    fn allocate(&self, len: u64) -> io::Result<()>;

    /// Cuts the file to `len` bytes. Durable only after `sync_data`.
    fn truncate(&self, len: u64) -> io::Result<()>;

    /// The file's length.
    fn len(&self) -> io::Result<u64>;

    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub fn read_exact_at(f: &impl DiskFile, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = f.read_at(buf, offset)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file"));
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// The real disk through blocking system calls (`pwrite`, `fdatasync`): for offline tools and
/// tests. The server uses an io_uring implementation of the same traits.
#[derive(Debug, Clone, Default)]
pub struct StdDisk;

#[derive(Debug)]
pub struct StdFile {
    file: std::fs::File,
}

impl Disk for StdDisk {
    type File = StdFile;

    fn open(&self, path: &Path) -> io::Result<StdFile> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        Ok(StdFile { file })
    }

    fn create(&self, path: &Path) -> io::Result<StdFile> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(StdFile { file })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

impl DiskFile for StdFile {
    fn write_at(&self, buf: Vec<u8>, offset: u64) -> impl Future<Output = (io::Result<()>, Vec<u8>)> {
        use std::os::unix::fs::FileExt;
        let r = self.file.write_all_at(&buf, offset);
        std::future::ready((r, buf))
    }

    fn sync_data(&self) -> impl Future<Output = io::Result<()>> {
        std::future::ready(self.file.sync_data())
    }

    fn write_at_blocking(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(buf, offset)
    }

    fn sync_data_blocking(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        self.file.read_at(buf, offset)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsFd;
        let cur = self.file.metadata()?.len();
        if len <= cur {
            return Ok(());
        }
        match rustix_fallocate(self.file.as_fd(), len) {
            Ok(()) => Ok(()),
            // Filesystems without fallocate: extend the length instead.
            Err(_) => self.file.set_len(len),
        }
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

fn rustix_fallocate(fd: std::os::fd::BorrowedFd<'_>, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::empty(), 0, len).map_err(io::Error::from)
}

/// Joins a directory and a file name.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
