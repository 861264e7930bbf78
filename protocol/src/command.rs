//! What goes into the Raft log: a batch of commands stamped with the leader's clock, and their results.
//!
//! One proposal is one log entry. The RaftActor packs many concurrent client writes into one proposal (group commit),
//! so the state machine answers each command separately, in order.

use serde::{Deserialize, Serialize};

use crate::coord::{CoordRequest, CoordResponse};
use crate::error::WireError;
use crate::kv::{KvRequest, KvResponse};

/// One replicated command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Kv(KvRequest),
    Coord(CoordRequest),
    Blob(crate::blob::BlobCommand),
    Plugin(crate::plugin::PluginCommand),
    Token(crate::token::records::TokenCommand),
    Hook(crate::hook::durable::HookCommand),
    Job(crate::job::JobCommand),
    Fs(crate::fs::FsCommand),
}

impl Command {
    /// Bytes the command weighs in a log entry.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Kv(request) => request.payload_bytes(),
            Command::Coord(request) => request.payload_bytes(),
            Command::Blob(_) => 128,
            Command::Plugin(crate::plugin::PluginCommand::Kv { request, .. }) => 64 + request.payload_bytes(),
            Command::Plugin(crate::plugin::PluginCommand::Sealed { ops, .. }) => {
                64 + ops.iter().map(|op| 16 + op.key().len() + op.value().map_or(0, <[u8]>::len)).sum::<usize>()
            }
            Command::Plugin(_) => 2048,
            Command::Token(_) => 1024,
            Command::Hook(command) => command.payload_bytes(),
            Command::Job(command) => command.payload_bytes(),
            Command::Fs(command) => command.payload_bytes(),
        }
    }
}

/// What one command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    Kv(KvResponse),
    Coord(CoordResponse),
    Blob(crate::blob::BlobResponse),
    Plugin(crate::plugin::PluginResponse),
    Token(crate::token::records::TokenOutput),
    Hook(crate::hook::durable::HookResponse),
    Job(crate::job::JobResponse),
    Fs(crate::fs::FsResponse),
}

/// The result of one KV command.
pub type KvResult = Result<KvResponse, WireError>;

/// The application data of one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposing leader's wall clock in milliseconds since the Unix epoch. Every time-based decision of the state
    /// machine (TTLs, leases, expiries) is judged against this stamp, never against the applying replica's clock.
    pub stamp_ms: u64,
    pub commands: Vec<Command>,
}

/// The result of one command.
pub type CommandResult = Result<CommandOutput, WireError>;

/// The state machine's answer to one proposal: one result per command, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalOutcome {
    pub results: Vec<CommandResult>,
    /// What the proposal changed in the coordination state, in order (the commit stream's content).
    pub events: Vec<crate::coord::CoordEvent>,
    /// The proposal's events as the hook log recorded them, in order (for the hook router's live subscribers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::hook::HookEvent>,
}
