//! The host ABI between a node and its plugins: the host functions' names and the MessagePack shapes of their
//! arguments and answers.
//!
//! This file depends on nothing but `serde` and `serde_bytes`: the guest SDK (`plugins-sdk`) includes it verbatim, so
//! the two sides can never disagree. Every host function takes one memory block (the MessagePack-encoded arguments)
//! and returns one (a MessagePack-encoded [`HostResult`]): a refused call is an answer the plugin can handle, never a
//! trap.

use serde::{Deserialize, Serialize};

/// The wasm import module of every host function (extism's default namespace for user functions).
pub const HOST_NAMESPACE: &str = "extism:host/user";

/// Host function names.
pub mod names {
    pub const LOG: &str = "pando_log";
    pub const TIME: &str = "pando_time";
    pub const KV_GET: &str = "pando_kv_get";
    pub const KV_PUT: &str = "pando_kv_put";
    pub const KV_DELETE: &str = "pando_kv_delete";
    pub const KV_SCAN: &str = "pando_kv_scan";
    pub const KV_CAS: &str = "pando_kv_cas";
    pub const KV_BATCH: &str = "pando_kv_batch";
    pub const BLOB_GET: &str = "pando_blob_get";
    pub const BLOB_PUT: &str = "pando_blob_put";
    pub const BLOB_HAS: &str = "pando_blob_has";
    pub const NODE_INFO: &str = "pando_node_info";
    pub const RANDOM: &str = "pando_random";
    pub const SIGN: &str = "pando_sign";
    pub const VERIFY: &str = "pando_verify";
    pub const TIMER_SCHEDULE: &str = "pando_timer_schedule";
    pub const TIMER_CANCEL: &str = "pando_timer_cancel";
    pub const HOOK_SUBSCRIBE: &str = "pando_hook_subscribe";
    pub const HOOK_UNSUBSCRIBE: &str = "pando_hook_unsubscribe";
    pub const SEALED_GET: &str = "pando_sealed_get";
    pub const SEALED_SCAN: &str = "pando_sealed_scan";
    pub const SEALED_WRITE: &str = "pando_sealed_write";
    pub const CALLER_MAY: &str = "pando_caller_may";

    /// Every host function, in a stable order.
    pub const ALL: &[&str] = &[
        LOG,
        TIME,
        KV_GET,
        KV_PUT,
        KV_DELETE,
        KV_SCAN,
        KV_CAS,
        KV_BATCH,
        BLOB_GET,
        BLOB_PUT,
        BLOB_HAS,
        NODE_INFO,
        RANDOM,
        SIGN,
        VERIFY,
        TIMER_SCHEDULE,
        TIMER_CANCEL,
        HOOK_SUBSCRIBE,
        HOOK_UNSUBSCRIBE,
        SEALED_GET,
        SEALED_SCAN,
        SEALED_WRITE,
        CALLER_MAY,
    ];
}

/// Exports the host calls when they exist.
pub mod exports {
    /// Called once per instance before it serves calls; a failure refuses the generation on that node.
    pub const INIT: &str = "init";
    /// Called with a [`super::TimerFired`] when a timer the plugin scheduled fires.
    pub const ON_TIMER: &str = "on_timer";
    /// Called with a hook event once the hook router delivers them.
    pub const ON_HOOK: &str = "on_hook";
}

/// Why a host function refused. `code` is one of the node's stable error codes (`UNAUTHORIZED`, `NOT_FOUND`,
/// `CONFLICT`, `TOO_LARGE`, `INVALID_ARGUMENT`, `TIMEOUT`, `UNAVAILABLE`, `INTERNAL`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostError {
    pub code: String,
    pub message: String,
}

/// What every host function answers.
pub type HostResult<T> = Result<T, HostError>;

