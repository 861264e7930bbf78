//! The write-back buffer of one inode on this mount: the extents written since the last flush (a later one over an
//! earlier one), who wrote them, and the committed size an append goes after (learned while something is buffered,
//! forgotten when the buffer empties, so an append after a flush asks the cluster again). A contiguous write extends
//! the last extent, so a sequential writer buffers one extent per run.

use pando_protocol::fs::Caller;
use pando_protocol::limits::FS_CHUNK_BYTES;

#[derive(Debug, Default)]
pub struct Buffer {
    extents: Vec<(u64, Vec<u8>)>,
    bytes: usize,
    /// Whose writes these are (the flush commits them on their behalf).
    pub caller: Option<Caller>,
    /// The file's committed size, as learned since the buffer last emptied (`None`: not asked yet). Only an append
    /// needs it: a size kept from before a flush could be older than another handle's or another node's writes.
    pub known_size: Option<u64>,
}

impl Buffer {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// The buffered extents, in the order they were written.
    pub fn extents(&self) -> &[(u64, Vec<u8>)] {
        &self.extents
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The file's size with the buffered writes, over a committed size of `committed`.
    pub fn size_over(&self, committed: u64) -> u64 {
        let written = self.extents.iter().map(|(offset, data)| offset + data.len() as u64).max().unwrap_or(0);
        committed.max(written)
    }

    /// Buffers `data` at `offset` for `caller` (a different caller's writes are flushed first by the caller of this).
    pub fn add(&mut self, caller: &Caller, offset: u64, data: &[u8]) {
        self.caller.get_or_insert_with(|| caller.clone());
        self.bytes += data.len();
        if let Some((start, last)) = self.extents.last_mut()
            && *start + last.len() as u64 == offset
            && last.len() + data.len() <= FS_CHUNK_BYTES as usize
        {
            last.extend_from_slice(data);
            return;
        }
        self.extents.push((offset, data.to_vec()));
    }

    /// Takes the buffered extents for a flush (given back by [`Buffer::restore`] if it fails).
    pub fn take(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.bytes = 0;
        std::mem::take(&mut self.extents)
    }

    /// Puts back extents a failed flush took, before anything written since.
    pub fn restore(&mut self, mut extents: Vec<(u64, Vec<u8>)>) {
        self.bytes += extents.iter().map(|(_, data)| data.len()).sum::<usize>();
        extents.append(&mut self.extents);
        self.extents = extents;
    }

    /// After a flush or a truncate committed with the file at `size`: kept while something is buffered (written
    /// since), forgotten otherwise.
    pub fn committed(&mut self, size: u64) {
        if self.extents.is_empty() {
            self.caller = None;
            self.known_size = None;
        } else {
            self.known_size = Some(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_writes_share_one_extent_and_the_size_grows_with_them() {
        let caller = Caller::new(1, 1);
        let mut buffer = Buffer::default();
        buffer.add(&caller, 0, b"abc");
        buffer.add(&caller, 3, b"def");
        buffer.add(&caller, 100, b"x");
        assert_eq!(buffer.bytes(), 7);
        assert_eq!(buffer.size_over(10), 101);
        assert_eq!(buffer.size_over(1000), 1000);
        let extents = buffer.take();
        assert_eq!(extents, vec![(0, b"abcdef".to_vec()), (100, b"x".to_vec())]);
        assert!(buffer.is_empty());
        buffer.add(&caller, 5, b"later");
        buffer.restore(extents);
        let order: Vec<u64> = buffer.take().iter().map(|(offset, _)| *offset).collect();
        assert_eq!(order, vec![0, 100, 5], "a failed flush's extents go back before later writes");
    }

    #[test]
    fn a_committed_size_is_forgotten_when_the_buffer_empties_and_kept_while_writes_wait() {
        let caller = Caller::new(1, 1);
        let mut buffer = Buffer { known_size: Some(50), ..Buffer::default() };
        buffer.add(&caller, 0, b"abc");
        let _ = buffer.take();
        buffer.committed(60);
        assert_eq!(buffer.known_size, None, "an append after the flush asks the cluster for the size again");
        assert!(buffer.caller.is_none());
        buffer.add(&caller, 0, b"abc");
        buffer.committed(70);
        assert_eq!(buffer.known_size, Some(70), "a truncate under buffered writes leaves the size it made");
    }
}
