//! Capability tokens: an accessor id and a secret, checked against token records in the replicated state.
//!
//! The model is Consul's ACL tokens and Vault's accessors. A token is two random strings: the **accessor** (16 bytes,
//! public: it names the token in `pando token list`, in logs and in a revocation) and the **secret** (32 bytes, what
//! proves possession). The replicated state keeps one [`TokenRecord`] per accessor: the token's name, capabilities,
//! expiry and a keyed BLAKE3 hash of the secret, never the secret itself. So:
//! - every node checks a token against its own applied state, with no key to hand around and none to steal;
//! - a revocation is one log entry, effective on each node as soon as it applies it;
//! - a copy of a node's disk or log gives away the token list, not a usable token.
//!
//! Nodes do not hold tokens: a member authenticates with its own iroh key (the QUIC handshake proves it), and the
//! membership says which key is which node ([`Capability::Node`]).

pub mod records;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::kv::Bytes;
use crate::limits::{
    JOIN_TOKEN_USES_MAX, KEY_SIZE_BYTES_MAX, TOKEN_CAPABILITIES_COUNT_MAX, TOKEN_NAME_BYTES_MAX, TOKEN_TTL_MS_MAX,
};

/// Bytes of a token's accessor id.
pub const ACCESSOR_BYTES: usize = 16;
/// Bytes of a token's secret.
pub const SECRET_BYTES: usize = 32;
/// BLAKE3 key-derivation context of a secret's stored hash.
const SECRET_HASH_CONTEXT: &str = "pando 2026-12-04 capability token secret hash v1";

/// What a token (or a member's key) lets its holder do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capability {
    /// Everything, including cluster administration and minting tokens.
    All,
    /// Read keys starting with `prefix` (and the blobs, leases, locks and queues under it).
    KvRead { prefix: Bytes },
    /// Read and write keys starting with `prefix` (and the blobs, leases, locks and queues under it).
    KvWrite { prefix: Bytes },
    /// Read cluster status, metrics and the plugin registry.
    ClusterRead,
    /// Join the cluster as a new node (what a join token carries).
    ClusterJoin,
    /// Read blobs that keys this token can read refer to.
    BlobRead,
    /// Add blobs, and protect or re-replicate those keys this token can write refer to (reading them too).
    BlobWrite,
    /// Call plugins: the one named, or any (`None`). Installing and managing plugins needs [`Capability::All`].
    PluginCall { plugin: Option<String> },
    /// A member of the cluster, authenticated by its own key: it may read the cluster status, announce its own
    /// address, and ask for its own promotion when the join token that admitted it said so.
    Node { node_id: u64, promote: bool },
    /// Submit plugin jobs to the queue named (or any, `None`) and read jobs. Shell jobs, cancelling, retrying,
    /// purging and cron need [`Capability::All`]: a shell job runs a command as the node's user.
    Jobs { queue: Option<String> },
    /// Use the cluster's file system through the client protocol (`pando mount`): read it (and take file locks),
    /// or read and write it. Without `as_ids` its holder names the uid and gid each request runs as (as an NFS
    /// client with `AUTH_SYS` does), so it is trusted with every file; with them every request runs as that uid and
    /// gid, whoever the holder says it is (NFS's `all_squash`). The KV and `.pando/` are not in it.
    Fs { write: bool, as_ids: Option<(u32, u32)> },
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access<'a> {
    KvRead(&'a [u8]),
    KvWrite(&'a [u8]),
    ClusterRead,
    ClusterJoin,
    /// Membership changes.
    ClusterAdmin,
    BlobRead,
    BlobWrite,
    /// Calling a function of the named plugin.
    PluginCall(&'a str),
    /// Installing, upgrading, enabling, disabling and removing plugins.
    PluginAdmin,
    /// Minting, listing and revoking tokens.
    TokenAdmin,
    /// Durable hooks and user events.
    HookAdmin,
    /// A hook stream of this pattern: read access to the key prefix it is confined to
    /// ([`kv_scope`](crate::hook::api::kv_scope)), or [`Access::HookAdmin`] when it may match anything else.
    HookStream(&'a str),
    /// Submitting a plugin job to this queue.
    JobSubmit(&'a str),
    /// Submitting a shell job (a command the node runs as its own user).
    JobShell,
    /// Reading jobs, their counts and cron schedules.
    JobRead,
    /// Cancelling, retrying, redriving and purging jobs, cron schedules, and a worker's claims and results.
    JobAdmin,
    /// Announcing the addresses of this node.
    NodeAddress(u64),
    /// Replacing this node's key.
    NodeKey(u64),
    /// Promoting this learner to a voter.
    Promote(u64),
    /// Reading the file system and taking file locks in it.
    FsRead,
    /// Changing the file system.
    FsWrite,
}

/// A token as it travels: accessor and secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityToken {
    pub accessor: Bytes,
    pub secret: Bytes,
}

impl std::fmt::Debug for CapabilityToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapabilityToken")
            .field("accessor", &hex(&self.accessor))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl CapabilityToken {
    /// A token from random bytes the caller drew (this crate draws no randomness: it runs inside the state machine).
    pub fn from_random(random: [u8; ACCESSOR_BYTES + SECRET_BYTES]) -> CapabilityToken {
        CapabilityToken {
            accessor: Bytes::from(random[..ACCESSOR_BYTES].to_vec()),
            secret: Bytes::from(random[ACCESSOR_BYTES..].to_vec()),
        }
    }

    /// The hash its record stores.
    pub fn secret_hash(&self) -> [u8; 32] {
        blake3::derive_key(SECRET_HASH_CONTEXT, &self.secret)
    }

    /// Whether both parts have their sizes.
    pub fn is_well_formed(&self) -> bool {
        self.accessor.len() == ACCESSOR_BYTES && self.secret.len() == SECRET_BYTES
    }

    pub fn accessor_hex(&self) -> String {
        hex(&self.accessor)
    }
}

/// What a join token admits, and whom it admitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGrant {
    /// Joins left before the token is spent.
    pub uses_left: u32,
    /// Whether nodes it admits may promote themselves to voters once caught up (else an admin promotes them).
    pub voter: bool,
    /// The node ids it admitted, in order.
    pub admitted: Vec<u64>,
}

/// A token as `pando token list` shows it: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub accessor: Bytes,
    pub name: String,
    pub capabilities: Vec<Capability>,
    /// Log time of its creation.
    pub created_ms: u64,
    /// `None`: does not expire.
    pub expires_ms: Option<u64>,
    /// Set for join tokens.
    pub join: Option<JoinGrant>,
}

impl TokenInfo {
    /// Whether it has expired at `now_ms` (log time in the state machine, the node's clock when authenticating).
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|expires_ms| now_ms >= expires_ms)
    }

    /// Whether any capability grants `access`.
    pub fn allows(&self, access: Access<'_>) -> bool {
        allows(&self.capabilities, access)
    }
}

