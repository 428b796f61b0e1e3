//! The storage I/O seam: every call through which storage asks the kernel
//! to reserve space or make bytes durable goes through this module, so tests
//! can make it fail the way a broken disk does (a failing fsync, a short
//! write, a full disk) and check what the broker does about it.
//!
//! In a normal build these functions are the plain system calls. With the
//! `fault-injection` cargo feature (the crate's own tests turn it on) a
//! process-wide list of armed faults is consulted first: each names a path
//! fragment, the operation it breaks and how many times. The check is one
//! relaxed atomic load when nothing is armed.
//!
//! redb's `FailingBackend` is the model; a process-wide list instead of a
//! backend object keeps the hot path free of dynamic dispatch and lets a
//! test break one broker's directory without threading a handle through
//! every layer.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;

/// Writes `bytes` at `offset` (zeroing a truncated range).
pub(crate) fn write_all_at(
    file: &File,
    path: &std::path::Path,
    bytes: &[u8],
    offset: u64,
) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    if let Some(fault) = armed::take(path, Operation::Write) {
        fault.apply_to_write(file, bytes, offset)?;
    }
    let _ = path;
    file.write_all_at(bytes, offset)
}

/// Writes `parts`, one after the other, at `offset` with `pwritev`: one
/// system call for a batch and its patched header in the common case,
/// more only after a short write.
pub(crate) fn write_all_vectored_at(
    file: &File,
    path: &std::path::Path,
    parts: &[&[u8]],
    offset: u64,
) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    if let Some(fault) = armed::take(path, Operation::Write) {
        fault.apply_to_write(file, &parts.concat(), offset)?;
    }
    let _ = path;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0usize;
    while done < total {
        // The parts not yet written, the first of them cut where the last
        // write stopped.
        let mut skip = done;
        let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
        let mut n = 0;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            assert!(n < slices.len(), "at most 4 parts per vectored write");
            slices[n] = IoSlice::new(&part[skip..]);
            skip = 0;
            n += 1;
        }
        match rustix::io::pwritev(file, &slices[..n], offset + done as u64) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(written) => done += written,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `fsync` of a whole file (data and metadata).
pub(crate) fn sync_all(file: &File, path: &std::path::Path) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    if let Some(err) = armed::take(path, Operation::Sync).and_then(|f| f.stall_or_error()) {
        return Err(err);
    }
    let _ = path;
    file.sync_all()
}

/// `fdatasync` of a file.
pub(crate) fn sync_data(file: &File, path: &std::path::Path) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    if let Some(err) = armed::take(path, Operation::Sync).and_then(|f| f.stall_or_error()) {
        return Err(err);
    }
    let _ = path;
    file.sync_data()
}

/// Which storage call a fault breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Writes of appended batches, and of zeros over a truncated range.
    Write,
    /// Flushes to stable storage: `fsync`, `fdatasync`.
    Sync,
}

/// How the broken call fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The call fails with `EIO`, as a dying disk's fsync does.
    Eio,
    /// The call fails with `ENOSPC`.
    NoSpace,
    /// A write stores only part of its bytes, then the device reports
    /// nothing more written (`WriteZero`).
    ShortWrite,
    /// The call takes this many milliseconds more, then works: a disk
    /// slower than the producers.
    Stall {
        /// Added duration.
        ms: u32,
    },
}

#[cfg(feature = "fault-injection")]
pub use armed::{arm, disarm_matching, Fault};

#[cfg(feature = "fault-injection")]
mod armed {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use parking_lot::Mutex;

    /// One armed fault.
    #[derive(Clone, Debug)]
    pub struct Fault {
        /// Paths containing this fragment are affected.
        pub path_contains: String,
        /// The call it breaks.
        pub operation: Operation,
        /// How.
        pub kind: FaultKind,
        /// How many calls it breaks before it disarms (`u32::MAX`: forever).
        pub times: u32,
    }

    impl Fault {
        /// Sleeps for a stall and returns `None`; else the error to fail
        /// the call with.
        pub(super) fn stall_or_error(&self) -> Option<io::Error> {
            match self.kind {
                FaultKind::Stall { ms } => {
                    std::thread::sleep(std::time::Duration::from_millis(u64::from(ms)));
                    None
                }
                _ => Some(self.error()),
            }
        }

        fn error(&self) -> io::Error {
            match self.kind {
                FaultKind::Stall { .. } => io::Error::other("a stall is not an error"),
                FaultKind::Eio => {
                    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())
                }
                FaultKind::NoSpace => {
                    io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error())
                }
                FaultKind::ShortWrite => io::Error::from(io::ErrorKind::WriteZero),
            }
        }

        /// Fails the write (`Err`), or stalls it and lets it go on (`Ok`).
        pub(super) fn apply_to_write(
            &self,
            file: &File,
            bytes: &[u8],
            offset: u64,
        ) -> io::Result<()> {
            if self.kind == FaultKind::ShortWrite {
                // Part of the bytes land, as in a real short write.
                file.write_all_at(&bytes[..bytes.len() / 2], offset)?;
            }
            match self.stall_or_error() {
                Some(err) => Err(err),
                None => Ok(()),
            }
        }
    }

    static ANY: AtomicBool = AtomicBool::new(false);
    static FAULTS: Mutex<Vec<Fault>> = Mutex::new(Vec::new());

    /// Arms a fault.
    pub fn arm(fault: Fault) {
        FAULTS.lock().push(fault);
        ANY.store(true, Ordering::Release);
    }

    /// Disarms every fault whose path fragment is `path_contains`.
    pub fn disarm_matching(path_contains: &str) {
        let mut faults = FAULTS.lock();
        faults.retain(|f| f.path_contains != path_contains);
        ANY.store(!faults.is_empty(), Ordering::Release);
    }

    pub(super) fn take(path: &Path, operation: Operation) -> Option<Fault> {
        if !ANY.load(Ordering::Relaxed) {
            return None;
        }
        let path = path.to_string_lossy();
        let mut faults = FAULTS.lock();
        let i = faults
            .iter()
            .position(|f| f.operation == operation && path.contains(&f.path_contains))?;
        let fault = faults[i].clone();
        if faults[i].times != u32::MAX {
            faults[i].times -= 1;
            if faults[i].times == 0 {
                faults.remove(i);
            }
        }
        if faults.is_empty() {
            ANY.store(false, Ordering::Release);
        }
        Some(fault)
    }
}
