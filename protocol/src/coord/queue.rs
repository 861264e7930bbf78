//! Work queues with visibility timeouts, delivery tokens, dead-lettering, deduplication and FIFO groups.
//!
//! A queue is created with a visibility timeout and a most-deliveries count. `enqueue` appends a message (ids grow
//! from 1). `dequeue` hands out the oldest ready messages, each for the visibility timeout, with a **delivery token**
//! larger than every token the queue gave before: `ack`, `nack` and `extend` name the token, and are refused once that
//! delivery is over (acked, nacked, or timed out and perhaps handed to another consumer), so a message is with at most
//! one consumer at a time and a slow consumer learns its work may be done twice. A message is delivered again until it
//! is acked (at least once); a delivery that ends unacked after `max_deliveries` moves it to the queue's dead letters,
//! which `redrive` returns to the queue.
//!
//! * **Deduplication:** an enqueue naming a deduplication id the queue saw in the last
//!   [`QUEUE_DEDUP_WINDOW_MS`] answers the first message's id and adds nothing.
//! * **Groups:** messages of one group are delivered one at a time in enqueue order: the next one becomes ready only
//!   when the one before is acked or dead-lettered. Messages without a group are independent.
//!
//! Visibility is judged against the log clock: each delivery arms a [timer](super::timer) that returns the message
//! when it fires. Rows: `q/<name>` the queue, `qm/` messages, `qr/` the ready index, `qd/` dead letters, `qg/` groups,
//! `qw/` messages waiting behind their group, `qu/` deduplication ids; all but the first keyed by the scoped name.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::keys::{self, scoped, unscope, with};
use super::timer::{self, TimerKind};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::limits::SCAN_RESPONSE_BYTES_MAX;
use crate::state_machine::StorageFault;

/// Largest message body.
pub const QUEUE_MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Most messages a queue holds (ready, delivered, waiting behind their group and dead); enqueues beyond are `BUSY`.
pub const QUEUE_DEPTH_MAX: u64 = 100_000;
pub const QUEUE_VISIBILITY_MS_MIN: u64 = 100;
pub const QUEUE_VISIBILITY_MS_MAX: u64 = 12 * 60 * 60 * 1000;
pub const QUEUE_MAX_DELIVERIES_MAX: u32 = 1_000;
/// Most messages one dequeue hands out (fewer if their bodies would pass [`SCAN_RESPONSE_BYTES_MAX`]).
pub const QUEUE_DEQUEUE_COUNT_MAX: u32 = 100;
/// Most messages one peek or dead-letter listing answers, and most queues one listing answers.
pub const QUEUE_LIST_COUNT_MAX: u32 = 1_000;
/// How long a queue remembers a deduplication id after the enqueue that named it.
pub const QUEUE_DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Longest deduplication id, group name or consumer name.
pub const QUEUE_TAG_BYTES_MAX: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub name: Bytes,
    pub visibility_ms: u64,
    pub max_deliveries: u32,
    pub created_ms: u64,
    /// The id the next message gets.
    pub next_id: u64,
    /// The last delivery token handed out.
    pub last_token: u64,
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not yet acked.
    pub in_flight: u64,
    /// Messages waiting behind an earlier message of their group.
    pub waiting: u64,
    /// Dead letters.
    pub dead: u64,
    /// Totals since the queue was created.
    pub enqueued_total: u64,
    pub acked_total: u64,
    pub dead_lettered_total: u64,
}

