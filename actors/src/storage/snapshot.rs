//! The snapshot file format: framed records (header, row chunks, end marker), so a snapshot of any size is written
//! and read in bounded pieces, and a truncated file is detected instead of being installed.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use pando_protocol::frame;
use pando_protocol::kv::Bytes;
use serde::{Deserialize, Serialize};

use super::{read_error, write_error};
use crate::raft::type_config::{SnapshotMeta, StorageError};

/// Version of the snapshot file layout. 2 added the coordination table (`Rows` records name their table); the
/// header's applied digest is optional within 2 (absent: all zeros). 3 added the KV change history (a node that
/// installs an older snapshot holds no history below the snapshot's revision).
pub(crate) const SNAPSHOT_FORMAT_VERSION: u32 = 3;
/// The first format that carries the KV change history.
pub(crate) const SNAPSHOT_FORMAT_WITH_HISTORY: u32 = 3;
/// A row chunk is flushed once its keys and values reach this size.
pub(crate) const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Name of the latest complete snapshot inside the snapshot directory.
pub(crate) const CURRENT_SNAPSHOT_FILE: &str = "current.snap";

/// The state-machine table a run of rows belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SnapshotTable {
    #[default]
    Kv,
    Coord,
    /// The KV change history (`pando_protocol::watch`).
    History,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SnapshotRecord {
    Header {
        format_version: u32,
        meta: SnapshotMeta,
        revision: u64,
        /// The applied digest at the snapshot's last log id ([`super::AppliedDigest`]).
        #[serde(default)]
        applied_digest: Option<super::AppliedDigest>,
    },
    Rows {
        /// Absent in format 1 files, which held only KV rows.
        #[serde(default)]
        table: SnapshotTable,
        rows: Vec<(Bytes, Bytes)>,
    },
    End {
        rows_count: u64,
    },
}

/// Writes records to a file, framed.
pub(crate) struct SnapshotWriter {
    out: BufWriter<File>,
    pending: Vec<(Bytes, Bytes)>,
    pending_table: SnapshotTable,
    pending_bytes: usize,
    rows_count: u64,
}

impl SnapshotWriter {
    pub(crate) fn create(
        path: &Path,
        meta: &SnapshotMeta,
        revision: u64,
        applied_digest: super::AppliedDigest,
    ) -> Result<SnapshotWriter, StorageError> {
        let file = File::create(path).map_err(|error| write_error(&error))?;
        let mut writer = SnapshotWriter {
            out: BufWriter::new(file),
            pending: Vec::new(),
            pending_table: SnapshotTable::Kv,
            pending_bytes: 0,
            rows_count: 0,
        };
        writer.record(&SnapshotRecord::Header {
            format_version: SNAPSHOT_FORMAT_VERSION,
            meta: meta.clone(),
            revision,
            applied_digest: Some(applied_digest),
        })?;
        Ok(writer)
    }

    fn record(&mut self, record: &SnapshotRecord) -> Result<(), StorageError> {
        let bytes = frame::encode(record).map_err(|error| write_error(&error))?;
        self.out.write_all(&bytes).map_err(|error| write_error(&error))
    }

    pub(crate) fn row(&mut self, table: SnapshotTable, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        if table != self.pending_table {
            self.flush_rows()?;
            self.pending_table = table;
        }
        self.pending_bytes += key.len() + value.len();
        self.pending.push((Bytes::from(key.to_vec()), Bytes::from(value.to_vec())));
        self.rows_count += 1;
        if self.pending_bytes >= SNAPSHOT_CHUNK_BYTES_MAX {
            self.flush_rows()?;
        }
        Ok(())
    }

    fn flush_rows(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.record(&SnapshotRecord::Rows { table: self.pending_table, rows })
    }

    /// Writes the end marker and syncs the file.
    pub(crate) fn finish(mut self) -> Result<(), StorageError> {
        self.flush_rows()?;
        let rows_count = self.rows_count;
        self.record(&SnapshotRecord::End { rows_count })?;
        let file = self.out.into_inner().map_err(|error| write_error(error.error()))?;
        file.sync_all().map_err(|error| write_error(&error))
    }
}

/// One chunk of rows and the table they belong to.
pub(crate) type TableRows = (SnapshotTable, Vec<(Bytes, Bytes)>);

/// What a snapshot's header says.
pub(crate) struct SnapshotHeader {
    pub(crate) format_version: u32,
    pub(crate) meta: SnapshotMeta,
    pub(crate) revision: u64,
    pub(crate) applied_digest: super::AppliedDigest,
}

/// Reads records back, checking the frame limit, the format version and the end marker.
pub(crate) struct SnapshotReader<R: Read> {
    input: BufReader<R>,
    rows_seen: u64,
}

impl<R: Read> SnapshotReader<R> {
    /// Opens a snapshot and reads its header.
    pub(crate) fn open(input: R) -> Result<(SnapshotReader<R>, SnapshotHeader), StorageError> {
        let mut reader = SnapshotReader { input: BufReader::new(input), rows_seen: 0 };
        match reader.next_record()? {
            SnapshotRecord::Header {
                format_version: format_version @ 1..=SNAPSHOT_FORMAT_VERSION,
                meta,
                revision,
                applied_digest,
            } => Ok((
                reader,
                SnapshotHeader { format_version, meta, revision, applied_digest: applied_digest.unwrap_or_default() },
            )),
            SnapshotRecord::Header { format_version, .. } => {
                Err(corrupt(format!("unknown snapshot format {format_version}")))
            }
            _ => Err(corrupt("snapshot does not start with a header".into())),
        }
    }

    fn next_record(&mut self) -> Result<SnapshotRecord, StorageError> {
        let mut prefix = [0u8; frame::LENGTH_PREFIX_BYTES];
        self.input.read_exact(&mut prefix).map_err(|error| read_error(&error))?;
        let length = frame::body_length(prefix).map_err(|error| read_error(&error))?;
        let mut body = vec![0u8; length];
        self.input.read_exact(&mut body).map_err(|error| read_error(&error))?;
        frame::decode(&body).map_err(|error| read_error(&error))
    }

    /// The next chunk of rows, or `None` after a valid end marker.
    pub(crate) fn next_rows(&mut self) -> Result<Option<TableRows>, StorageError> {
        match self.next_record()? {
            SnapshotRecord::Rows { table, rows } => {
                self.rows_seen += rows.len() as u64;
                Ok(Some((table, rows)))
            }
            SnapshotRecord::End { rows_count } if rows_count == self.rows_seen => Ok(None),
            SnapshotRecord::End { rows_count } => {
                Err(corrupt(format!("snapshot announces {rows_count} rows but holds {}", self.rows_seen)))
            }
            SnapshotRecord::Header { .. } => Err(corrupt("second header inside snapshot".into())),
        }
    }
}

fn corrupt(message: String) -> StorageError {
    read_error(&std::io::Error::new(std::io::ErrorKind::InvalidData, message))
}
