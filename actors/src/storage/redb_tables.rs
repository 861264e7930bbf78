//! The state machine core's table traits over redb tables, and the read handle the RPC gateway serves reads from.

use pando_protocol::blob::{self, BlobHash, BlobPage, BlobRecord};
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use pando_protocol::command::KvResult;
use pando_protocol::coord::{self, CoordEvent, CoordRead, CoordRequest, CoordResponse, CoordWrite, RowVisitor};
use pando_protocol::error::WireError;
use pando_protocol::hook::{self, HookEvent};
use pando_protocol::kv::KvRequest;
use pando_protocol::state_machine::{self, KvRead, KvWrite, StorageFault};
use pando_protocol::stored_value::StoredValue;
use pando_protocol::watch::{self, KvEvent};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::{COORD_TABLE, HISTORY_TABLE, KV_TABLE, META_REVISION, SM_META_TABLE};

fn fault(error: impl std::fmt::Display) -> StorageFault {
    StorageFault(error.to_string())
}

fn decode_row(key: &[u8], bytes: &[u8]) -> Result<StoredValue, StorageFault> {
    StoredValue::decode(bytes).ok_or_else(|| fault(format!("corrupt row for key of {} bytes", key.len())))
}

fn get_row(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<StoredValue>, StorageFault> {
    match table.get(key).map_err(fault)? {
        Some(bytes) => Ok(Some(decode_row(key, bytes.value())?)),
        None => Ok(None),
    }
}

fn scan_rows(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
    after: Option<&[u8]>,
    visit: &mut dyn FnMut(&[u8], StoredValue) -> ControlFlow<()>,
) -> Result<(), StorageFault> {
    let start = state_machine::scan_start(prefix, after);
    for row in table.range::<&[u8]>((start, Bound::Unbounded)).map_err(fault)? {
        let (key, value) = row.map_err(fault)?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        if visit(key, decode_row(key, value.value())?).is_break() {
            break;
        }
    }
    Ok(())
}

/// The history table (`HISTORY_TABLE`) of a transaction.
pub(crate) struct History<T>(pub(crate) T);

/// What a view of the KV offers of the history: nothing (reads of rows only), or the history table.
pub(crate) trait HistoryView {
    fn visit(&self, from: u64, visit: &mut dyn FnMut(KvEvent) -> ControlFlow<()>) -> Result<(), StorageFault>;
}

impl HistoryView for () {
    fn visit(&self, _: u64, _: &mut dyn FnMut(KvEvent) -> ControlFlow<()>) -> Result<(), StorageFault> {
        Err(fault("this view of the KV has no history table open"))
    }
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> HistoryView for History<T> {
    fn visit(&self, from: u64, visit: &mut dyn FnMut(KvEvent) -> ControlFlow<()>) -> Result<(), StorageFault> {
        let start = watch::history_key(from, 0);
        for row in self.0.range::<&[u8]>((Bound::Included(start.as_slice()), Bound::Unbounded)).map_err(fault)? {
            let (key, value) = row.map_err(fault)?;
            let event = watch::decode_event(value.value())
                .ok_or_else(|| fault(format!("corrupt history row {:?}", watch::parse_history_key(key.value()))))?;
            if visit(event).is_break() {
                break;
            }
        }
        Ok(())
    }
}

/// The KV table as the state machine core sees it (read-only inside a read transaction, writable inside a write one),
/// with the history table when the view needs it.
pub(crate) struct Rows<T, H = ()> {
    pub(crate) table: T,
    pub(crate) history: H,
    /// What this write transaction recorded in the history so far, for the commit stream.
    pub(crate) recorded: Vec<KvEvent>,
}

impl<T> Rows<T> {
    /// Rows without the history.
    pub(crate) fn plain(table: T) -> Rows<T> {
        Rows { table, history: (), recorded: Vec::new() }
    }
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>, H: HistoryView> KvRead for Rows<T, H> {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageFault> {
        get_row(&self.table, key)
    }

    fn history(&self, from: u64, visit: &mut dyn FnMut(KvEvent) -> ControlFlow<()>) -> Result<(), StorageFault> {
        self.history.visit(from, visit)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], StoredValue) -> ControlFlow<()>,
    ) -> Result<(), StorageFault> {
        scan_rows(&self.table, prefix, after, visit)
    }
}

type WriteTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

impl KvWrite for Rows<WriteTable<'_>, History<WriteTable<'_>>> {
    fn put(&mut self, key: &[u8], value: &StoredValue) -> Result<(), StorageFault> {
        self.table.insert(key, value.encode().as_slice()).map_err(fault)?;
        Ok(())
    }

    fn record(&mut self, event: &KvEvent) -> Result<(), StorageFault> {
        let revision = event.revision();
        let (first, next) = (watch::history_key(revision, 0), watch::history_key(revision + 1, 0));
        let index = {
            let last = self.history.0.range::<&[u8]>(first.as_slice()..next.as_slice()).map_err(fault)?.next_back();
            match last {
                Some(row) => {
                    let (key, _) = row.map_err(fault)?;
                    let (_, index) =
                        watch::parse_history_key(key.value()).ok_or_else(|| fault("corrupt history key"))?;
                    index + 1
                }
                None => 0,
            }
        };
        self.history
            .0
            .insert(watch::history_key(revision, index).as_slice(), watch::encode_event(event).as_slice())
            .map_err(fault)?;
        self.recorded.push(event.clone());
        Ok(())
    }

    fn forget_history(&mut self, below: u64) -> Result<u64, StorageFault> {
        let end = watch::history_key(below, 0);
        let mut dropped = 0;
        self.history
            .0
            .retain_in::<&[u8], _>(..end.as_slice(), |_, _| {
                dropped += 1;
                false
            })
            .map_err(fault)?;
        Ok(dropped)
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, StorageFault> {
        Ok(self.table.remove(key).map_err(fault)?.is_some())
    }
}

/// Both state-machine tables of one transaction, as the core sees them.
pub(crate) struct Tables<R, C> {
    pub(crate) kv: R,
    pub(crate) coord: C,
    pub(crate) events: Vec<CoordEvent>,
}

impl<R: KvRead, C> KvRead for Tables<R, C> {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageFault> {
        self.kv.get(key)
    }

    fn history(&self, from: u64, visit: &mut dyn FnMut(KvEvent) -> ControlFlow<()>) -> Result<(), StorageFault> {
        self.kv.history(from, visit)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], StoredValue) -> ControlFlow<()>,
    ) -> Result<(), StorageFault> {
        self.kv.scan(prefix, after, visit)
    }
}