/// Whether any of `capabilities` grants `access`.
pub fn allows(capabilities: &[Capability], access: Access<'_>) -> bool {
    capabilities.iter().any(|capability| match (capability, access) {
        (Capability::All, _) => true,
        (Capability::KvWrite { prefix }, Access::KvRead(key) | Access::KvWrite(key)) => key.starts_with(prefix),
        (Capability::KvRead { prefix }, Access::KvRead(key)) => key.starts_with(prefix),
        (Capability::ClusterRead, Access::ClusterRead) => true,
        (Capability::ClusterJoin, Access::ClusterJoin) => true,
        (Capability::BlobWrite, Access::BlobRead | Access::BlobWrite) => true,
        (Capability::BlobRead, Access::BlobRead) => true,
        (Capability::PluginCall { plugin }, Access::PluginCall(name)) => {
            plugin.as_deref().is_none_or(|plugin| plugin == name)
        }
        (Capability::KvRead { prefix } | Capability::KvWrite { prefix }, Access::HookStream(pattern)) => {
            crate::hook::api::kv_scope(pattern).is_some_and(|scope| scope.starts_with(prefix))
        }
        (Capability::Jobs { queue }, Access::JobSubmit(name)) => queue.as_deref().is_none_or(|queue| queue == name),
        (Capability::Jobs { .. }, Access::JobRead) => true,
        (Capability::Fs { .. }, Access::FsRead) => true,
        (Capability::Fs { write, .. }, Access::FsWrite) => *write,
        // A mount drops its caches of what changed from this stream.
        (Capability::Fs { .. }, Access::HookStream(pattern)) => pattern == crate::hook::FS_CHANGED_SUBJECT,
        (Capability::Node { .. }, Access::ClusterRead) => true,
        (Capability::Node { node_id, .. }, Access::NodeAddress(id) | Access::NodeKey(id)) => *node_id == id,
        (Capability::Node { node_id, promote }, Access::Promote(id)) => *promote && *node_id == id,
        _ => false,
    })
}

/// The uid and gid every file-system request of a holder of `capabilities` runs as, when its token fixes them
/// (`None`: the requests name their caller; an admin's, or an `fs` capability without `as_ids`).
pub fn fs_ids(capabilities: &[Capability]) -> Option<(u32, u32)> {
    let trusted = capabilities
        .iter()
        .any(|capability| matches!(capability, Capability::All | Capability::Fs { as_ids: None, .. }));
    if trusted {
        return None;
    }
    capabilities.iter().find_map(|capability| match capability {
        Capability::Fs { as_ids, .. } => *as_ids,
        _ => None,
    })
}

/// What a token holder asks about tokens. Every variant needs [`Access::TokenAdmin`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenRequest {
    /// Mints a token. The serving node draws the secret; the log carries only its hash.
    Create {
        name: String,
        capabilities: Vec<Capability>,
        /// Lifetime from creation; `None`: the default ([`crate::limits::TOKEN_TTL_MS_DEFAULT`], or
        /// [`crate::limits::JOIN_TOKEN_TTL_MS_DEFAULT`] for a join token); `Some(0)`: never expires.
        ttl_ms: Option<u64>,
        /// Makes it a join token (its capabilities must then be exactly [`Capability::ClusterJoin`]).
        join: Option<JoinSpec>,
    },
    Get {
        accessor: Bytes,
    },
    /// One page of tokens in accessor order, strictly after `after`.
    List {
        after: Option<Bytes>,
    },
    Revoke {
        accessor: Bytes,
    },
    /// Replaces the member secret (the root of the plugins' signing keys) with a fresh one the serving node draws.
    /// Members switch as they apply it; a removed member's copy of the old one signs nothing the cluster still signs.
    RotateMemberSecret,
}