impl QueueInfo {
    pub fn depth(&self) -> u64 {
        self.ready + self.in_flight + self.waiting + self.dead
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    Ready,
    /// Behind an earlier message of its group.
    Waiting,
    /// With a consumer until `until_ms` (log time).
    InFlight {
        token: u64,
        until_ms: u64,
        consumer: Bytes,
    },
    Dead {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMessage {
    pub id: u64,
    pub body: Bytes,
    pub group: Option<Bytes>,
    pub dedup_id: Option<Bytes>,
    pub enqueued_ms: u64,
    /// Deliveries so far (since the last redrive).
    pub deliveries: u32,
    pub state: MessageState,
}

impl QueueMessage {
    /// The current delivery's token, if the message is in flight.
    pub fn token(&self) -> Option<u64> {
        match self.state {
            MessageState::InFlight { token, .. } => Some(token),
            _ => None,
        }
    }
}

/// One group's progress: the message of it that is ready or in flight, and how many wait behind it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct GroupRow {
    active: Option<u64>,
    waiting: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DedupRow {
    id: u64,
    forget_ms: u64,
}

pub(crate) fn validate_config(visibility_ms: u64, max_deliveries: u32) -> Result<(), WireError> {
    if !(QUEUE_VISIBILITY_MS_MIN..=QUEUE_VISIBILITY_MS_MAX).contains(&visibility_ms) {
        return Err(WireError::invalid(format!(
            "visibility timeout must be between {QUEUE_VISIBILITY_MS_MIN} ms and {QUEUE_VISIBILITY_MS_MAX} ms"
        )));
    }
    if !(1..=QUEUE_MAX_DELIVERIES_MAX).contains(&max_deliveries) {
        return Err(WireError::invalid(format!("max deliveries must be between 1 and {QUEUE_MAX_DELIVERIES_MAX}")));
    }
    Ok(())
}

pub(crate) fn validate_visibility_override(visibility_ms: u64) -> Result<(), WireError> {
    if visibility_ms == 0 { Ok(()) } else { validate_config(visibility_ms, 1) }
}

pub(crate) fn validate_tag(what: &str, tag: Option<&[u8]>) -> Result<(), WireError> {
    match tag {
        Some([]) => Err(WireError::invalid(format!("{what} must not be empty"))),
        Some(tag) if tag.len() > QUEUE_TAG_BYTES_MAX => {
            Err(WireError::too_large(format!("{what} is at most {QUEUE_TAG_BYTES_MAX} bytes")))
        }
        _ => Ok(()),
    }
}

pub(crate) fn validate_body(body: &[u8]) -> Result<(), WireError> {
    if body.len() > QUEUE_MESSAGE_BYTES_MAX {
        return Err(WireError::too_large(format!(
            "message is {} bytes, the limit is {QUEUE_MESSAGE_BYTES_MAX}",
            body.len()
        )));
    }
    Ok(())
}

pub(crate) fn validate_count(count: u32, most: u32) -> Result<(), WireError> {
    if !(1..=most).contains(&count) {
        return Err(WireError::invalid(format!("count must be between 1 and {most}")));
    }
    Ok(())
}

fn queue_key(name: &[u8]) -> Vec<u8> {
    with(keys::QUEUE, name)
}

fn id_key(prefix: &[u8], name: &[u8], id: u64) -> Vec<u8> {
    let mut key = scoped(prefix, name);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn group_key(name: &[u8], group: &[u8]) -> Vec<u8> {
    let mut key = scoped(keys::QUEUE_GROUP, name);
    key.extend_from_slice(group);
    key
}

/// Prefix of the messages waiting behind `group`'s active one, in id order.
fn waiting_prefix(name: &[u8], group: &[u8]) -> Vec<u8> {
    let mut key = scoped(keys::QUEUE_GROUP_WAITING, name);
    key.extend_from_slice(&(group.len() as u16).to_be_bytes());
    key.extend_from_slice(group);
    key
}

fn dedup_key(name: &[u8], dedup_id: &[u8]) -> Vec<u8> {
    let mut key = scoped(keys::QUEUE_DEDUP, name);
    key.extend_from_slice(dedup_id);
    key
}

/// Subject of a visibility timer: the scoped queue name and the message id.
fn delivery_subject(name: &[u8], id: u64) -> Vec<u8> {
    id_key(&[], name, id)
}

fn not_found(name: &[u8]) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("queue {} does not exist", String::from_utf8_lossy(name)))
}

fn load_queue(store: &impl CoordRead, name: &[u8]) -> Result<Option<QueueInfo>, StorageFault> {
    load(store, &queue_key(name))
}

fn load_message(store: &impl CoordRead, name: &[u8], id: u64) -> Result<Option<QueueMessage>, StorageFault> {
    load(store, &id_key(keys::QUEUE_MESSAGE, name, id))
}

fn save_message(store: &mut impl CoordWrite, name: &[u8], message: &QueueMessage) -> Result<(), StorageFault> {
    save(store, &id_key(keys::QUEUE_MESSAGE, name, message.id), message)
}

/// The ids under `prefix` (an index of one queue), first `count` of them in order.
fn ids_under(store: &impl CoordRead, prefix: &[u8], count: usize) -> Result<Vec<u64>, StorageFault> {
    let mut ids = Vec::new();
    store.coord_scan(prefix, &mut |key, _| {
        if ids.len() >= count {
            return ControlFlow::Break(());
        }
        if let Some(id) = key.len().checked_sub(8).and_then(|at| key[at..].try_into().ok()).map(u64::from_be_bytes) {
            ids.push(id);
        }
        ControlFlow::Continue(())
    })?;
    Ok(ids)
}

fn event(name: &[u8]) -> Bytes {
    Bytes::from(name.to_vec())
}

pub(crate) fn create(
    store: &mut impl CoordWrite,
    now: u64,
    name: &[u8],
    visibility_ms: u64,
    max_deliveries: u32,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if let Some(queue) = load_queue(store, name)? {
        if queue.visibility_ms == visibility_ms && queue.max_deliveries == max_deliveries {
            return Ok(Ok(CoordResponse::Queue { queue }));
        }
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "the queue exists with a visibility timeout of {} ms and {} deliveries at most",
                queue.visibility_ms, queue.max_deliveries
            ),
        )));
    }
    let queue = QueueInfo {
        name: event(name),
        visibility_ms,
        max_deliveries,
        created_ms: now,
        next_id: 1,
        ..QueueInfo::default()
    };
    save(store, &queue_key(name), &queue)?;
    store.emit(CoordEvent::QueueCreated { name: event(name) });
    Ok(Ok(CoordResponse::Queue { queue }))
}

