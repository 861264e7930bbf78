//! Durable hooks: a named subscription to the hook log with a position, fenced delivery, retries and a dead-letter
//! list, all in the replicated state, so any node can take over delivery exactly where the last one stopped.
//!
//! The model is JetStream's durable consumers, with the fixes their users ask for:
//! - **Fencing.** One node delivers a hook at a time, under a claim ([`HookCommand::Claim`], renewed well within
//!   [`HOOK_CLAIM_TTL_MS`]). Every claim takes the next fence, and every delivery carries (hook, sequence, attempt,
//!   fence). An ack, nack or term whose attempt or fence is no longer current is refused (`CONFLICT`), so work that a
//!   new node took over cannot be acknowledged by the old one, and no event is acknowledged twice.
//! - **No wasted ack window.** A new claim makes every delivery of the old fence due at once: when the delivering
//!   node dies, delivery resumes on another node within the claim's lifetime, not after the ack wait.
//! - **Ack wait and backoff are two things.** The ack wait bounds one attempt; the backoff list is the delay before
//!   each retry (the last step repeats). A backoff list longer than the deliveries it could ever delay is refused at
//!   creation, never silently cut.
//! - **Dead letters.** An event that failed `max_deliver` attempts, or that its consumer terminated, moves to the
//!   hook's dead-letter list with its last error and attempt count, and `sys.hook.dlq.<hook>` is published. `redrive`
//!   puts dead letters back with fresh attempts; a full list pauses the hook rather than dropping anything.
//! - **Order.** With `max_in_flight` 1 (the default) a hook begins an event only once every earlier one is acked or
//!   dead, so events are acknowledged in log order. With more, up to that many run at once.
//!
//! The state machine decides which event is next ([`HookCommand::Begin`] scans the log after the hook's position for
//! the next match), so a delivering node cannot skip one.

use serde::{Deserialize, Serialize};

use super::{EventBody, HookEvent, HookNotice, notice_subject, subject};
use crate::coord::keys::{scoped, with};
use crate::coord::{CoordRead, CoordWrite, load, load_under, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::limits::{
    HOOK_ACK_WAIT_MS_DEFAULT, HOOK_ACK_WAIT_MS_MAX, HOOK_ACK_WAIT_MS_MIN, HOOK_BACKOFF_MS_MAX, HOOK_BEGIN_COUNT_MAX,
    HOOK_CLAIM_TTL_MS, HOOK_DLQ_COUNT_MAX, HOOK_ERROR_BYTES_MAX, HOOK_EXEC_ARGV_BYTES_MAX, HOOK_EXEC_TIMEOUT_MS_MAX,
    HOOK_IN_FLIGHT_MAX, HOOK_LOG_EVENTS_MAX, HOOK_LOG_READ_BYTES_MAX, HOOK_MAX_DELIVER_DEFAULT, HOOK_MAX_DELIVER_MAX,
    HOOK_NAME_BYTES_MAX, HOOK_REDRIVE_COUNT_MAX, HOOK_SCAN_ROWS_MAX, HOOKS_COUNT_MAX,
};
use crate::state_machine::StorageFault;

/// Hook records, keyed by name.
const HOOK: &[u8] = b"H/";
/// Events begun and not yet acked or dead, keyed by scoped hook name, then sequence.
const PENDING: &[u8] = b"Hp/";
/// Dead letters, keyed by scoped hook name, then sequence.
const DEAD: &[u8] = b"Hd/";
/// The last fence given out, cluster-wide: a hook deleted and created again never hands out a fence of its past.
const LAST_FENCE: &[u8] = b"m/hook_fence";

/// The next fence (every claim and replay of every hook takes one).
fn next_fence(store: &mut impl CoordWrite) -> Result<u64, StorageFault> {
    let next = load::<u64>(store, LAST_FENCE)?.unwrap_or(0) + 1;
    save(store, LAST_FENCE, &next)?;
    Ok(next)
}

/// Where a durable hook's events go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookTarget {
    /// A command run by the delivering node: `argv` as given (no shell unless `shell`, which runs `argv[0]` with
    /// `sh -c`), the event as JSON on stdin and in `PANDO_*` environment variables; exit status 0 acks, any other
    /// nacks, and a run past `timeout_ms` has its process group killed and nacks.
    Exec { argv: Vec<String>, shell: bool, timeout_ms: u64 },
    /// A function of an installed plugin, called with the event as JSON; `Ok` acks, an error nacks.
    Plugin { plugin: String, function: String },
    /// An actor of the ractor process group `pando.hooks.<group>`, on any node of the actor mesh (members take
    /// turns), called with the event as JSON.
    Group { group: String },
}

/// What a durable hook is: its pattern, where it delivers, and its retry policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    pub pattern: String,
    pub target: HookTarget,
    /// How long one attempt may take before it counts as failed.
    pub ack_wait_ms: u64,
    /// Attempts per event before it is dead.
    pub max_deliver: u32,
    /// The delay before retry `k` (after the `k`th failed attempt) is `backoff_ms[k-1]`, the last step repeating;
    /// empty: retry at once.
    pub backoff_ms: Vec<u64>,
    /// Events in flight at once (1: strictly in order).
    pub max_in_flight: u32,
}

