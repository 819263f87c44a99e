//! The real disk for the server: writes and `fdatasync` go through the core's reactor
//! (io_uring when that is the driver, so the core keeps serving while a batch syncs); file
//! management and the rare blocking reads and writes use plain system calls.

use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use metastore_storage::disk::{Disk, DiskFile, StdDisk};

#[derive(Debug, Clone, Copy, Default)]
pub struct ReactorDisk;

pub struct ReactorFile {
    std: std::fs::File,
    io: monoio::fs::File,
}

impl ReactorFile {
    fn new(std: std::fs::File) -> io::Result<Self> {
        let io = monoio::fs::File::from_std(std.try_clone()?)?;
        Ok(Self { std, io })
    }
}

impl Disk for ReactorDisk {
    type File = ReactorFile;

    fn open(&self, path: &Path) -> io::Result<ReactorFile> {
        ReactorFile::new(std::fs::OpenOptions::new().read(true).write(true).open(path)?)
    }

    fn create(&self, path: &Path) -> io::Result<ReactorFile> {
        ReactorFile::new(std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path)?)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdDisk.list(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdDisk.create_dir_all(dir)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        StdDisk.remove(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdDisk.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdDisk.sync_dir(dir)
    }
}

impl DiskFile for ReactorFile {
    fn write_at(&self, buf: Vec<u8>, offset: u64) -> impl Future<Output = (io::Result<()>, Vec<u8>)> {
        self.io.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> impl Future<Output = io::Result<()>> {
        self.io.sync_data()
    }

    fn write_at_blocking(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.std.write_all_at(buf, offset)
    }

    fn sync_data_blocking(&self) -> io::Result<()> {
        self.std.sync_data()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.std.read_at(buf, offset)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsFd;
        if len <= self.std.metadata()?.len() {
            return Ok(());
        }
        match rustix::fs::fallocate(self.std.as_fd(), rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            Err(_) => self.std.set_len(len),
        }
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.std.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.std.metadata()?.len())
    }
}