pub(crate) fn enqueue(
    store: &mut impl CoordWrite,
    now: u64,
    name: &[u8],
    body: &[u8],
    dedup_id: Option<&[u8]>,
    group: Option<&[u8]>,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let Some(mut queue) = load_queue(store, name)? else { return Ok(Err(not_found(name))) };
    if let Some(dedup_id) = dedup_id
        && let Some(row) = load::<DedupRow>(store, &dedup_key(name, dedup_id))?
    {
        return Ok(Ok(CoordResponse::Enqueued { id: row.id, duplicate: true }));
    }
    if queue.depth() >= QUEUE_DEPTH_MAX {
        return Ok(Err(WireError::new(
            ErrorCode::Busy,
            format!("the queue holds {QUEUE_DEPTH_MAX} messages; ack or delete some first"),
        )));
    }
    let id = queue.next_id;
    queue.next_id += 1;
    queue.enqueued_total += 1;
    let mut message = QueueMessage {
        id,
        body: Bytes::from(body.to_vec()),
        group: group.map(|group| Bytes::from(group.to_vec())),
        dedup_id: dedup_id.map(|dedup_id| Bytes::from(dedup_id.to_vec())),
        enqueued_ms: now,
        deliveries: 0,
        state: MessageState::Ready,
    };
    make_available(store, &mut queue, &mut message)?;
    save_message(store, name, &message)?;
    if let Some(dedup_id) = dedup_id {
        let forget_ms = now.saturating_add(QUEUE_DEDUP_WINDOW_MS);
        let key = dedup_key(name, dedup_id);
        save(store, &key, &DedupRow { id, forget_ms })?;
        timer::arm(store, forget_ms, TimerKind::Dedup, &key[keys::QUEUE_DEDUP.len()..])?;
    }
    save(store, &queue_key(name), &queue)?;
    store.emit(CoordEvent::QueueEnqueued { name: event(name), id });
    Ok(Ok(CoordResponse::Enqueued { id, duplicate: false }))
}