impl HookSpec {
    /// A spec with the defaults: 30 s ack wait, 5 deliveries, no backoff, one in flight.
    pub fn new(pattern: impl Into<String>, target: HookTarget) -> HookSpec {
        HookSpec {
            pattern: pattern.into(),
            target,
            ack_wait_ms: HOOK_ACK_WAIT_MS_DEFAULT,
            max_deliver: HOOK_MAX_DELIVER_DEFAULT,
            backoff_ms: Vec::new(),
            max_in_flight: 1,
        }
    }

    pub fn validate(&self) -> Result<(), WireError> {
        subject::validate_pattern(&self.pattern)?;
        if !(HOOK_ACK_WAIT_MS_MIN..=HOOK_ACK_WAIT_MS_MAX).contains(&self.ack_wait_ms) {
            return Err(WireError::invalid(format!(
                "the ack wait must be {HOOK_ACK_WAIT_MS_MIN} ms to {HOOK_ACK_WAIT_MS_MAX} ms, not {} ms",
                self.ack_wait_ms
            )));
        }
        if !(1..=HOOK_MAX_DELIVER_MAX).contains(&self.max_deliver) {
            return Err(WireError::invalid(format!(
                "max deliver must be 1 to {HOOK_MAX_DELIVER_MAX}, not {}",
                self.max_deliver
            )));
        }
        if self.backoff_ms.len() >= self.max_deliver as usize && !self.backoff_ms.is_empty() {
            return Err(WireError::invalid(format!(
                "{} backoff steps for {} deliveries: only {} retries can ever wait (make max deliver larger or the \
                 list shorter)",
                self.backoff_ms.len(),
                self.max_deliver,
                self.max_deliver - 1
            )));
        }
        if let Some(step) = self.backoff_ms.iter().find(|step| **step > HOOK_BACKOFF_MS_MAX) {
            return Err(WireError::invalid(format!(
                "a backoff step is {step} ms, the limit is {HOOK_BACKOFF_MS_MAX} ms"
            )));
        }
        if !(1..=HOOK_IN_FLIGHT_MAX).contains(&self.max_in_flight) {
            return Err(WireError::invalid(format!(
                "max in flight must be 1 to {HOOK_IN_FLIGHT_MAX}, not {}",
                self.max_in_flight
            )));
        }
        match &self.target {
            HookTarget::Exec { argv, shell, timeout_ms } => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(WireError::invalid("a shell hook needs a command"));
                }
                if *shell && argv.len() != 1 {
                    return Err(WireError::invalid("a shell hook run with `sh -c` takes one command line"));
                }
                let bytes: usize = argv.iter().map(|argument| argument.len() + 1).sum();
                if bytes > HOOK_EXEC_ARGV_BYTES_MAX {
                    return Err(WireError::too_large(format!(
                        "the command line is {bytes} bytes, the limit is {HOOK_EXEC_ARGV_BYTES_MAX}"
                    )));
                }
                if argv.iter().any(|argument| argument.contains('\0')) {
                    return Err(WireError::invalid("a command argument contains a NUL byte"));
                }
                if *timeout_ms == 0 || *timeout_ms > HOOK_EXEC_TIMEOUT_MS_MAX {
                    return Err(WireError::invalid(format!(
                        "a command's timeout must be 1 ms to {HOOK_EXEC_TIMEOUT_MS_MAX} ms"
                    )));
                }
            }
            HookTarget::Plugin { plugin, function } => {
                crate::plugin::validate_name(plugin)?;
                if function.is_empty() || function.len() > 128 {
                    return Err(WireError::invalid("a plugin hook needs a function name of at most 128 bytes"));
                }
            }
            HookTarget::Group { group } => {
                validate_name(group).map_err(|_| {
                    WireError::invalid(format!("group {group:?}: 1 to {HOOK_NAME_BYTES_MAX} letters, digits, `_`, `-`"))
                })?;
            }
        }
        Ok(())
    }

    /// The delay before the retry that follows failed attempt `attempt` (1-based).
    pub fn backoff_after(&self, attempt: u32) -> u64 {
        match self.backoff_ms.len() {
            0 => 0,
            steps => self.backoff_ms[(attempt.max(1) as usize - 1).min(steps - 1)],
        }
    }
}

/// Checks a hook name: it is a subject token (`sys.hook.dlq.<name>`), so letters, digits, `_` and `-`.
pub fn validate_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() > HOOK_NAME_BYTES_MAX {
        return Err(WireError::invalid(format!("a hook name needs 1 to {HOOK_NAME_BYTES_MAX} bytes")));
    }
    if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-') {
        return Err(WireError::invalid(format!("hook name {name:?}: use letters, digits, `_` and `-`")));
    }
    Ok(())
}

/// Where a new hook starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartAt {
    /// With the next event committed.
    New,
    /// With the event of this sequence (or the oldest the log still holds, if later).
    Seq(u64),
}

/// A node's claim on delivering a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: u64,
    pub fence: u64,
    /// Log time the claim lapses unless renewed.
    pub until_ms: u64,
}

/// Counts over a hook's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStats {
    /// Attempts begun.
    pub delivered: u64,
    pub acked: u64,
    /// Events moved to the dead-letter list.
    pub dead: u64,
    /// Events the hook never saw because the log dropped them first (it lagged past the log's limit).
    pub skipped: u64,
}

