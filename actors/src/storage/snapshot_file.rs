//! The file a snapshot travels in (openraft's `SnapshotData`). On a multi-thread runtime it is tokio's file, whose
//! reads, writes and seeks run on the blocking pool. On a current-thread runtime (the simulator's, on a paused clock)
//! the same calls run inline instead, as [`super::offload`] does: a blocking thread that finishes wakes the runtime from
//! outside, in an order that depends on the machine's timing, so a seed did not replay (seed 7: two snapshot sends
//! that timed out in one tick came back in either order, about one run in three).

use std::io::{Read, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot's file: on the blocking pool, or inline on a current-thread runtime.
#[derive(Debug)]
pub enum SnapshotFile {
    Pooled(tokio::fs::File),
    Inline(std::fs::File),
}

impl SnapshotFile {
    /// Wraps an open file for the runtime this is called on.
    pub fn new(file: std::fs::File) -> SnapshotFile {
        match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => SnapshotFile::Inline(file),
            _ => SnapshotFile::Pooled(tokio::fs::File::from_std(file)),
        }
    }

    /// The plain file, once every write in flight has landed.
    pub async fn into_std(self) -> std::fs::File {
        match self {
            SnapshotFile::Pooled(file) => file.into_std().await,
            SnapshotFile::Inline(file) => file,
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotFile::Pooled(file) => Pin::new(file).poll_read(cx, buf),
            SnapshotFile::Inline(file) => loop {
                match file.read(buf.initialize_unfilled()) {
                    Ok(read) => {
                        buf.advance(read);
                        return Poll::Ready(Ok(()));
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Poll::Ready(Err(error)),
                }
            },
        }
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SnapshotFile::Pooled(file) => Pin::new(file).poll_write(cx, buf),
            SnapshotFile::Inline(file) => loop {
                match file.write(buf) {
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    written => return Poll::Ready(written),
                }
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotFile::Pooled(file) => Pin::new(file).poll_flush(cx),
            SnapshotFile::Inline(file) => Poll::Ready(file.flush()),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotFile::Pooled(file) => Pin::new(file).poll_shutdown(cx),
            SnapshotFile::Inline(file) => Poll::Ready(file.flush()),
        }
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        match self.get_mut() {
            SnapshotFile::Pooled(file) => Pin::new(file).start_seek(position),
            SnapshotFile::Inline(file) => file.seek(position).map(drop),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        match self.get_mut() {
            SnapshotFile::Pooled(file) => Pin::new(file).poll_complete(cx),
            SnapshotFile::Inline(file) => Poll::Ready(file.stream_position()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use super::SnapshotFile;

    async fn round_trip() -> (bool, Vec<u8>) {
        let mut file = SnapshotFile::new(tempfile::tempfile().unwrap());
        let inline = matches!(file, SnapshotFile::Inline(_));
        file.write_all(b"hello snapshot").await.unwrap();
        file.flush().await.unwrap();
        assert_eq!(file.seek(std::io::SeekFrom::Start(6)).await.unwrap(), 6);
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).await.unwrap();
        assert_eq!(file.seek(std::io::SeekFrom::End(0)).await.unwrap(), 14);
        (inline, rest)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_reads_and_writes_inline() {
        assert_eq!(round_trip().await, (true, b"snapshot".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_thread_runtime_uses_the_blocking_pool() {
        assert_eq!(round_trip().await, (false, b"snapshot".to_vec()));
    }
}
