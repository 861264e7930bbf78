//! The replicated KV state machine as a pure function over a table abstraction.
//!
//! The node runs it inside one redb write transaction per applied batch; tests and the simulator run it over
//! [`crate::memory_tables::MemoryTables`]. Given the same tables, revision and command, every replica produces the same
//! rows and the same result: nothing here reads a clock, an RNG or iterates a hash map.

use std::ops::ControlFlow;

use crate::command::{Command, CommandOutput, CommandResult, KvResult, Proposal, ProposalOutcome};
use crate::coord::{self, CoordRead, CoordWrite};
use crate::error::{ErrorCode, ErrorDetail, WireError};
use crate::hook;
use crate::kv::{
    Bytes, Compare, CompareOp, CompareTarget, KvEntry, KvRequest, KvResponse, TxnOp, TxnOpResult, WriteOp,
};
use crate::limits::SCAN_RESPONSE_BYTES_MAX;
use crate::stored_value::StoredValue;
use crate::watch::{self, EventKind, KvEvent};

/// A storage failure while reading or writing rows. The state machine cannot continue after one: the caller must stop
/// applying (crashing beats corrupting).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("state machine storage fault: {0}")]
pub struct StorageFault(pub String);

/// Read access to the KV rows and their change history.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageFault>;

    /// Visits the history's events from revision `from` on, in order (revision, then position within it), until
    /// `visit` breaks.
    fn history(&self, from: u64, visit: &mut dyn FnMut(KvEvent) -> ControlFlow<()>) -> Result<(), StorageFault>;

    /// Visits rows whose key starts with `prefix`, in byte order, strictly after `after` when given, until `visit`
    /// breaks.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], StoredValue) -> ControlFlow<()>,
    ) -> Result<(), StorageFault>;
}

/// Write access to the KV rows and their change history.
pub trait KvWrite: KvRead {
    fn put(&mut self, key: &[u8], value: &StoredValue) -> Result<(), StorageFault>;
    /// Removes a row, saying whether it existed.
    fn delete(&mut self, key: &[u8]) -> Result<bool, StorageFault>;
    /// Appends `event` to the history after the events already recorded at its revision (in the transaction that
    /// changed the row).
    fn record(&mut self, event: &KvEvent) -> Result<(), StorageFault>;
    /// Drops every history event of a revision below `revision`, answering how many went.
    fn forget_history(&mut self, below: u64) -> Result<u64, StorageFault>;
}

/// Where a scan of `prefix` that continues after `after` (a continuation token) starts.
pub fn scan_start<'a>(prefix: &'a [u8], after: Option<&'a [u8]>) -> std::ops::Bound<&'a [u8]> {
    match after {
        Some(after) if after >= prefix => std::ops::Bound::Excluded(after),
        _ => std::ops::Bound::Included(prefix),
    }
}

/// Applies every command of a proposal in order. `revision` is the store revision before the proposal; it is advanced
/// by one for every command that changed at least one KV row.
///
/// First the state machine's clock advances to the proposal's stamp (never backwards) and every lease that lapsed by
/// then is revoked, so each command sees the coordination state as of its own time.
pub fn apply_proposal(
    tables: &mut (impl KvWrite + CoordWrite),
    revision: &mut u64,
    proposal: &Proposal,
) -> Result<ProposalOutcome, StorageFault> {
    let _ = tables.take_events();
    let now = coord::advance_clock(tables, proposal.stamp_ms)?;
    let mut events = Vec::new();
    let mut hooks = Vec::new();
    let before = *revision;
    coord::expire_due(tables, revision, now)?;
    record_hook_events(tables, now, before, *revision, &mut events, &mut hooks)?;
    let mut results = Vec::with_capacity(proposal.commands.len());
    for command in &proposal.commands {
        let before = *revision;
        let result = match command {
            Command::Hook(command) => {
                hook::durable::apply(tables, now, *revision, command, &mut hooks)?.map(CommandOutput::Hook)
            }
            command => apply_command(tables, revision, now, command)?,
        };
        results.push(result);
        record_hook_events(tables, now, before, *revision, &mut events, &mut hooks)?;
    }
    Ok(ProposalOutcome { results, events, hooks })
}

/// Records in the hook log what one command (or the expiries before the commands) changed: its KV events (revisions
/// after `before`, read back from the history) and its coordination events, which it also moves into `events`.
fn record_hook_events(
    tables: &mut (impl KvWrite + CoordWrite),
    now: u64,
    before: u64,
    after: u64,
    events: &mut Vec<coord::CoordEvent>,
    hooks: &mut Vec<hook::HookEvent>,
) -> Result<(), StorageFault> {
    let coord_events = tables.take_events();
    let mut kv = Vec::new();
    if after > before {
        tables.history(before + 1, &mut |event| {
            kv.push(event);
            ControlFlow::Continue(())
        })?;
    }
    if kv.is_empty() && coord_events.is_empty() {
        return Ok(());
    }
    hooks.extend(hook::record(tables, now, after, hook::bodies_of(kv, &coord_events))?);
    events.extend(coord_events);
    Ok(())
}