/// A durable hook as the state holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    pub name: String,
    pub spec: HookSpec,
    /// Why the hook does not deliver (an operator paused it, or its dead-letter list is full).
    pub paused: Option<String>,
    pub created_ms: u64,
    /// Every event up to this sequence was begun, or did not match.
    pub position: u64,
    /// The last fence given out.
    pub fence: u64,
    pub claim: Option<Claim>,
    /// Events begun and not yet acked or dead.
    pub pending: u32,
    /// Dead letters held.
    pub dead_letters: u32,
    pub stats: HookStats,
}

/// An event begun and not yet acked or dead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub event: HookEvent,
    /// Attempts so far (0 after a redrive, before its first new attempt).
    pub attempt: u32,
    /// The fence of the current attempt.
    pub fence: u64,
    /// An attempt is running (else the event waits for `due_ms` to be retried).
    pub in_flight: bool,
    /// When the running attempt's ack wait ends, or when the retry is due.
    pub due_ms: u64,
    pub last_error: Option<String>,
}

/// An event that failed for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event: HookEvent,
    pub attempts: u32,
    pub error: String,
    /// Log time it died.
    pub time_ms: u64,
}

/// One attempt to deliver one event, as the delivering node runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub hook: String,
    pub attempt: u32,
    pub fence: u64,
    /// Log time by which the attempt must be answered.
    pub ack_by_ms: u64,
    pub event: HookEvent,
}

/// Commands of durable hooks and user events, applied by the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookCommand {
    Create {
        name: String,
        spec: HookSpec,
        start: StartAt,
    },
    Delete {
        name: String,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// A user event on `subject`.
    Publish {
        subject: String,
        data: Bytes,
    },
    /// Node `node` claims delivery of the hook, or renews the claim it holds under `fence` (0: a new claim).
    Claim {
        name: String,
        node: u64,
        fence: u64,
    },
    /// The claimant gives delivery up (it is stopping).
    Release {
        name: String,
        fence: u64,
    },
    /// The claimant begins up to `most` attempts: retries that are due, then the next matching events.
    Begin {
        name: String,
        fence: u64,
        most: u32,
    },
    Ack {
        name: String,
        seq: u64,
        attempt: u32,
        fence: u64,
    },
    /// The attempt failed: retry after the backoff, or dead once `max_deliver` attempts failed.
    Nack {
        name: String,
        seq: u64,
        attempt: u32,
        fence: u64,
        error: String,
    },
    /// The event can never succeed: dead now.
    Term {
        name: String,
        seq: u64,
        attempt: u32,
        fence: u64,
        error: String,
    },
    /// Moves dead letters back with fresh attempts (at most [`HOOK_REDRIVE_COUNT_MAX`] per command).
    Redrive {
        name: String,
    },
    /// Rewinds the hook to sequence `from`, dropping what it has pending and fencing its deliveries.
    Replay {
        name: String,
        from: u64,
    },
    /// Trims the hook log to the last `keep_events`, never past an event a hook has yet to begin (up to the log's
    /// limit). Proposed by the leader's retention.
    Trim {
        keep_events: u64,
    },
}

impl HookCommand {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            HookCommand::Create { name, spec, .. } => {
                validate_name(name)?;
                spec.validate()
            }
            HookCommand::Publish { subject, data } => super::validate_publish(subject, data),
            HookCommand::Begin { name, most, .. } => {
                validate_name(name)?;
                if *most == 0 || *most > HOOK_BEGIN_COUNT_MAX {
                    return Err(WireError::invalid(format!("begin 1 to {HOOK_BEGIN_COUNT_MAX} events at once")));
                }
                Ok(())
            }
            HookCommand::Nack { name, error, .. } | HookCommand::Term { name, error, .. } => {
                validate_name(name)?;
                if error.len() > HOOK_ERROR_BYTES_MAX {
                    return Err(WireError::too_large(format!("an error is at most {HOOK_ERROR_BYTES_MAX} bytes")));
                }
                Ok(())
            }
            HookCommand::Replay { name, from } => {
                validate_name(name)?;
                if *from == 0 {
                    return Err(WireError::invalid("sequences start at 1"));
                }
                Ok(())
            }
            HookCommand::Delete { name }
            | HookCommand::Pause { name }
            | HookCommand::Resume { name }
            | HookCommand::Claim { name, .. }
            | HookCommand::Release { name, .. }
            | HookCommand::Ack { name, .. }
            | HookCommand::Redrive { name } => validate_name(name),
            HookCommand::Trim { .. } => Ok(()),
        }
    }

    /// Bytes the command weighs in a log entry.
    pub fn payload_bytes(&self) -> usize {
        match self {
            HookCommand::Publish { subject, data } => 64 + subject.len() + data.len(),
            HookCommand::Create { spec, .. } => {
                1024 + spec.pattern.len()
                    + match &spec.target {
                        HookTarget::Exec { argv, .. } => argv.iter().map(String::len).sum(),
                        HookTarget::Plugin { .. } | HookTarget::Group { .. } => 256,
                    }
            }
            HookCommand::Nack { error, .. } | HookCommand::Term { error, .. } => 256 + error.len(),
            _ => 256,
        }
    }
}

