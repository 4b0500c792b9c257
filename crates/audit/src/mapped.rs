//! A segment file appended to through a shared memory mapping.
//!
//! Copying a batch into a `MAP_SHARED` mapping of the file puts it in the
//! kernel's page cache, as `write(2)` does, without a system call: a
//! process killed right after the copy loses nothing, and `fdatasync` of
//! the file makes the copied pages durable. Space is reserved ahead by
//! writing zeros, [`RESERVE`] at a time, so a full disk is an error from
//! the reservation, before anything is copied, and never a fault on a page
//! the file system cannot back. (Written zeros, not `fallocate`: the pages
//! are then in the page cache, with their blocks set aside, when the
//! mapping reaches them; a page of an `fallocate`d range is read in as
//! zeros and prepared for writing at the fault, which costs the writer
//! about twice as much per page.) Between the end of the log and the end
//! of the reservation the file holds zeros; [`crate::segment::content`]
//! is what readers take of it. [`MappedFile::finish`] cuts the file to
//! the log's length.
//!
//! The mapping is the writer's alone: the log directory is the writer's
//! (mode 0700), and a process that shrank a segment under a running
//! writer would make its next copy fault (the gateway would stop, and the
//! log would still verify up to the cut).
#![allow(unsafe_code, reason = "mapping a file is the one way to append without a system call")]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rustix::mm::{MapFlags, ProtFlags};

/// How much of the file is mapped at a time: a multiple of every page
/// size Linux uses. A mapping may reach past the end of the file; only
/// the reserved part of it is ever touched.
pub(crate) const CHUNK: u64 = 1 << 20;

/// How much space is reserved at a time: a full disk refuses records
/// once less than this is left.
pub(crate) const RESERVE: u64 = 64 << 10;

/// What a reservation writes.
static ZEROS: [u8; RESERVE as usize] = [0; RESERVE as usize];

/// One chunk of the file, mapped read-write and shared.
struct Mapping {
    /// The file offset the mapping begins at (a multiple of [`CHUNK`]).
    offset: u64,
    ptr: std::ptr::NonNull<u8>,
}

// SAFETY: the mapping is plain memory owned by this value; moving it to
// another thread moves that ownership.
unsafe impl Send for Mapping {}
// SAFETY: shared references to a `Mapping` give no access to the memory
// (writing takes `&mut MappedFile`).
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the start of a live mapping of `CHUNK` bytes
        // made by `MappedFile::map`, unmapped only here.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), CHUNK as usize) };
    }
}

/// A file the log is appended to through a shared mapping.
pub(crate) struct MappedFile {
    file: Arc<File>,
    /// Bytes of log: where the next append goes.
    len: u64,
    /// Bytes the file has space for (its size): a multiple of [`RESERVE`].
    reserved: u64,
    /// The chunk appended to now.
    mapping: Option<Mapping>,
    /// The file offset up to which the mapping's pages are populated.
    populated: u64,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile").field("len", &self.len).field("reserved", &self.reserved).finish()
    }
}

impl MappedFile {
    /// A new, empty file opened for reading and writing.
    pub(crate) fn new(file: File) -> MappedFile {
        MappedFile { file: Arc::new(file), len: 0, reserved: 0, mapping: None, populated: 0 }
    }