/// Makes `message` ready, or puts it behind the active message of its group.
fn make_available(
    store: &mut impl CoordWrite,
    queue: &mut QueueInfo,
    message: &mut QueueMessage,
) -> Result<(), StorageFault> {
    let name = queue.name.to_vec();
    if let Some(group) = &message.group {
        let key = group_key(&name, group);
        let mut row: GroupRow = load(store, &key)?.unwrap_or_default();
        match row.active {
            Some(active) if active != message.id => {
                let mut waiting = waiting_prefix(&name, group);
                waiting.extend_from_slice(&message.id.to_be_bytes());
                store.coord_put(&waiting, &[])?;
                row.waiting += 1;
                queue.waiting += 1;
                message.state = MessageState::Waiting;
                return save(store, &key, &row);
            }
            _ => {
                row.active = Some(message.id);
                save(store, &key, &row)?;
            }
        }
    }
    store.coord_put(&id_key(keys::QUEUE_READY, &name, message.id), &[])?;
    queue.ready += 1;
    message.state = MessageState::Ready;
    Ok(())
}

/// `message` is done with (acked, dead-lettered or deleted): its group's next message becomes ready.
fn leave_group(store: &mut impl CoordWrite, queue: &mut QueueInfo, message: &QueueMessage) -> Result<(), StorageFault> {
    let Some(group) = &message.group else { return Ok(()) };
    let name = queue.name.to_vec();
    let key = group_key(&name, group);
    let mut row: GroupRow = load(store, &key)?.unwrap_or_default();
    if row.active != Some(message.id) {
        return Ok(());
    }
    row.active = None;
    let prefix = waiting_prefix(&name, group);
    if let Some(next) = ids_under(store, &prefix, 1)?.first().copied() {
        let mut waiting = prefix;
        waiting.extend_from_slice(&next.to_be_bytes());
        store.coord_delete(&waiting)?;
        row.waiting -= 1;
        queue.waiting -= 1;
        row.active = Some(next);
        if let Some(mut successor) = load_message(store, &name, next)? {
            store.coord_put(&id_key(keys::QUEUE_READY, &name, next), &[])?;
            queue.ready += 1;
            successor.state = MessageState::Ready;
            save_message(store, &name, &successor)?;
        }
    }
    if row.active.is_none() && row.waiting == 0 {
        store.coord_delete(&key).map(|_| ())
    } else {
        save(store, &key, &row)
    }
}

pub(crate) fn dequeue(
    store: &mut impl CoordWrite,
    now: u64,
    name: &[u8],
    count: u32,
    visibility_ms: u64,
    consumer: &[u8],
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let Some(mut queue) = load_queue(store, name)? else { return Ok(Err(not_found(name))) };
    let visibility_ms = if visibility_ms == 0 { queue.visibility_ms } else { visibility_ms };
    let until_ms = now.saturating_add(visibility_ms);
    let mut messages = Vec::new();
    let mut bytes = 0;
    for id in ids_under(store, &scoped(keys::QUEUE_READY, name), count as usize)? {
        let Some(mut message) = load_message(store, name, id)? else {
            return Err(StorageFault(format!("ready message {id} has no row")));
        };
        bytes += message.body.len() + 64;
        if !messages.is_empty() && bytes > SCAN_RESPONSE_BYTES_MAX {
            break;
        }
        queue.last_token += 1;
        message.deliveries += 1;
        message.state = MessageState::InFlight { token: queue.last_token, until_ms, consumer: event(consumer) };
        store.coord_delete(&id_key(keys::QUEUE_READY, name, id))?;
        timer::arm(store, until_ms, TimerKind::Visibility, &delivery_subject(name, id))?;
        save_message(store, name, &message)?;
        queue.ready -= 1;
        queue.in_flight += 1;
        store.emit(CoordEvent::QueueDelivered {
            name: event(name),
            id,
            token: queue.last_token,
            delivery: message.deliveries,
        });
        messages.push(message);
    }
    if !messages.is_empty() {
        save(store, &queue_key(name), &queue)?;
    }
    Ok(Ok(CoordResponse::Delivered { messages }))
}