/// What a hook command answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookResponse {
    /// The hook exists as asked (`existed`: it already did, with this spec).
    Created {
        existed: bool,
        position: u64,
    },
    Deleted,
    Done,
    Published {
        seq: u64,
    },
    Claimed {
        fence: u64,
        until_ms: u64,
    },
    /// Attempts to run now; `next_due_ms`: when the earliest waiting retry or running attempt is due (the claimant's
    /// next look); `more`: the log holds more the hook may take at once.
    Deliveries {
        deliveries: Vec<Delivery>,
        next_due_ms: Option<u64>,
        more: bool,
    },
    Acked,
    /// The attempt failed and the event waits for a retry, or went to the dead-letter list.
    Nacked {
        dead: bool,
    },
    Redriven {
        count: u32,
        more: bool,
    },
    Replayed {
        from: u64,
    },
    Trimmed {
        dropped: u64,
        floor: u64,
    },
}

fn hook_key(name: &str) -> Vec<u8> {
    with(HOOK, name.as_bytes())
}

fn pending_key(name: &str, seq: u64) -> Vec<u8> {
    let mut key = scoped(PENDING, name.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn dead_key(name: &str, seq: u64) -> Vec<u8> {
    let mut key = scoped(DEAD, name.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn not_found(name: &str) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("no hook named {name:?}"))
}

/// A hook by name.
pub fn get(store: &impl CoordRead, name: &str) -> Result<Option<HookRecord>, StorageFault> {
    load(store, &hook_key(name))
}

/// Hooks in name order after `after`, at most `most`, and whether more follow.
pub fn list(store: &impl CoordRead, after: Option<&str>, most: usize) -> Result<(Vec<HookRecord>, bool), StorageFault> {
    let (hooks, _) = load_under::<HookRecord>(store, HOOK, HOOKS_COUNT_MAX + 1)?;
    let mut after_it: Vec<HookRecord> =
        hooks.into_iter().filter(|hook| after.is_none_or(|after| hook.name.as_str() > after)).collect();
    let more = after_it.len() > most;
    after_it.truncate(most);
    Ok((after_it, more))
}

/// A hook's pending events, in sequence order (at most `most`).
pub fn pending(store: &impl CoordRead, name: &str, most: usize) -> Result<Vec<Pending>, StorageFault> {
    Ok(load_under(store, &scoped(PENDING, name.as_bytes()), most)?.0)
}

/// A hook's dead letters after sequence `after`, in sequence order: at most `most`, and whether more follow.
pub fn dead_letters(
    store: &impl CoordRead,
    name: &str,
    after: u64,
    most: usize,
) -> Result<(Vec<DeadLetter>, bool), StorageFault> {
    let prefix = scoped(DEAD, name.as_bytes());
    let mut start = prefix.clone();
    start.extend_from_slice(&after.saturating_add(1).to_be_bytes());
    let mut letters = Vec::new();
    let (mut more, mut fault) = (false, None);
    store.coord_scan_from(&prefix, &start, &mut |key, bytes| {
        if letters.len() >= most {
            more = true;
            return std::ops::ControlFlow::Break(());
        }
        match crate::coord::decode(key, bytes) {
            Ok(letter) => {
                letters.push(letter);
                std::ops::ControlFlow::Continue(())
            }
            Err(error) => {
                fault = Some(error);
                std::ops::ControlFlow::Break(())
            }
        }
    })?;
    fault.map_or(Ok((letters, more)), Err)
}

/// The sequence below which every matching event was acked, dead or skipped (redriven events aside): what
/// `pando hook info` shows as the ack floor.
pub fn ack_floor(store: &impl CoordRead, record: &HookRecord) -> Result<u64, StorageFault> {
    let first = pending(store, &record.name, 1)?.first().map(|pending| pending.event.seq);
    Ok(match first {
        Some(seq) if seq <= record.position => seq - 1,
        _ => record.position,
    })
}

/// Applies a hook command at log time `now`; events it publishes (user events, dead-letter notices) are recorded in
/// the hook log and appended to `published`.
pub fn apply(
    store: &mut impl CoordWrite,
    now: u64,
    revision: u64,
    command: &HookCommand,
    published: &mut Vec<HookEvent>,
) -> Result<Result<HookResponse, WireError>, StorageFault> {
    if let Err(error) = command.validate() {
        return Ok(Err(error));
    }
    let mut context = Context { now, revision, published };
    match command {
        HookCommand::Create { name, spec, start } => create(store, now, name, spec, *start),
        HookCommand::Publish { subject, data } => {
            let events =
                super::record(store, now, revision, [(subject.clone(), EventBody::User { data: data.clone() })])?;
            let seq = events[0].seq;
            context.published.extend(events);
            Ok(Ok(HookResponse::Published { seq }))
        }
        HookCommand::Trim { keep_events } => trim(store, *keep_events),
        HookCommand::Delete { name } => {
            if get(store, name)?.is_none() {
                return Ok(Err(not_found(name)));
            }
            delete(store, name)?;
            Ok(Ok(HookResponse::Deleted))
        }
        command => {
            let name = match command {
                HookCommand::Pause { name }
                | HookCommand::Resume { name }
                | HookCommand::Claim { name, .. }
                | HookCommand::Release { name, .. }
                | HookCommand::Begin { name, .. }
                | HookCommand::Ack { name, .. }
                | HookCommand::Nack { name, .. }
                | HookCommand::Term { name, .. }
                | HookCommand::Redrive { name }
                | HookCommand::Replay { name, .. } => name,
                HookCommand::Create { .. }
                | HookCommand::Publish { .. }
                | HookCommand::Trim { .. }
                | HookCommand::Delete { .. } => unreachable!("answered above"),
            };
            let Some(mut record) = get(store, name)? else { return Ok(Err(not_found(name))) };
            let answer = on_record(store, &mut context, &mut record, command)?;
            save(store, &hook_key(name), &record)?;
            Ok(answer)
        }
    }
}

/// Removes a hook with its pending events and dead letters.
fn delete(store: &mut impl CoordWrite, name: &str) -> Result<(), StorageFault> {
    for prefix in [scoped(PENDING, name.as_bytes()), scoped(DEAD, name.as_bytes())] {
        let mut keys = Vec::new();
        store.coord_scan(&prefix, &mut |key, _| {
            keys.push(key.to_vec());
            std::ops::ControlFlow::Continue(())
        })?;
        for key in keys {
            store.coord_delete(&key)?;
        }
    }
    store.coord_delete(&hook_key(name))?;
    Ok(())
}

/// The durable hook of a plugin's `index`th declared pattern.
pub fn plugin_hook_name(plugin: &str, index: usize) -> String {
    format!("plugin-{plugin}-{index}")
}

/// Makes the durable hooks of plugin `plugin` what its manifest declares: one per pattern (`plugin-<name>-<i>`),
/// calling its `on_hook` export, paused while the plugin is disabled; hooks of patterns no longer declared go. A
/// changed pattern keeps its hook's position. Refused (before anything changes) when the cluster's hook limit would
/// be passed.
pub(crate) fn sync_plugin(
    store: &mut impl CoordWrite,
    now: u64,
    plugin: &str,
    patterns: &[String],
    timeout_ms: u32,
    enabled: bool,
) -> Result<Result<(), WireError>, StorageFault> {
    let missing = (0..patterns.len())
        .filter(|index| !matches!(get(store, &plugin_hook_name(plugin, *index)), Ok(Some(_))))
        .count();
    if missing > 0 {
        let (hooks, _) = load_under::<HookRecord>(store, HOOK, HOOKS_COUNT_MAX + 1)?;
        if hooks.len() + missing > HOOKS_COUNT_MAX {
            return Ok(Err(WireError::too_large(format!(
                "the plugin declares {missing} new hooks; the cluster has {} of at most {HOOKS_COUNT_MAX}",
                hooks.len()
            ))));
        }
    }
    for (index, pattern) in patterns.iter().enumerate() {
        let name = plugin_hook_name(plugin, index);
        let spec = HookSpec {
            pattern: pattern.clone(),
            target: HookTarget::Plugin {
                plugin: plugin.to_string(),
                function: crate::plugin_abi::exports::ON_HOOK.to_string(),
            },
            ack_wait_ms: (u64::from(timeout_ms) * 2).clamp(HOOK_ACK_WAIT_MS_MIN, HOOK_ACK_WAIT_MS_MAX),
            max_deliver: HOOK_MAX_DELIVER_DEFAULT,
            backoff_ms: vec![1_000],
            max_in_flight: 1,
        };
        let mut record = match get(store, &name)? {
            Some(record) => record,
            None => match create(store, now, &name, &spec, StartAt::New)? {
                Ok(_) => get(store, &name)?.ok_or_else(|| StorageFault(format!("hook {name} vanished")))?,
                Err(error) => return Ok(Err(error)),
            },
        };
        record.spec = spec;
        record.paused = match (&record.paused, enabled) {
            (_, false) => Some(PLUGIN_DISABLED.into()),
            (Some(reason), true) if reason == PLUGIN_DISABLED => None,
            (paused, true) => paused.clone(),
        };
        save(store, &hook_key(&name), &record)?;
    }
    for index in patterns.len()..crate::plugin_abi::HOOK_SUBSCRIPTIONS_MAX {
        let name = plugin_hook_name(plugin, index);
        if get(store, &name)?.is_some() {
            delete(store, &name)?;
        }
    }
    Ok(Ok(()))
}

/// Why a plugin's hooks do not deliver while it is disabled.
const PLUGIN_DISABLED: &str = "its plugin is disabled";

struct Context<'a> {
    now: u64,
    revision: u64,
    published: &'a mut Vec<HookEvent>,
}

fn create(
    store: &mut impl CoordWrite,
    now: u64,
    name: &str,
    spec: &HookSpec,
    start: StartAt,
) -> Result<Result<HookResponse, WireError>, StorageFault> {
    if let Some(existing) = get(store, name)? {
        if existing.spec == *spec {
            return Ok(Ok(HookResponse::Created { existed: true, position: existing.position }));
        }
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("hook {name:?} exists with another spec (delete it first, or pick another name)"),
        )));
    }
    let (hooks, _) = load_under::<HookRecord>(store, HOOK, HOOKS_COUNT_MAX + 1)?;
    if hooks.len() >= HOOKS_COUNT_MAX {
        return Ok(Err(WireError::too_large(format!("the cluster has {HOOKS_COUNT_MAX} hooks, the limit"))));
    }
    let next = super::next_seq(store)?;
    let position = match start {
        StartAt::New => next - 1,
        StartAt::Seq(seq) if seq > next => {
            return Ok(Err(WireError::invalid(format!("sequence {seq} is in the future (the next is {next})"))));
        }
        StartAt::Seq(seq) => seq.max(super::floor(store)?).max(1) - 1,
    };
    let record = HookRecord {
        name: name.to_string(),
        spec: spec.clone(),
        paused: None,
        created_ms: now,
        position,
        fence: 0,
        claim: None,
        pending: 0,
        dead_letters: 0,
        stats: HookStats::default(),
    };
    save(store, &hook_key(name), &record)?;
    Ok(Ok(HookResponse::Created { existed: false, position }))
}