impl<R: KvWrite, C> KvWrite for Tables<R, C> {
    fn put(&mut self, key: &[u8], value: &StoredValue) -> Result<(), StorageFault> {
        self.kv.put(key, value)
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, StorageFault> {
        self.kv.delete(key)
    }

    fn record(&mut self, event: &KvEvent) -> Result<(), StorageFault> {
        self.kv.record(event)
    }

    fn forget_history(&mut self, below: u64) -> Result<u64, StorageFault> {
        self.kv.forget_history(below)
    }
}

impl<K, C: ReadableTable<&'static [u8], &'static [u8]>> CoordRead for Tables<K, C> {
    fn coord_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault> {
        Ok(self.coord.get(key).map_err(fault)?.map(|value| value.value().to_vec()))
    }

    fn coord_scan_from(&self, prefix: &[u8], start: &[u8], visit: &mut RowVisitor<'_>) -> Result<(), StorageFault> {
        for row in self.coord.range::<&[u8]>((Bound::Included(start.max(prefix)), Bound::Unbounded)).map_err(fault)? {
            let (key, value) = row.map_err(fault)?;
            if !key.value().starts_with(prefix) || visit(key.value(), value.value()).is_break() {
                break;
            }
        }
        Ok(())
    }
}

impl<K> CoordWrite for Tables<K, redb::Table<'_, &'static [u8], &'static [u8]>> {
    fn coord_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageFault> {
        self.coord.insert(key, value).map_err(fault)?;
        Ok(())
    }

    fn coord_delete(&mut self, key: &[u8]) -> Result<bool, StorageFault> {
        Ok(self.coord.remove(key).map_err(fault)?.is_some())
    }

    fn emit(&mut self, event: CoordEvent) {
        self.events.push(event);
    }

    fn take_events(&mut self) -> Vec<CoordEvent> {
        std::mem::take(&mut self.events)
    }
}

/// Serves reads from the applied state in a consistent read transaction, without going through any actor.
#[derive(Clone)]
pub struct StateReader {
    database: Arc<Database>,
}

impl StateReader {
    pub(crate) fn new(database: Arc<Database>) -> StateReader {
        StateReader { database }
    }

    /// The last applied log id and the applied digest there ([`super::AppliedDigest`]), from one read.
    pub fn applied(&self) -> Result<(Option<crate::raft::type_config::LogId>, super::AppliedDigest), StorageFault> {
        let read = self.database.begin_read().map_err(fault)?;
        let meta = read.open_table(SM_META_TABLE).map_err(fault)?;
        let last_applied = match meta.get(super::META_LAST_APPLIED).map_err(fault)? {
            Some(bytes) => rmp_serde::from_slice(bytes.value()).map_err(fault)?,
            None => None,
        };
        let digest = super::read_applied_digest(&meta).map_err(fault)?;
        Ok((last_applied, digest))
    }