/// The message `id`, if `token` is its current delivery; otherwise the answer explaining why not.
fn current_delivery(
    store: &impl CoordRead,
    name: &[u8],
    id: u64,
    token: u64,
) -> Result<Result<(QueueInfo, QueueMessage, u64), WireError>, StorageFault> {
    let Some(queue) = load_queue(store, name)? else { return Ok(Err(not_found(name))) };
    let Some(message) = load_message(store, name, id)? else {
        return Ok(Err(WireError::new(ErrorCode::NotFound, format!("message {id} is not in the queue (acked?)"))));
    };
    match message.state {
        MessageState::InFlight { token: current, until_ms, .. } if current == token => {
            Ok(Ok((queue, message, until_ms)))
        }
        _ => Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "delivery {token} of message {id} is not the current one (it was acked, nacked or timed out); the message is {}",
                describe(&message.state)
            ),
        ))),
    }
}

fn describe(state: &MessageState) -> String {
    match state {
        MessageState::Ready => "ready again".into(),
        MessageState::Waiting => "waiting behind its group".into(),
        MessageState::InFlight { token, .. } => format!("in delivery {token}"),
        MessageState::Dead { .. } => "a dead letter".into(),
    }
}

pub(crate) fn ack(
    store: &mut impl CoordWrite,
    name: &[u8],
    id: u64,
    token: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let (mut queue, message, until_ms) = match current_delivery(store, name, id, token)? {
        Ok(found) => found,
        Err(error) => return Ok(Err(error)),
    };
    timer::disarm(store, until_ms, TimerKind::Visibility, &delivery_subject(name, id))?;
    store.coord_delete(&id_key(keys::QUEUE_MESSAGE, name, id))?;
    queue.in_flight -= 1;
    queue.acked_total += 1;
    leave_group(store, &mut queue, &message)?;
    save(store, &queue_key(name), &queue)?;
    store.emit(CoordEvent::QueueAcked { name: event(name), id, token });
    Ok(Ok(CoordResponse::Acked { id }))
}

pub(crate) fn nack(
    store: &mut impl CoordWrite,
    name: &[u8],
    id: u64,
    token: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let (mut queue, mut message, until_ms) = match current_delivery(store, name, id, token)? {
        Ok(found) => found,
        Err(error) => return Ok(Err(error)),
    };
    timer::disarm(store, until_ms, TimerKind::Visibility, &delivery_subject(name, id))?;
    end_delivery(store, &mut queue, &mut message, "was nacked")?;
    save_message(store, name, &message)?;
    save(store, &queue_key(name), &queue)?;
    Ok(Ok(CoordResponse::QueueMessage { message }))
}

pub(crate) fn extend(
    store: &mut impl CoordWrite,
    now: u64,
    name: &[u8],
    id: u64,
    token: u64,
    visibility_ms: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let (queue, mut message, until_ms) = match current_delivery(store, name, id, token)? {
        Ok(found) => found,
        Err(error) => return Ok(Err(error)),
    };
    let visibility_ms = if visibility_ms == 0 { queue.visibility_ms } else { visibility_ms };
    let subject = delivery_subject(name, id);
    timer::disarm(store, until_ms, TimerKind::Visibility, &subject)?;
    let until = now.saturating_add(visibility_ms);
    timer::arm(store, until, TimerKind::Visibility, &subject)?;
    if let MessageState::InFlight { until_ms, .. } = &mut message.state {
        *until_ms = until;
    }
    save_message(store, name, &message)?;
    Ok(Ok(CoordResponse::QueueMessage { message }))
}