    /// The file, to sync it from elsewhere.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Bytes of log in the file.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `bytes`, all of them or, on error, none.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let end = self.len.checked_add(bytes.len() as u64).ok_or_else(|| io::Error::other("segment too large"))?;
        if end > self.reserved {
            self.reserve(end)?;
        }
        // Every chunk the bytes reach is mapped before a byte is copied: a
        // failure leaves the file as it was.
        let first = self.len - self.len % CHUNK;
        let last = (end - 1) - (end - 1) % CHUNK;
        let mut later = Vec::new();
        let mut next = first + CHUNK;
        while next <= last {
            later.push(self.map(next)?);
            next += CHUNK;
        }
        if self.mapping.as_ref().is_none_or(|m| m.offset != first) {
            // The chunk before is done with: unmapped first.
            self.mapping = None;
            self.mapping = Some(self.map(first)?);
            self.populated = first;
        }
        let mut later = later.into_iter();
        let mut rest = bytes;
        while let Some((ptr, chunk)) = self.mapping.as_ref().map(|m| (m.ptr, m.offset)) {
            self.populate(ptr, chunk);
            let at = (self.len - chunk) as usize;
            let n = rest.len().min(CHUNK as usize - at);
            let (now, after) = rest.split_at(n);
            // SAFETY: `ptr` maps `CHUNK` bytes of the file from `chunk`,
            // and `at + n <= CHUNK`; the bytes written lie below `end`,
            // within the file's reserved size, so no page past the end of
            // the file is touched. The mapping is written only here,
            // through `&mut self`.
            unsafe { std::ptr::copy_nonoverlapping(now.as_ptr(), ptr.as_ptr().add(at), n) };
            self.len += n as u64;
            rest = after;
            if rest.is_empty() {
                break;
            }
            self.mapping = later.next();
            self.populated = chunk + CHUNK;
        }
        debug_assert!(rest.is_empty());
        Ok(())
    }

    /// Grows the file's reserved space to cover `end`, in whole steps.
    fn reserve(&mut self, end: u64) -> io::Result<()> {
        let target = end.div_ceil(RESERVE).saturating_mul(RESERVE);
        let from = self.reserved;
        let mut at = from;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            if let Err(e) = self.file.write_all_at(ZEROS.get(..n).unwrap_or_default(), at) {
                // Give back what a partial reservation took.
                let _ = self.file.set_len(from);
                return Err(e);
            }
            at += n as u64;
        }
        self.reserved = target;
        Ok(())
    }

    /// Faults in, in one call, the pages of the mapping (of the chunk at
    /// `chunk`) that are reserved and not populated yet: cheaper than a
    /// fault per page as the copies reach them. Best effort: without it
    /// (a kernel before 5.14) the copies fault the pages in.
    fn populate(&mut self, ptr: std::ptr::NonNull<u8>, chunk: u64) {
        let end = self.reserved.min(chunk + CHUNK);
        if self.populated >= end {
            return;
        }
        let from = self.populated.max(chunk);
        // SAFETY: the range lies within the mapping (`chunk..chunk +
        // CHUNK`) and within the file's reserved size, page-aligned at both
        // ends (`populated` and `reserved` are multiples of `RESERVE`).
        let _ = unsafe {
            rustix::mm::madvise(
                ptr.as_ptr().add((from - chunk) as usize).cast(),
                (end - from) as usize,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
        self.populated = end;
    }

    fn map(&self, offset: u64) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping at an address the kernel chooses;
        // nothing else aliases it. Its pages past the end of the file are
        // never touched (see `append`).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                CHUNK as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &*self.file,
                offset,
            )?
        };
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        // The pages are new: reading ahead around them is wasted work.
        // SAFETY: the whole mapping just made; advice only.
        let _ = unsafe { rustix::mm::madvise(ptr.as_ptr().cast(), CHUNK as usize, rustix::mm::Advice::Random) };
        Ok(Mapping { offset, ptr })
    }

    /// Unmaps the file and cuts it to the log's length (the reserved
    /// zeros after it go).
    pub(crate) fn finish(mut self) -> io::Result<Arc<File>> {
        self.mapping = None;
        self.file.set_len(self.len)?;
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;
    use portcullis_testkit::scratch::ScratchDir;

    /// A file in a scratch directory (gone with it).
    fn scratch(name: &str) -> (ScratchDir, std::path::PathBuf, File) {
        let dir = ScratchDir::new(&format!("mapped-{name}"));
        let path = dir.join("segment");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        (dir, path, file)
    }

    #[test]
    fn appends_across_chunks_and_finishes_at_the_log_length() {
        let (_dir, path, file) = scratch("chunks");
        let mut m = MappedFile::new(file);
        let mut expected = Vec::new();
        // Pieces of odd sizes, crossing several chunk boundaries, one of
        // them larger than a chunk.
        for i in 0..40u32 {
            let size = if i == 17 { CHUNK as usize + 12_345 } else { 70_001 + i as usize * 13 };
            let piece: Vec<u8> = (0..size).map(|j| (j as u32 ^ i) as u8 | 1).collect();
            m.append(&piece).unwrap();
            expected.extend_from_slice(&piece);
            assert_eq!(m.len(), expected.len() as u64);
        }
        // Before finishing, the file is the log and then zeros.
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len() as u64 % RESERVE, 0);
        assert_eq!(&on_disk[..expected.len()], &expected[..]);
        assert!(on_disk[expected.len()..].iter().all(|&b| b == 0));
        m.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn an_empty_append_maps_nothing() {
        let (_dir, path, file) = scratch("empty");
        let mut m = MappedFile::new(file);
        m.append(b"").unwrap();
        assert_eq!(m.len(), 0);
        m.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