/// The hook's claim, when `fence` is its current fence (the claimant's commands name it).
fn check_fence(record: &HookRecord, fence: u64) -> Result<(), WireError> {
    match record.claim {
        Some(claim) if claim.fence == fence => Ok(()),
        _ => Err(WireError::new(
            ErrorCode::Conflict,
            format!("fence {fence} of hook {:?} is stale (the current fence is {})", record.name, record.fence),
        )),
    }
}

fn on_record(
    store: &mut impl CoordWrite,
    context: &mut Context<'_>,
    record: &mut HookRecord,
    command: &HookCommand,
) -> Result<Result<HookResponse, WireError>, StorageFault> {
    let now = context.now;
    Ok(Ok(match command {
        HookCommand::Pause { .. } => {
            record.paused = Some("paused by an operator".into());
            HookResponse::Done
        }
        HookCommand::Resume { .. } => {
            if record.paused.is_some() && record.dead_letters as usize >= HOOK_DLQ_COUNT_MAX {
                return Ok(Err(WireError::new(
                    ErrorCode::Conflict,
                    format!("the dead-letter list is full ({HOOK_DLQ_COUNT_MAX}): redrive or delete it first"),
                )));
            }
            record.paused = None;
            HookResponse::Done
        }
        HookCommand::Claim { node, fence, .. } => {
            match record.claim {
                Some(claim) if claim.until_ms > now && claim.node != *node => {
                    return Ok(Err(WireError::new(
                        ErrorCode::Busy,
                        format!(
                            "hook {:?} is delivered by node {} for {} ms more",
                            record.name,
                            claim.node,
                            claim.until_ms - now
                        ),
                    )));
                }
                Some(claim) if claim.until_ms > now && claim.fence == *fence => {
                    record.claim = Some(Claim { until_ms: now + HOOK_CLAIM_TTL_MS, ..claim });
                }
                // A renewal of a claim that is gone (lapsed and taken, released, replayed, or of a hook deleted and
                // created again): the claimant must stop, not carry on under a new fence.
                _ if *fence != 0 => {
                    return Ok(Err(WireError::new(
                        ErrorCode::Conflict,
                        format!("fence {fence} of hook {:?} is no longer current; claim it afresh", record.name),
                    )));
                }
                _ => {
                    record.fence = next_fence(store)?;
                    record.claim = Some(Claim { node: *node, fence: record.fence, until_ms: now + HOOK_CLAIM_TTL_MS });
                }
            }
            let claim = record.claim.expect("set above");
            HookResponse::Claimed { fence: claim.fence, until_ms: claim.until_ms }
        }
        HookCommand::Release { fence, .. } => {
            if record.claim.is_some_and(|claim| claim.fence == *fence) {
                record.claim = None;
            }
            HookResponse::Done
        }
        HookCommand::Begin { fence, most, .. } => {
            if let Err(error) = check_fence(record, *fence) {
                return Ok(Err(error));
            }
            if record.claim.is_some_and(|claim| claim.until_ms <= now) {
                return Ok(Err(WireError::new(
                    ErrorCode::Conflict,
                    format!("the claim on hook {:?} lapsed: claim it again", record.name),
                )));
            }
            begin(store, context, record, *most)?
        }
        HookCommand::Ack { seq, attempt, fence, .. } => {
            if let Err(error) = attempt_is_current(store, record, *seq, *attempt, *fence)? {
                return Ok(Err(error));
            }
            store.coord_delete(&pending_key(&record.name, *seq))?;
            record.pending -= 1;
            record.stats.acked += 1;
            HookResponse::Acked
        }
        HookCommand::Nack { seq, attempt, fence, error, .. } => {
            let mut pending = match attempt_is_current(store, record, *seq, *attempt, *fence)? {
                Ok(pending) => pending,
                Err(error) => return Ok(Err(error)),
            };
            if pending.attempt >= record.spec.max_deliver {
                let dead = bury(store, context, record, pending, error.clone())?;
                return Ok(Ok(HookResponse::Nacked { dead }));
            }
            pending.in_flight = false;
            pending.due_ms = now + record.spec.backoff_after(pending.attempt);
            pending.last_error = Some(error.clone());
            save(store, &pending_key(&record.name, *seq), &pending)?;
            HookResponse::Nacked { dead: false }
        }
        HookCommand::Term { seq, attempt, fence, error, .. } => {
            let pending = match attempt_is_current(store, record, *seq, *attempt, *fence)? {
                Ok(pending) => pending,
                Err(error) => return Ok(Err(error)),
            };
            let dead = bury(store, context, record, pending, error.clone())?;
            HookResponse::Nacked { dead }
        }
        HookCommand::Redrive { name } => {
            let (letters, more) = dead_letters(store, name, 0, HOOK_REDRIVE_COUNT_MAX)?;
            for letter in &letters {
                store.coord_delete(&dead_key(name, letter.event.seq))?;
                record.dead_letters -= 1;
                if load::<Pending>(store, &pending_key(name, letter.event.seq))?.is_some() {
                    // Already on its way again (a replay began it): it is delivered once, not twice.
                    continue;
                }
                record.pending += 1;
                let pending = Pending {
                    event: letter.event.clone(),
                    attempt: 0,
                    fence: record.fence,
                    in_flight: false,
                    due_ms: now,
                    last_error: Some(letter.error.clone()),
                };
                save(store, &pending_key(name, letter.event.seq), &pending)?;
            }
            if record.paused.as_deref() == Some(DLQ_FULL) {
                record.paused = None;
            }
            HookResponse::Redriven { count: letters.len() as u32, more }
        }
        HookCommand::Replay { name, from } => {
            let next = super::next_seq(store)?;
            if *from > next {
                return Ok(Err(WireError::invalid(format!("sequence {from} is in the future (the next is {next})"))));
            }
            let from = (*from).max(super::floor(store)?);
            // What is pending or dead from `from` on is delivered again by the replay; what comes before stays owed.
            for prefix in [scoped(PENDING, name.as_bytes()), scoped(DEAD, name.as_bytes())] {
                let mut start = prefix.clone();
                start.extend_from_slice(&from.to_be_bytes());
                let mut keys = Vec::new();
                store.coord_scan_from(&prefix, &start, &mut |key, _| {
                    keys.push(key.to_vec());
                    std::ops::ControlFlow::Continue(())
                })?;
                for key in &keys {
                    store.coord_delete(key)?;
                }
                if prefix.starts_with(PENDING) {
                    record.pending -= keys.len() as u32;
                } else {
                    record.dead_letters -= keys.len() as u32;
                }
            }
            record.position = from - 1;
            // Deliveries under the old fence can no longer be acked; the claimant claims again.
            record.fence = next_fence(store)?;
            record.claim = None;
            if record.paused.as_deref() == Some(DLQ_FULL) && (record.dead_letters as usize) < HOOK_DLQ_COUNT_MAX {
                record.paused = None;
            }
            HookResponse::Replayed { from }
        }
        HookCommand::Create { .. }
        | HookCommand::Delete { .. }
        | HookCommand::Publish { .. }
        | HookCommand::Trim { .. } => unreachable!("answered by apply"),
    }))
}