/// Applies one command at log time `now`. Invalid commands are answered with an error and change nothing.
pub fn apply_command(
    tables: &mut (impl KvWrite + CoordWrite),
    revision: &mut u64,
    now: u64,
    command: &Command,
) -> Result<CommandResult, StorageFault> {
    Ok(match command {
        Command::Kv(request) => apply_kv(tables, revision, request)?.map(CommandOutput::Kv),
        Command::Coord(request) => coord::apply(tables, revision, now, request)?.map(CommandOutput::Coord),
        Command::Blob(command) => crate::blob::apply(tables, now, command)?.map(CommandOutput::Blob),
        Command::Plugin(command) => crate::plugin::apply(tables, revision, now, command)?,
        Command::Token(command) => crate::token::records::apply(tables, now, command)?.map(CommandOutput::Token),
        Command::Job(command) => crate::job::apply::apply(tables, now, command)?.map(CommandOutput::Job),
        Command::Fs(command) => crate::fs::apply::apply(tables, now, command)?.map(CommandOutput::Fs),
        Command::Hook(command) => {
            // Outside a proposal, what the command publishes is recorded in the log but not reported.
            hook::durable::apply(tables, now, *revision, command, &mut Vec::new())?.map(CommandOutput::Hook)
        }
    })
}

fn apply_kv(
    tables: &mut (impl KvWrite + CoordWrite),
    revision: &mut u64,
    request: &KvRequest,
) -> Result<KvResult, StorageFault> {
    if let Err(error) = request.validate() {
        return Ok(Err(error));
    }
    let next = *revision + 1;
    let response = match request {
        KvRequest::Get { .. } | KvRequest::Scan { .. } | KvRequest::BatchGet { .. } => {
            return read(tables, *revision, request);
        }
        KvRequest::Put { key, value, lease: Some(lease) } => {
            if let Err(error) = coord::lease::check_attachable(tables, key, *lease)? {
                return Ok(Err(error));
            }
            put(tables, key, value, next)?;
            coord::lease::attach_key(tables, key, *lease)?;
            *revision = next;
            KvResponse::Written { revision: next }
        }
        KvRequest::Put { key, value, lease: None } => {
            put(tables, key, value, next)?;
            *revision = next;
            KvResponse::Written { revision: next }
        }
        KvRequest::PutBlob { key, hash, lease } => {
            let blob = match crate::blob::attachable(tables, hash)? {
                Ok(blob) => blob,
                Err(error) => return Ok(Err(error)),
            };
            if let Some(lease) = lease
                && let Err(error) = coord::lease::check_attachable(tables, key, *lease)?
            {
                return Ok(Err(error));
            }
            write_row(tables, key, Value::Blob(blob), next)?;
            if let Some(lease) = lease {
                coord::lease::attach_key(tables, key, *lease)?;
            }
            *revision = next;
            KvResponse::Written { revision: next }
        }
        KvRequest::Delete { key } => {
            let existed = remove(tables, key, next)?;
            if existed {
                *revision = next;
            }
            KvResponse::Deleted { revision: *revision, existed }
        }
        KvRequest::Cas { key, expected, value } => {
            let current = tables.get(key)?;
            let matches = match (&current, expected) {
                (None, None) => true,
                (Some(row), Some(expected)) => row.blob.is_none() && row.value == expected.as_slice(),
                _ => false,
            };
            if !matches {
                return Ok(Err(conflict(key, current)));
            }
            put(tables, key, value, next)?;
            *revision = next;
            KvResponse::Written { revision: next }
        }
        KvRequest::Cad { key, expected } => {
            let current = tables.get(key)?;
            match &current {
                Some(row) if row.blob.is_none() && row.value == expected.as_slice() => {
                    remove(tables, key, next)?;
                    *revision = next;
                    KvResponse::Deleted { revision: next, existed: true }
                }
                _ => return Ok(Err(conflict(key, current))),
            }
        }
        KvRequest::BatchWrite { ops } => {
            let mut changed = false;
            for op in ops {
                match op {
                    WriteOp::Put { key, value } => {
                        put(tables, key, value, next)?;
                        changed = true;
                    }
                    WriteOp::Delete { key } => changed |= remove(tables, key, next)?,
                }
            }
            // As for a delete and a transaction: a batch that changed nothing (deletes of missing keys only) takes
            // no revision, so every revision holds at least one event and a watcher can tell a gap from a quiet
            // spell (found by the history's replay property test).
            if changed {
                *revision = next;
            }
            KvResponse::Written { revision: *revision }
        }
        KvRequest::Txn { compares, success, failure } => {
            let succeeded = compares_hold(tables, compares)?;
            let branch = if succeeded { success } else { failure };
            let mut results = Vec::with_capacity(branch.len());
            let mut changed = false;
            for op in branch {
                results.push(match op {
                    TxnOp::Put { key, value } => {
                        put(tables, key, value, next)?;
                        changed = true;
                        TxnOpResult::Put
                    }
                    TxnOp::Delete { key } => {
                        let existed = remove(tables, key, next)?;
                        changed |= existed;
                        TxnOpResult::Delete { existed }
                    }
                    TxnOp::Get { key } => TxnOpResult::Get { entry: tables.get(key)?.map(|row| row.into_entry(key)) },
                });
            }
            if changed {
                *revision = next;
            }
            KvResponse::Txn { succeeded, revision: *revision, results }
        }
        KvRequest::Compact { revision: target } => {
            if *target > *revision {
                return Ok(Err(WireError::invalid(format!(
                    "cannot compact to revision {target}: the current revision is {revision}"
                ))));
            }
            let compacted = watch::compacted_revision(tables)?;
            if *target > compacted {
                tables.forget_history(*target)?;
                watch::set_compacted_revision(tables, *target)?;
            }
            KvResponse::Compacted { compacted: compacted.max(*target), revision: *revision }
        }
    };
    Ok(Ok(response))
}