    /// Answers a read-only request from the state as last applied.
    pub fn read(&self, request: &KvRequest) -> Result<KvResult, StorageFault> {
        self.read_as(None, request)
    }

    /// Answers a plugin's read from the state as last applied, after the plugin registry (in the same snapshot)
    /// allowed it: the permission, and every key under one of the plugin's prefixes.
    pub fn read_for_plugin(&self, plugin: &str, request: &KvRequest) -> Result<KvResult, StorageFault> {
        self.read_as(Some(plugin), request)
    }

    fn read_as(&self, plugin: Option<&str>, request: &KvRequest) -> Result<KvResult, StorageFault> {
        let read = self.database.begin_read().map_err(fault)?;
        let revision = read_revision(&read.open_table(SM_META_TABLE).map_err(fault)?)?;
        let tables = Tables {
            kv: Rows::plain(read.open_table(KV_TABLE).map_err(fault)?),
            coord: read.open_table(COORD_TABLE).map_err(fault)?,
            events: Vec::new(),
        };
        if let Some(plugin) = plugin
            && let Err(error) = pando_protocol::plugin::check_kv(&tables, plugin, request)?
        {
            return Ok(Err(error));
        }
        state_machine::read(&tables, revision, request)
    }

    /// Answers a read of plugin `plugin`'s sealed storage from the state as last applied, after the registry (in the
    /// same snapshot) allowed it.
    pub fn read_sealed(
        &self,
        plugin: &str,
        read: &pando_protocol::plugin::sealed::SealedRead,
    ) -> Result<Result<pando_protocol::plugin::sealed::SealedReadAnswer, WireError>, StorageFault> {
        self.with_coord(|tables| pando_protocol::plugin::sealed::read(tables, plugin, read))
    }

    /// Every installed plugin, as last applied.
    pub fn plugins(&self) -> Result<Vec<pando_protocol::plugin::PluginRecord>, StorageFault> {
        self.with_coord(pando_protocol::plugin::list)
    }

    /// One plugin and what each node reported running of it.
    pub fn plugin_info(&self, name: &str) -> Result<Option<pando_protocol::plugin::PluginInfo>, StorageFault> {
        self.with_coord(|tables| match pando_protocol::plugin::load(tables, name)? {
            Some(record) => pando_protocol::plugin::info(tables, record).map(Some),
            None => Ok(None),
        })
    }

    /// Every plugin with its node reports.
    pub fn plugin_infos(&self) -> Result<Vec<pando_protocol::plugin::PluginInfo>, StorageFault> {
        self.with_coord(|tables| {
            pando_protocol::plugin::list(tables)?
                .into_iter()
                .map(|record| pando_protocol::plugin::info(tables, record))
                .collect()
        })
    }

    /// Checks a token against the token records as last applied, at `now_ms` by this node's clock.
    pub fn authenticate(
        &self,
        token: &pando_protocol::token::CapabilityToken,
        now_ms: u64,
    ) -> Result<Result<pando_protocol::token::TokenInfo, pando_protocol::token::records::Refused>, StorageFault> {
        self.with_coord(|tables| pando_protocol::token::records::authenticate(tables, token, now_ms))
    }

    /// The token of `accessor` (never its secret), as last applied.
    pub fn token(&self, accessor: &[u8]) -> Result<Option<pando_protocol::token::TokenInfo>, StorageFault> {
        self.with_coord(|tables| Ok(pando_protocol::token::records::record(tables, accessor)?.map(|found| found.info)))
    }

    /// One page of tokens after `after`, as last applied.
    pub fn tokens(
        &self,
        after: Option<&[u8]>,
    ) -> Result<(Vec<pando_protocol::token::TokenInfo>, Option<pando_protocol::kv::Bytes>), StorageFault> {
        self.with_coord(|tables| pando_protocol::token::records::list(tables, after))
    }

    /// The number sequence `name` hands out next, as last applied.
    pub fn sequence_peek(&self, name: &[u8]) -> Result<u64, StorageFault> {
        self.with_coord(|tables| pando_protocol::coord::sequence_peek(tables, name))
    }

    /// The token of message `id`'s current delivery from queue `name`, as last applied.
    pub fn queue_delivery_token(&self, name: &[u8], id: u64) -> Result<Option<u64>, StorageFault> {
        self.with_coord(|tables| pando_protocol::coord::queue_delivery_token(tables, name, id))
    }