const DLQ_FULL: &str = "the dead-letter list is full";

/// Pending events one delivery request looks at for retries (the oldest first; a redrive of thousands is worked
/// through a page at a time).
const PENDING_SCAN_MAX: usize = 1_024;

/// The pending attempt `(seq, attempt, fence)` names, if it is the current one.
fn attempt_is_current(
    store: &impl CoordRead,
    record: &HookRecord,
    seq: u64,
    attempt: u32,
    fence: u64,
) -> Result<Result<Pending, WireError>, StorageFault> {
    if let Err(error) = check_fence(record, fence) {
        return Ok(Err(error));
    }
    let Some(pending) = load::<Pending>(store, &pending_key(&record.name, seq))? else {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("event {seq} is not pending on hook {:?} (acked, dead or replayed)", record.name),
        )));
    };
    if !pending.in_flight || pending.attempt != attempt || pending.fence != fence {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "attempt {attempt} of event {seq} on hook {:?} is stale (attempt {} is current)",
                record.name, pending.attempt
            ),
        )));
    }
    Ok(Ok(pending))
}

/// Moves a pending event to the dead-letter list and publishes `sys.hook.dlq.<hook>`; answers whether it moved (a
/// full list keeps it pending and pauses the hook instead).
fn bury(
    store: &mut impl CoordWrite,
    context: &mut Context<'_>,
    record: &mut HookRecord,
    mut pending: Pending,
    error: String,
) -> Result<bool, StorageFault> {
    let seq = pending.event.seq;
    if record.dead_letters as usize >= HOOK_DLQ_COUNT_MAX {
        record.paused = Some(DLQ_FULL.into());
        pending.in_flight = false;
        pending.due_ms = context.now;
        pending.last_error = Some(error);
        save(store, &pending_key(&record.name, seq), &pending)?;
        return Ok(false);
    }
    store.coord_delete(&pending_key(&record.name, seq))?;
    let letter =
        DeadLetter { event: pending.event, attempts: pending.attempt, error: error.clone(), time_ms: context.now };
    if load::<DeadLetter>(store, &dead_key(&record.name, seq))?.is_none() {
        record.dead_letters += 1;
    }
    save(store, &dead_key(&record.name, seq), &letter)?;
    record.pending -= 1;
    record.stats.dead += 1;
    let notice = HookNotice::DeadLettered { hook: record.name.clone(), seq, attempts: pending.attempt, error };
    let events =
        super::record(store, context.now, context.revision, [(notice_subject(&notice), EventBody::Hook(notice))])?;
    context.published.extend(events);
    Ok(true)
}