/// A delivery ended without an ack: the message is ready again, or dead after its last allowed delivery.
fn end_delivery(
    store: &mut impl CoordWrite,
    queue: &mut QueueInfo,
    message: &mut QueueMessage,
    how: &str,
) -> Result<(), StorageFault> {
    let name = queue.name.to_vec();
    let token = message.token().unwrap_or_default();
    queue.in_flight -= 1;
    if message.deliveries >= queue.max_deliveries {
        message.state =
            MessageState::Dead { reason: format!("delivery {} of {} {how}", message.deliveries, queue.max_deliveries) };
        store.coord_put(&id_key(keys::QUEUE_DEAD, &name, message.id), &[])?;
        queue.dead += 1;
        queue.dead_lettered_total += 1;
        leave_group(store, queue, message)?;
        store.emit(CoordEvent::QueueDeadLettered {
            name: event(&name),
            id: message.id,
            deliveries: message.deliveries,
        });
    } else {
        make_available(store, queue, message)?;
        store.emit(CoordEvent::QueueReturned { name: event(&name), id: message.id, token });
    }
    Ok(())
}

/// A visibility timer fired: the delivery it was armed for ends, if it is still the current one.
pub(crate) fn visibility_lapsed(
    store: &mut impl CoordWrite,
    deadline: u64,
    subject: &[u8],
) -> Result<(), StorageFault> {
    let Some((name, rest)) = unscope(subject) else { return Err(StorageFault("bad visibility timer".into())) };
    let Some(id) = rest.try_into().ok().map(u64::from_be_bytes) else {
        return Err(StorageFault("bad visibility timer".into()));
    };
    let Some(mut queue) = load_queue(store, name)? else { return Ok(()) };
    let Some(mut message) = load_message(store, name, id)? else { return Ok(()) };
    if !matches!(message.state, MessageState::InFlight { until_ms, .. } if until_ms == deadline) {
        return Ok(());
    }
    end_delivery(store, &mut queue, &mut message, "timed out")?;
    save_message(store, name, &message)?;
    save(store, &queue_key(name), &queue)
}

/// A deduplication timer fired: the queue forgets the id (unless a newer row replaced the one it was armed for).
pub(crate) fn dedup_lapsed(store: &mut impl CoordWrite, deadline: u64, subject: &[u8]) -> Result<(), StorageFault> {
    let key = with(keys::QUEUE_DEDUP, subject);
    if let Some(row) = load::<DedupRow>(store, &key)?
        && row.forget_ms == deadline
    {
        store.coord_delete(&key)?;
    }
    Ok(())
}

pub(crate) fn redrive(
    store: &mut impl CoordWrite,
    name: &[u8],
    count: u32,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let Some(mut queue) = load_queue(store, name)? else { return Ok(Err(not_found(name))) };
    let ids = ids_under(store, &scoped(keys::QUEUE_DEAD, name), count as usize)?;
    for &id in &ids {
        store.coord_delete(&id_key(keys::QUEUE_DEAD, name, id))?;
        queue.dead -= 1;
        let Some(mut message) = load_message(store, name, id)? else {
            return Err(StorageFault(format!("dead letter {id} has no row")));
        };
        message.deliveries = 0;
        make_available(store, &mut queue, &mut message)?;
        save_message(store, name, &message)?;
    }
    save(store, &queue_key(name), &queue)?;
    if !ids.is_empty() {
        store.emit(CoordEvent::QueueRedriven { name: event(name), count: ids.len() as u32 });
    }
    Ok(Ok(CoordResponse::Redriven { count: ids.len() as u32 }))
}