/// Serves a read-only request from the rows as they are. Write requests are refused.
pub fn read(tables: &(impl KvRead + CoordRead), revision: u64, request: &KvRequest) -> Result<KvResult, StorageFault> {
    if let Err(error) = request.validate() {
        return Ok(Err(error));
    }
    let response = match request {
        KvRequest::Get { key, .. } => KvResponse::Entry { entry: tables.get(key)?.map(|row| row.into_entry(key)) },
        KvRequest::BatchGet { keys, .. } => {
            let mut entries = Vec::with_capacity(keys.len());
            for key in keys {
                entries.push(tables.get(key)?.map(|row| row.into_entry(key)));
            }
            KvResponse::Entries { entries }
        }
        KvRequest::Scan { prefix, limit, after, .. } => {
            scan(tables, revision, prefix, *limit, after.as_ref().map(|after| after.as_slice()))?
        }
        KvRequest::Txn { compares, success, failure } if !request.is_write() => {
            let succeeded = compares_hold(tables, compares)?;
            let branch = if succeeded { success } else { failure };
            let mut results = Vec::with_capacity(branch.len());
            for op in branch {
                let key = op.key();
                results.push(TxnOpResult::Get { entry: tables.get(key)?.map(|row| row.into_entry(key)) });
            }
            KvResponse::Txn { succeeded, revision, results }
        }
        _ => {
            return Ok(Err(WireError::internal("a write request was routed to the read path")));
        }
    };
    Ok(Ok(response))
}

fn scan(
    tables: &impl KvRead,
    revision: u64,
    prefix: &[u8],
    limit: u32,
    after: Option<&[u8]>,
) -> Result<KvResponse, StorageFault> {
    let limit = limit as usize;
    let mut entries: Vec<KvEntry> = Vec::with_capacity(limit.min(256));
    let mut bytes = 0usize;
    let mut more = false;
    tables.scan(prefix, after, &mut |key, row| {
        if entries.len() == limit || bytes >= SCAN_RESPONSE_BYTES_MAX {
            more = true;
            return ControlFlow::Break(());
        }
        bytes += key.len() + row.value.len();
        entries.push(row.into_entry(key));
        ControlFlow::Continue(())
    })?;
    let next = if more { entries.last().map(|entry| entry.key.clone()) } else { None };
    Ok(KvResponse::ScanPage { entries, next, revision })
}

/// Deletes a row (at `revision`, if it exists) and unties it from any lease.
fn remove(tables: &mut (impl KvWrite + CoordWrite), key: &[u8], revision: u64) -> Result<bool, StorageFault> {
    coord::lease::detach_key(tables, key)?;
    delete_row(tables, key, revision)
}

/// Deletes a row at `revision`, dropping the blob reference it held, and records the deletion in the history.
pub(crate) fn delete_row(
    tables: &mut (impl KvWrite + CoordWrite),
    key: &[u8],
    revision: u64,
) -> Result<bool, StorageFault> {
    let Some(old) = tables.get(key)? else { return Ok(false) };
    if old.blob.is_some() {
        crate::blob::replace_reference(tables, Some(key), old.blob, None)?;
    }
    tables.record(&KvEvent::delete(key, revision, old.mod_revision, coord::clock(tables)?))?;
    tables.delete(key)
}

