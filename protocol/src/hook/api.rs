//! The client's side of hooks: requests (`pando hook ...`), their answers, and the hook stream (`pando hook watch`),
//! which runs on its own stream like a KV watch: the request, then [`HookStreamResponse`] frames until either side
//! ends it.

use serde::{Deserialize, Serialize};

use super::HookEvent;
use super::durable::{DeadLetter, HookCommand, HookRecord, HookResponse, HookSpec, Pending, StartAt};
use crate::error::WireError;
use crate::kv::Bytes;
use crate::limits::HOOK_LIST_COUNT_MAX;

/// What a client asks of hooks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookRequest {
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
    /// A user event (`pando hook publish`).
    Publish {
        subject: String,
        data: Bytes,
    },
    Redrive {
        name: String,
    },
    Replay {
        name: String,
        from: u64,
    },
    /// Hooks in name order after `after`.
    List {
        after: Option<String>,
        limit: u32,
    },
    Info {
        name: String,
    },
    /// A hook's dead letters after sequence `after`.
    DeadLetters {
        name: String,
        after: u64,
        limit: u32,
    },
}

impl HookRequest {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            HookRequest::List { limit, .. } | HookRequest::DeadLetters { limit, .. }
                if *limit == 0 || *limit as usize > HOOK_LIST_COUNT_MAX =>
            {
                Err(WireError::invalid(format!("a page holds 1 to {HOOK_LIST_COUNT_MAX} entries")))
            }
            HookRequest::List { .. } => Ok(()),
            HookRequest::Info { name } | HookRequest::DeadLetters { name, .. } => super::durable::validate_name(name),
            request => request.command().expect("every other request is a command").validate(),
        }
    }

    /// The replicated command a request proposes (`None`: it reads).
    pub fn command(&self) -> Option<HookCommand> {
        Some(match self.clone() {
            HookRequest::Create { name, spec, start } => HookCommand::Create { name, spec, start },
            HookRequest::Delete { name } => HookCommand::Delete { name },
            HookRequest::Pause { name } => HookCommand::Pause { name },
            HookRequest::Resume { name } => HookCommand::Resume { name },
            HookRequest::Publish { subject, data } => HookCommand::Publish { subject, data },
            HookRequest::Redrive { name } => HookCommand::Redrive { name },
            HookRequest::Replay { name, from } => HookCommand::Replay { name, from },
            HookRequest::List { .. } | HookRequest::Info { .. } | HookRequest::DeadLetters { .. } => return None,
        })
    }

    /// Whether the request only publishes a user event (the one hook request a scoped token may make).
    pub fn is_publish(&self) -> bool {
        matches!(self, HookRequest::Publish { .. })
    }
}

/// A hook as `pando hook info` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookInfo {
    pub record: HookRecord,
    /// Every matching event up to here was acked, dead or skipped (redriven ones aside).
    pub ack_floor: u64,
    /// The first pending events, oldest first.
    pub pending: Vec<Pending>,
    /// The oldest sequence the hook log holds, and the next it will give out.
    pub log_floor: u64,
    pub log_next: u64,
}

/// Answers to [`HookRequest`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookReply {
    Command(HookResponse),
    List { hooks: Vec<HookRecord>, more: bool },
    Info(Box<HookInfo>),
    DeadLetters { letters: Vec<DeadLetter>, more: bool },
}

/// What a hook stream of `pattern` reveals, as a key prefix: `Some(prefix)` when the pattern can only match KV events
/// of keys under `prefix` (`kv.<put, delete or *>.` then key tokens, literal up to the first wildcard), so read access
/// to that prefix is enough; `None` when it may match any other event, which needs [`Access::HookAdmin`].
///
/// [`Access::HookAdmin`]: crate::token::Access::HookAdmin
pub fn kv_scope(pattern: &str) -> Option<Vec<u8>> {
    let mut tokens = pattern.split('.');
    if tokens.next()? != "kv" {
        return None;
    }
    match tokens.next()? {
        "put" | "delete" | "*" => {}
        ">" => return Some(Vec::new()),
        _ => return None,
    }
    let rest: Vec<&str> = tokens.collect();
    if rest.is_empty() {
        return None;
    }
    let literal: Vec<&str> = rest.iter().take_while(|token| **token != "*" && **token != ">").copied().collect();
    if literal.is_empty() {
        return Some(Vec::new());
    }
    let mut key = super::subject::decode_key(&literal.join("."))?;
    if literal.len() < rest.len() {
        key.push(b'/');
    }
    Some(key)
}

/// A live stream of events matching `pattern`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookWatchRequest {
    pub pattern: String,
    /// The first sequence to deliver (while the log holds it); 0: the next event to commit.
    pub from_seq: u64,
}

impl HookWatchRequest {
    pub fn validate(&self) -> Result<(), WireError> {
        super::subject::validate_pattern(&self.pattern)
    }
}

/// The frames a hook stream answers with, after its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookStreamResponse {
    /// The stream runs: events from `next_seq` on follow.
    Created { next_seq: u64 },
    /// Matching events, in sequence order.
    Events { events: Vec<HookEvent> },
    /// Every event before `next_seq` was delivered or did not match (a heartbeat too).
    Progress { next_seq: u64 },
    /// The stream ended: why (`COMPACTED`, `SLOW_CONSUMER`, `UNAVAILABLE`), and where to resume.
    Canceled { error: WireError, next_seq: u64 },
}