/// Deletes the queue with every message, index row and timer of it, in one entry (at most [`QUEUE_DEPTH_MAX`]
/// messages, so the entry is bounded).
pub(crate) fn delete(
    store: &mut impl CoordWrite,
    name: &[u8],
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let Some(queue) = load_queue(store, name)? else { return Ok(Err(not_found(name))) };
    let mut timers = Vec::new();
    let (messages, _) = super::load_under::<QueueMessage>(store, &scoped(keys::QUEUE_MESSAGE, name), usize::MAX)?;
    for message in messages {
        if let MessageState::InFlight { until_ms, .. } = message.state {
            timers.push((until_ms, TimerKind::Visibility, delivery_subject(name, message.id)));
        }
    }
    let mut rows = Vec::new();
    store.coord_scan(&scoped(keys::QUEUE_DEDUP, name), &mut |key, bytes| {
        if let Ok(row) = super::decode::<DedupRow>(key, bytes) {
            timers.push((row.forget_ms, TimerKind::Dedup, key[keys::QUEUE_DEDUP.len()..].to_vec()));
        }
        ControlFlow::Continue(())
    })?;
    for prefix in [
        keys::QUEUE_MESSAGE,
        keys::QUEUE_DEDUP,
        keys::QUEUE_READY,
        keys::QUEUE_DEAD,
        keys::QUEUE_GROUP,
        keys::QUEUE_GROUP_WAITING,
    ] {
        store.coord_scan(&scoped(prefix, name), &mut |key, _| {
            rows.push(key.to_vec());
            ControlFlow::Continue(())
        })?;
    }
    for (deadline, kind, subject) in timers {
        timer::disarm(store, deadline, kind, &subject)?;
    }
    for row in rows {
        store.coord_delete(&row)?;
    }
    store.coord_delete(&queue_key(name))?;
    store.emit(CoordEvent::QueueDeleted { name: event(name) });
    Ok(Ok(CoordResponse::Queue { queue }))
}

/// The token of message `id`'s current delivery, if it is in flight.
pub(crate) fn delivery_token(store: &impl CoordRead, name: &[u8], id: u64) -> Result<Option<u64>, StorageFault> {
    Ok(load_message(store, name, id)?.and_then(|message| message.token()))
}

pub(crate) fn get(store: &impl CoordRead, name: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    Ok(load_queue(store, name)?.map(|queue| CoordResponse::Queue { queue }).ok_or_else(|| not_found(name)))
}

/// The first `count` ready messages (`dead`: dead letters), oldest first, without delivering them.
pub(crate) fn list_messages(
    store: &impl CoordRead,
    name: &[u8],
    count: u32,
    dead: bool,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if load_queue(store, name)?.is_none() {
        return Ok(Err(not_found(name)));
    }
    let prefix = scoped(if dead { keys::QUEUE_DEAD } else { keys::QUEUE_READY }, name);
    let ids = ids_under(store, &prefix, count as usize + 1)?;
    let truncated = ids.len() > count as usize;
    let mut messages = Vec::new();
    let mut bytes = 0;
    for id in ids.into_iter().take(count as usize) {
        let Some(message) = load_message(store, name, id)? else { continue };
        bytes += message.body.len() + 64;
        if !messages.is_empty() && bytes > SCAN_RESPONSE_BYTES_MAX {
            return Ok(Ok(CoordResponse::QueueMessages { messages, truncated: true }));
        }
        messages.push(message);
    }
    Ok(Ok(CoordResponse::QueueMessages { messages, truncated }))
}

/// The queues whose names start with `prefix`, in name order.
pub(crate) fn list(store: &impl CoordRead, prefix: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let (queues, truncated) = super::load_under(store, &queue_key(prefix), QUEUE_LIST_COUNT_MAX as usize)?;
    Ok(Ok(CoordResponse::Queues { queues, truncated }))
}