/// A value to store: bytes, or a blob of the cluster.
enum Value<'a> {
    Inline(&'a [u8]),
    Blob(crate::blob::BlobRef),
}

/// Writes a row (a new version of it) and unties it from any lease; a leased put attaches it again afterwards.
fn put(tables: &mut (impl KvWrite + CoordWrite), key: &[u8], value: &[u8], revision: u64) -> Result<(), StorageFault> {
    write_row(tables, key, Value::Inline(value), revision)
}

fn write_row(
    tables: &mut (impl KvWrite + CoordWrite),
    key: &[u8],
    value: Value<'_>,
    revision: u64,
) -> Result<(), StorageFault> {
    coord::lease::detach_key(tables, key)?;
    let old = tables.get(key)?;
    let (value, blob) = match value {
        Value::Inline(bytes) => (bytes.to_vec(), None),
        Value::Blob(blob) => (Vec::new(), Some(blob)),
    };
    let old_blob = old.as_ref().and_then(|old| old.blob);
    if old_blob.is_some() || blob.is_some() {
        crate::blob::replace_reference(tables, Some(key), old_blob, blob)?;
    }
    let prev_revision = old.as_ref().map_or(0, |old| old.mod_revision);
    let row = match old {
        Some(old) => StoredValue {
            create_revision: old.create_revision,
            mod_revision: revision,
            version: old.version + 1,
            value,
            blob,
        },
        None => StoredValue { create_revision: revision, mod_revision: revision, version: 1, value, blob },
    };
    tables.put(key, &row)?;
    let time_ms = coord::clock(tables)?;
    tables.record(&KvEvent { kind: EventKind::Put, entry: row.into_entry(key), prev_revision, time_ms })
}

fn conflict(key: &[u8], current: Option<StoredValue>) -> WireError {
    let message = match &current {
        Some(row) => format!("current value differs (version {}, mod revision {})", row.version, row.mod_revision),
        None => "key does not exist".to_string(),
    };
    WireError::new(ErrorCode::Conflict, message)
        .with_detail(ErrorDetail::Current { entry: current.map(|row| row.into_entry(key)) })
}

/// Whether every compare of a transaction holds, stopping at the first that does not.
fn compares_hold(tables: &(impl KvRead + CoordRead), compares: &[Compare]) -> Result<bool, StorageFault> {
    for compare in compares {
        let holds = match compare.target {
            CompareTarget::LockToken(expected) => {
                let current = coord::lock::current_token(tables, &compare.key)?.unwrap_or(0);
                ordering_holds(compare.op, current.cmp(&expected))
            }
            CompareTarget::Fence { kind, token } => {
                let current = coord::fence_holds(tables, &compare.key, kind, token)?;
                match compare.op {
                    CompareOp::Equal => current,
                    CompareOp::NotEqual => !current,
                    CompareOp::Less | CompareOp::Greater => false,
                }
            }
            _ => evaluate(&tables.get(&compare.key)?, compare),
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

fn ordering_holds(op: CompareOp, ordering: std::cmp::Ordering) -> bool {
    match op {
        CompareOp::Equal => ordering.is_eq(),
        CompareOp::NotEqual => ordering.is_ne(),
        CompareOp::Less => ordering.is_lt(),
        CompareOp::Greater => ordering.is_gt(),
    }
}

/// Evaluates one compare against a row (`None`: the key does not exist). A lock-token compare never holds here: it
/// needs the coordination rows (see `compares_hold`).
pub fn evaluate(row: &Option<StoredValue>, compare: &Compare) -> bool {
    let ordering = match (&compare.target, row) {
        (CompareTarget::LockToken(_) | CompareTarget::Fence { .. }, _) => return false,
        (CompareTarget::Value(_), None) => return false,
        // A value stored as a blob is compared by version or revision, never by its bytes: it differs from any
        // inline value and is neither less nor greater than one.
        (CompareTarget::Value(_), Some(row)) if row.blob.is_some() => return compare.op == CompareOp::NotEqual,
        (CompareTarget::Value(expected), Some(row)) => row.value.as_slice().cmp(expected.as_slice()),
        (CompareTarget::Version(expected), row) => row.as_ref().map_or(0, |row| row.version).cmp(expected),
        (CompareTarget::ModRevision(expected), row) => row.as_ref().map_or(0, |row| row.mod_revision).cmp(expected),
        (CompareTarget::CreateRevision(expected), row) => {
            row.as_ref().map_or(0, |row| row.create_revision).cmp(expected)
        }
    };
    ordering_holds(compare.op, ordering)
}

/// Shorthand used by tests and examples.
pub fn put_request(key: &[u8], value: &[u8]) -> KvRequest {
    KvRequest::Put { key: Bytes::from(key.to_vec()), value: Bytes::from(value.to_vec()), lease: None }
}

#[cfg(test)]
mod tests;