    /// The member secret of the latest rotation, as last applied (`None`: never rotated).
    pub fn member_secret(&self) -> Result<Option<pando_protocol::token::records::MemberSecretRecord>, StorageFault> {
        self.with_coord(pando_protocol::token::records::member_secret)
    }

    /// Whether some KV key that points at blob `hash` passes `allowed` (a caller's scope over the blob).
    pub fn blob_reachable(
        &self,
        hash: &pando_protocol::blob::BlobHash,
        allowed: &dyn Fn(&[u8]) -> bool,
    ) -> Result<bool, StorageFault> {
        self.with_coord(|tables| {
            let mut reachable = false;
            pando_protocol::blob::referencing_keys(tables, hash, &mut |key| {
                reachable = allowed(key);
                if reachable { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })?;
            Ok(reachable)
        })
    }

    /// Whether member `node_id` may promote itself (its join token said voter).
    pub fn node_may_promote(&self, node_id: u64) -> Result<bool, StorageFault> {
        self.with_coord(|tables| pando_protocol::token::records::node_may_promote(tables, node_id))
    }

    /// Answers a read-only coordination request from the state as last applied.
    pub fn read_coord(&self, request: &CoordRequest) -> Result<Result<CoordResponse, WireError>, StorageFault> {
        let read = self.database.begin_read().map_err(fault)?;
        let tables = Tables { kv: (), coord: read.open_table(COORD_TABLE).map_err(fault)?, events: Vec::new() };
        coord::read(&tables, request)
    }

    /// The earliest lease deadline and the state machine's clock, for the leader's expiry ticks.
    pub fn lease_deadline(&self) -> Result<Option<u64>, StorageFault> {
        let read = self.database.begin_read().map_err(fault)?;
        let tables = Tables { kv: (), coord: read.open_table(COORD_TABLE).map_err(fault)?, events: Vec::new() };
        coord::next_deadline(&tables)
    }

    fn with_coord<R>(
        &self,
        read: impl FnOnce(&Tables<(), redb::ReadOnlyTable<&'static [u8], &'static [u8]>>) -> Result<R, StorageFault>,
    ) -> Result<R, StorageFault> {
        let transaction = self.database.begin_read().map_err(fault)?;
        let tables = Tables { kv: (), coord: transaction.open_table(COORD_TABLE).map_err(fault)?, events: Vec::new() };
        read(&tables)
    }

    /// Events of the hook log from `from` on (at most `most`), with the log's floor and next sequence, from one read.
    pub fn hook_log(&self, from: u64, most: usize) -> Result<HookLogPage, StorageFault> {
        self.with_coord(|tables| {
            Ok(HookLogPage {
                events: hook::read_log(tables, from, most)?,
                floor: hook::floor(tables)?,
                next: hook::next_seq(tables)?,
            })
        })
    }

    /// A durable hook with its ack floor, pending events (at most `pending_most`) and dead-letter count.
    pub fn hook(&self, name: &str, pending_most: usize) -> Result<Option<HookDetail>, StorageFault> {
        self.with_coord(|tables| {
            let Some(record) = hook::durable::get(tables, name)? else { return Ok(None) };
            Ok(Some(HookDetail {
                ack_floor: hook::durable::ack_floor(tables, &record)?,
                pending: hook::durable::pending(tables, name, pending_most)?,
                record,
            }))
        })
    }

    /// Durable hooks in name order after `after`: at most `most`, and whether more follow.
    pub fn hooks(
        &self,
        after: Option<&str>,
        most: usize,
    ) -> Result<(Vec<hook::durable::HookRecord>, bool), StorageFault> {
        self.with_coord(|tables| hook::durable::list(tables, after, most))
    }

    /// A hook's dead letters after sequence `after`: at most `most`, and whether more follow.
    pub fn hook_dead_letters(
        &self,
        name: &str,
        after: u64,
        most: usize,
    ) -> Result<(Vec<hook::durable::DeadLetter>, bool), StorageFault> {
        self.with_coord(|tables| hook::durable::dead_letters(tables, name, after, most))
    }

    /// A job read, as last applied.
    pub fn jobs(
        &self,
        query: &pando_protocol::job::JobQuery,
    ) -> Result<Result<pando_protocol::job::JobQueryResponse, pando_protocol::error::WireError>, StorageFault> {
        self.with_coord(|tables| pando_protocol::job::apply::query(tables, query))
    }

    /// A file-system read, as last applied.
    pub fn fs(
        &self,
        query: &pando_protocol::fs::FsQuery,
    ) -> Result<Result<pando_protocol::fs::FsQueryResponse, pando_protocol::error::WireError>, StorageFault> {
        self.with_coord(|tables| pando_protocol::fs::query::query(tables, query))
    }

    /// What the cluster knows about one blob, as last applied.
    pub fn blob(&self, hash: &BlobHash) -> Result<Option<BlobRecord>, StorageFault> {
        self.with_coord(|tables| blob::load(tables, hash))
    }

    /// One page of blob records in hash order.
    pub fn blobs(&self, after: Option<&BlobHash>, limit: u32) -> Result<BlobPage, StorageFault> {
        self.with_coord(|tables| blob::list(tables, after, limit))
    }

    /// The blobs `node` holds or was assigned, in hash order.
    pub fn blobs_placed_on(
        &self,
        node: u64,
        after: Option<&BlobHash>,
        limit: usize,
    ) -> Result<Vec<BlobHash>, StorageFault> {
        self.with_coord(|tables| blob::placed_on(tables, node, after, limit))
    }

    /// Whole revisions of the history from `from` on, about `events_max` events (a revision is never cut, so a page
    /// may hold one revision's worth more), with the compacted and current revisions, all from one read.
    pub fn history(&self, from: u64, events_max: usize) -> Result<HistoryPage, StorageFault> {
        let read = self.database.begin_read().map_err(fault)?;
        let current = read_revision(&read.open_table(SM_META_TABLE).map_err(fault)?)?;
        let coord = Tables { kv: (), coord: read.open_table(COORD_TABLE).map_err(fault)?, events: Vec::new() };
        let compacted = watch::compacted_revision(&coord)?;
        let history = History(read.open_table(HISTORY_TABLE).map_err(fault)?);
        let mut events: Vec<KvEvent> = Vec::new();
        let mut complete = true;
        history.visit(from, &mut |event| {
            if events.len() >= events_max && events.last().is_some_and(|last| last.revision() != event.revision()) {
                complete = false;
                return ControlFlow::Break(());
            }
            events.push(event);
            ControlFlow::Continue(())
        })?;
        Ok(HistoryPage { events, compacted, current, complete })
    }

    /// `key`'s entry as revision `revision` left it, from the history (`None`: the key did not exist then, or the
    /// history no longer holds that revision).
    pub fn entry_at(&self, revision: u64, key: &[u8]) -> Result<Option<pando_protocol::kv::KvEntry>, StorageFault> {
        let read = self.database.begin_read().map_err(fault)?;
        let history = History(read.open_table(HISTORY_TABLE).map_err(fault)?);
        let mut found = None;
        history.visit(revision, &mut |event| {
            if event.revision() != revision {
                return ControlFlow::Break(());
            }
            if event.key().as_slice() == key {
                found = match event.kind {
                    watch::EventKind::Put => Some(event.entry),
                    watch::EventKind::Delete => None,
                };
            }
            ControlFlow::Continue(())
        })?;
        Ok(found)
    }

    /// The oldest revision the history holds events for.
    pub fn compacted_revision(&self) -> Result<u64, StorageFault> {
        self.with_coord(watch::compacted_revision)
    }

    /// The store revision as last applied.
    pub fn revision(&self) -> Result<u64, StorageFault> {
        let read = self.database.begin_read().map_err(fault)?;
        read_revision(&read.open_table(SM_META_TABLE).map_err(fault)?)
    }
}

/// Events of the hook log, read at one point in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookLogPage {
    pub events: Vec<HookEvent>,
    /// The oldest sequence the log may hold.
    pub floor: u64,
    /// The sequence the next event will take.
    pub next: u64,
}

/// A durable hook as `pando hook info` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookDetail {
    pub record: hook::durable::HookRecord,
    pub ack_floor: u64,
    pub pending: Vec<hook::durable::Pending>,
}

/// Whole revisions of the history, read at one point in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryPage {
    pub events: Vec<KvEvent>,
    /// The history starts at this revision.
    pub compacted: u64,
    /// The store revision when the page was read.
    pub current: u64,
    /// Whether the page reaches the end of the history (else read on from after its last revision).
    pub complete: bool,
}

pub(crate) fn read_revision(table: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StorageFault> {
    match table.get(META_REVISION).map_err(fault)? {
        Some(bytes) => {
            let bytes: [u8; 8] = bytes.value().try_into().map_err(|_| fault("revision row is not 8 bytes"))?;
            Ok(u64::from_be_bytes(bytes))
        }
        None => Ok(0),
    }
}
