//! A capture's bytes read forwards a window at a time, so that reading a file holds the
//! record being read and what follows it in the window, not the whole file.

use std::io::{self, Read};

use super::PcapError;

/// Bytes read from the source at a time (more when one record is longer).
pub const READ_BYTES: usize = 1 << 20;

/// The first `len` bytes of a source, addressed by their offset in it. Offsets before the
/// one last passed to [`Window::release`] are no longer held.
pub struct Window<R> {
    source: R,
    /// How many bytes the source had when it was opened: nothing past them is read.
    len: usize,
    /// The bytes from offset `start` that have been read and are still held.
    held: Vec<u8>,
    start: usize,
    /// Bytes before this offset may be dropped at the next read.
    released: usize,
    /// Bytes read at a time, at least.
    read_bytes: usize,
}

impl<R: Read> Window<R> {
    pub fn new(source: R, len: usize, read_bytes: usize) -> Self {
        Self {
            source,
            len,
            held: Vec::new(),
            start: 0,
            released: 0,
            read_bytes,
        }
    }

    /// Whether the source has nothing at or past `at`.
    pub fn ends_at(&self, at: usize) -> bool {
        at >= self.len
    }

    /// Declares the bytes before `at` no longer needed.
    pub fn release(&mut self, at: usize) {
        self.released = self.released.max(at);
    }

    /// The `count` bytes at offset `at`, or None when the source ends before their end (or
    /// `at` was released).
    ///
    /// # Errors
    /// [`PcapError::Io`] when the source cannot be read or ends before the length it had.
    pub fn get(&mut self, at: usize, count: usize) -> Result<Option<&[u8]>, PcapError> {
        let Some(end) = at.checked_add(count).filter(|&end| end <= self.len) else {
            return Ok(None);
        };
        if at < self.start {
            return Ok(None);
        }
        if end > self.start + self.held.len() {
            self.fill(end)?;
        }
        Ok(self.held.get(at - self.start..end - self.start))
    }

    /// Reads until the window holds the bytes before offset `end` (at most `len`), first
    /// dropping those released.
    fn fill(&mut self, end: usize) -> Result<(), PcapError> {
        let drop = self
            .released
            .saturating_sub(self.start)
            .min(self.held.len());
        self.held.drain(..drop);
        self.start += drop;
        let mut have = self.start + self.held.len();
        let target = end.max(have.saturating_add(self.read_bytes)).min(self.len);
        let mut at = self.held.len();
        self.held.resize(target - self.start, 0);
        while have < target {
            match self
                .source
                .read(self.held.get_mut(at..).unwrap_or_default())
            {
                Ok(0) => break,
                Ok(n) => {
                    have += n;
                    at += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PcapError::Io(e.to_string())),
            }
        }
        self.held.truncate(at);
        if have < end {
            return Err(PcapError::Io(format!(
                "the file ends at byte {have}, shorter than the {} bytes it had when opened",
                self.len
            )));
        }
        Ok(())
    }
}