/// Most bytes of one log message; longer messages are cut.
pub const LOG_MESSAGE_BYTES_MAX: usize = 4096;
/// Most random bytes one call returns.
pub const RANDOM_BYTES_MAX: u32 = 4096;
/// Most bytes of a message to sign or verify.
pub const SIGN_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Most bytes one `blob_get` returns or one `blob_put` stores.
pub const BLOB_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most timers one plugin has pending on one node.
pub const TIMERS_PER_PLUGIN_MAX: usize = 64;
/// Longest delay of a timer.
pub const TIMER_DELAY_MS_MAX: u64 = 24 * 3600 * 1000;
/// Most bytes of a timer's payload.
pub const TIMER_PAYLOAD_BYTES_MAX: usize = 4096;
/// Most hook subscriptions of one plugin.
pub const HOOK_SUBSCRIPTIONS_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogArgs {
    pub level: LogLevel,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyArgs {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub version: u64,
    pub mod_revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutArgs {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanArgs {
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
    /// Continue after this key (the `next` of the previous page).
    #[serde(with = "serde_bytes")]
    pub after: Option<Vec<u8>>,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPage {
    pub entries: Vec<Entry>,
    #[serde(with = "serde_bytes")]
    pub next: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasArgs {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// `None`: the key must not exist.
    #[serde(with = "serde_bytes")]
    pub expected: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchArgs {
    pub ops: Vec<BatchOp>,
}

/// The store revision a write produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub revision: u64,
    pub existed: bool,
}

/// A blob named by its BLAKE3 hash (64 hex digits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobArgs {
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobData {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub plugin: String,
    pub generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomArgs {
    pub len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignArgs {
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The plugin's public key (the same on every node of the cluster).
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyArgs {
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// `None`: the plugin's own key.
    #[serde(with = "serde_bytes")]
    pub public_key: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerArgs {
    pub delay_ms: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerId {
    pub id: u64,
}

/// The input of `on_timer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFired {
    pub id: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookArgs {
    /// A subject pattern (`kv.put.orders.>`), matched by the hook router.
    pub subject: String,
}

/// A read of one row of the plugin's sealed storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedGetArgs {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Read this node's applied state as it is (`false`: first catch up with everything committed anywhere, a
    /// read-index round through the leader).
    #[serde(default)]
    pub stale: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValue {
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedScanArgs {
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
    /// Continue after this key (the `next` of the previous page).
    #[serde(with = "serde_bytes")]
    pub after: Option<Vec<u8>>,
    pub limit: u32,
    #[serde(default)]
    pub stale: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEntry {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedScanPage {
    pub entries: Vec<SealedEntry>,
    #[serde(with = "serde_bytes")]
    pub next: Option<Vec<u8>>,
}

/// One step of a sealed write: checks first (against the rows before the write), then puts and deletes, all or
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SealedOp {
    /// The write goes ahead only if `key` holds `expected` (`None`: does not exist); else `CONFLICT`.
    Check {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
    },
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedWriteArgs {
    pub ops: Vec<SealedOp>,
}

/// What a sealed write did, and the plugin's sealed rows and bytes afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedWritten {
    pub changed: u32,
    pub rows: u64,
    pub bytes: u64,
}

/// A question about the client a call runs for: may its token read (or write, `write`) KV key `key`, or, with
/// `under`, some key that starts with `key` (whether a folder holds anything it may see)?
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerCheck {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub under: bool,
}

/// Most checks one [`names::CALLER_MAY`] call asks.
pub const CALLER_CHECKS_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerArgs {
    pub checks: Vec<CallerCheck>,
}

/// One answer per check, in order. Outside a client's call (`init`, a timer, a hook delivery) and for a token with
/// every capability, every answer is `true`: the plugin acts on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerAnswer {
    pub allowed: Vec<bool>,
}

/// Encodes host-call arguments or answers.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

/// Decodes host-call arguments or answers.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, HostError> {
    rmp_serde::from_slice(bytes).map_err(|error| HostError {
        code: "MALFORMED".into(),
        message: format!("cannot decode host call data: {error}"),
    })
}