/// Whether `event` goes to `record`: it matches, and it is not the hook's own dead-letter notice (a hook on `sys.>`
/// failing its own notices would feed itself).
fn wants(record: &HookRecord, event: &HookEvent) -> bool {
    subject::matches(&record.spec.pattern, &event.subject)
        && !matches!(&event.body, EventBody::Hook(HookNotice::DeadLettered { hook, .. }) if *hook == record.name)
}

fn begin(
    store: &mut impl CoordWrite,
    context: &mut Context<'_>,
    record: &mut HookRecord,
    most: u32,
) -> Result<HookResponse, StorageFault> {
    let now = context.now;
    let mut deliveries = Vec::new();
    if record.paused.is_some() {
        return Ok(HookResponse::Deliveries { deliveries, next_due_ms: None, more: false });
    }
    // Retries first, oldest event first: what is due, and every attempt of an older fence (its node lost the claim).
    let waiting = pending(store, &record.name, PENDING_SCAN_MAX)?;
    let mut next_due: Option<u64> = None;
    for mut pending in waiting {
        if deliveries.len() as u32 >= most {
            break;
        }
        let orphaned = pending.in_flight && pending.fence != record.fence;
        if !orphaned && pending.due_ms > now {
            next_due = Some(next_due.map_or(pending.due_ms, |due: u64| due.min(pending.due_ms)));
            continue;
        }
        if pending.in_flight {
            // The attempt failed: its node lost the claim, or it ran past its ack wait.
            let error = if orphaned { "the delivering node lost its claim" } else { "no answer within the ack wait" };
            if pending.attempt >= record.spec.max_deliver {
                bury(store, context, record, pending, error.to_string())?;
                continue;
            }
            let backoff = record.spec.backoff_after(pending.attempt);
            pending.last_error = Some(error.to_string());
            if !orphaned && backoff > 0 {
                pending.in_flight = false;
                pending.due_ms = now + backoff;
                next_due = Some(next_due.map_or(pending.due_ms, |due: u64| due.min(pending.due_ms)));
                save(store, &pending_key(&record.name, pending.event.seq), &pending)?;
                continue;
            }
        }
        pending.attempt += 1;
        pending.fence = record.fence;
        pending.in_flight = true;
        pending.due_ms = now + record.spec.ack_wait_ms;
        save(store, &pending_key(&record.name, pending.event.seq), &pending)?;
        record.stats.delivered += 1;
        deliveries.push(delivery(record, &pending));
    }
    // Then new events, while there is room.
    let floor = super::floor(store)?;
    if record.position + 1 < floor {
        record.stats.skipped += floor - record.position - 1;
        record.position = floor - 1;
    }
    let mut more = false;
    // A dead letter that found the list full paused the hook just now: nothing new begins.
    let room = if record.paused.is_some() {
        0
    } else {
        record.spec.max_in_flight.saturating_sub(record.pending).min(most.saturating_sub(deliveries.len() as u32))
    };
    if room > 0 {
        let mut found = Vec::new();
        let (mut scanned, mut bytes) = (0usize, 0usize);
        let mut last = record.position;
        super::scan_log(store, record.position + 1, &mut |event, size| {
            if found.len() as u32 >= room || scanned >= HOOK_SCAN_ROWS_MAX || bytes >= HOOK_LOG_READ_BYTES_MAX {
                more = true;
                return std::ops::ControlFlow::Break(());
            }
            scanned += 1;
            bytes += size;
            last = event.seq;
            if wants(record, &event) {
                found.push(event);
            }
            std::ops::ControlFlow::Continue(())
        })?;
        record.position = last;
        for event in found {
            let pending = Pending {
                event,
                attempt: 1,
                fence: record.fence,
                in_flight: true,
                due_ms: now + record.spec.ack_wait_ms,
                last_error: None,
            };
            save(store, &pending_key(&record.name, pending.event.seq), &pending)?;
            record.pending += 1;
            record.stats.delivered += 1;
            deliveries.push(delivery(record, &pending));
        }
    } else {
        // More only if this Begin's own `most` was the limit: a hook at its in-flight bound (or paused) can take
        // nothing more until an attempt is answered, and saying "more" then made its worker propose Begins back to
        // back (a log entry per round trip, none taking anything; with one voter in the simulator, endlessly
        // without simulated time moving: seed 823).
        let at_bound = record.paused.is_some() || record.pending >= record.spec.max_in_flight;
        more = !at_bound && record.position + 1 < super::next_seq(store)?;
    }
    for delivery in &deliveries {
        next_due = Some(next_due.map_or(delivery.ack_by_ms, |due: u64| due.min(delivery.ack_by_ms)));
    }
    Ok(HookResponse::Deliveries { deliveries, next_due_ms: next_due, more })
}

fn delivery(record: &HookRecord, pending: &Pending) -> Delivery {
    Delivery {
        hook: record.name.clone(),
        attempt: pending.attempt,
        fence: pending.fence,
        ack_by_ms: pending.due_ms,
        event: pending.event.clone(),
    }
}

/// Trims the log to the last `keep_events`, but not past the position of any hook (unless the log would pass
/// [`HOOK_LOG_EVENTS_MAX`]).
fn trim(store: &mut impl CoordWrite, keep_events: u64) -> Result<Result<HookResponse, WireError>, StorageFault> {
    let next = super::next_seq(store)?;
    let mut below = next.saturating_sub(keep_events);
    let (hooks, _) = load_under::<HookRecord>(store, HOOK, HOOKS_COUNT_MAX + 1)?;
    for hook in &hooks {
        below = below.min(hook.position + 1);
    }
    below = below.max(next.saturating_sub(HOOK_LOG_EVENTS_MAX));
    let dropped = super::trim_below(store, below)?;
    Ok(Ok(HookResponse::Trimmed { dropped, floor: super::floor(store)? }))
}