/// How a join token may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSpec {
    pub uses: u32,
    pub voter: bool,
}

/// Answers to [`TokenRequest`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenResponse {
    /// The minted token, shown once.
    Created {
        info: TokenInfo,
        token: CapabilityToken,
    },
    Token(TokenInfo),
    Tokens {
        tokens: Vec<TokenInfo>,
        next: Option<Bytes>,
    },
    Revoked {
        existed: bool,
    },
    /// The member secret's new epoch (the secret itself never leaves the members).
    MemberSecretRotated {
        epoch: u64,
        rotated_ms: u64,
    },
}

impl TokenRequest {
    /// Checks sizes and shapes: a caller's mistake is answered before anything is proposed.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            TokenRequest::Create { name, capabilities, ttl_ms, join } => {
                validate_create(name, capabilities, *ttl_ms, join.as_ref())
            }
            TokenRequest::Get { accessor } | TokenRequest::Revoke { accessor } => validate_accessor(accessor),
            TokenRequest::List { after: Some(after) } => validate_accessor(after),
            TokenRequest::List { after: None } | TokenRequest::RotateMemberSecret => Ok(()),
        }
    }
}

pub fn validate_accessor(accessor: &[u8]) -> Result<(), WireError> {
    if accessor.len() != ACCESSOR_BYTES {
        return Err(WireError::invalid(format!(
            "an accessor id is {ACCESSOR_BYTES} bytes ({} hex digits)",
            2 * ACCESSOR_BYTES
        )));
    }
    Ok(())
}

fn validate_create(
    name: &str,
    capabilities: &[Capability],
    ttl_ms: Option<u64>,
    join: Option<&JoinSpec>,
) -> Result<(), WireError> {
    validate_scope(name, capabilities, join)?;
    if ttl_ms.is_some_and(|ttl| ttl > TOKEN_TTL_MS_MAX) {
        return Err(WireError::invalid(format!(
            "a token lives at most {} days (or pass 0 for no expiry)",
            TOKEN_TTL_MS_MAX / 86_400_000
        )));
    }
    if join.is_some() && ttl_ms == Some(0) {
        return Err(WireError::invalid("a join token always expires"));
    }
    Ok(())
}

/// The checks of a token's name, capabilities and join spec (the request's and the log command's).
pub(crate) fn validate_scope(
    name: &str,
    capabilities: &[Capability],
    join: Option<&JoinSpec>,
) -> Result<(), WireError> {
    if name.len() > TOKEN_NAME_BYTES_MAX {
        return Err(WireError::new(
            crate::error::ErrorCode::TooLarge,
            format!("a token name has at most {TOKEN_NAME_BYTES_MAX} bytes"),
        ));
    }
    if capabilities.is_empty() {
        return Err(WireError::invalid("a token needs at least one capability"));
    }
    if capabilities.len() > TOKEN_CAPABILITIES_COUNT_MAX {
        return Err(WireError::new(
            crate::error::ErrorCode::TooLarge,
            format!("a token has at most {TOKEN_CAPABILITIES_COUNT_MAX} capabilities"),
        ));
    }
    for capability in capabilities {
        match capability {
            Capability::KvRead { prefix } | Capability::KvWrite { prefix } if prefix.len() > KEY_SIZE_BYTES_MAX => {
                return Err(WireError::new(
                    crate::error::ErrorCode::TooLarge,
                    format!("a prefix has at most {KEY_SIZE_BYTES_MAX} bytes"),
                ));
            }
            Capability::PluginCall { plugin: Some(plugin) } => crate::plugin::validate_name(plugin)?,
            Capability::Node { .. } => {
                return Err(WireError::invalid("the node capability belongs to members' keys, not to tokens"));
            }
            _ => {}
        }
    }
    match join {
        Some(spec) => {
            if capabilities != [Capability::ClusterJoin] {
                return Err(WireError::invalid("a join token carries the join capability and nothing else"));
            }
            if spec.uses == 0 || spec.uses > JOIN_TOKEN_USES_MAX {
                return Err(WireError::invalid(format!("a join token has 1 to {JOIN_TOKEN_USES_MAX} uses")));
            }
        }
        None if capabilities.contains(&Capability::ClusterJoin) => {
            return Err(WireError::invalid(
                "the join capability comes only with a join token (`pando cluster join-token create`)",
            ));
        }
        None => {}
    }
    Ok(())
}

/// Lowercase hex, for accessor ids shown to people.
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Parses an accessor id from its hex form.
pub fn parse_accessor(text: &str) -> Result<Bytes, WireError> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.trim().as_bytes())
        .map_err(|_| WireError::invalid(format!("`{text}` is not a hex accessor id")))?;
    validate_accessor(&bytes)?;
    Ok(Bytes::from(bytes))
}
