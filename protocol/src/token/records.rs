//! Token records in the replicated state: minting, revoking and spending join tokens as log commands, and the reads
//! every node authenticates with.
//!
//! Rows (coordination table): `A/<accessor>` holds a [`TokenRecord`]; `An/<node id, 8 bytes big-endian>` holds
//! whether the join token that admitted that node lets it promote itself; `Am` holds the member secret of the latest
//! rotation ([`MemberSecretRecord`]; absent until the first, when every member uses the secret it was founded or
//! joined with). Expiry is judged by log time here and by the
//! node's clock when authenticating, so a token is refused from the moment either says it expired.
//!
//! Invariants: a record is written only by [`TokenCommand::Create`], never overwritten with another secret hash
//! (creating an existing accessor with a different record is a conflict); a join token's uses only go down; a
//! revoked accessor has no row, so it authenticates nowhere once the revocation applied.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::{Capability, CapabilityToken, JoinGrant, JoinSpec, TokenInfo};
use crate::coord::{CoordRead, CoordWrite, keys::with};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::limits::{TOKEN_LIST_COUNT_MAX, TOKEN_TTL_MS_MAX, TOKENS_COUNT_MAX};
use crate::state_machine::StorageFault;

const RECORD: &[u8] = b"A/";
const NODE: &[u8] = b"An/";
const MEMBER_SECRET: &[u8] = b"Am";

/// Bytes of a member secret.
pub const MEMBER_SECRET_BYTES: usize = 32;

/// A secret carried through the log: serialised as bytes, never printed (`Debug` shows only its length), so a traced
/// command or record cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(pub Bytes);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes, redacted)", self.0.len())
    }
}

/// The member secret of the latest rotation: what members derive the plugins' signing keys from from the moment
/// they apply it. Epoch 0 is the secret the cluster was founded with (kept in each member's `cluster.key`, never in
/// the log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSecretRecord {
    pub epoch: u64,
    pub secret: SecretBytes,
    /// Log time of the rotation.
    pub rotated_ms: u64,
}

impl MemberSecretRecord {
    /// The secret as a key (applying the rotation checked its size; a record of another size is a damaged store).
    pub fn key(&self) -> Result<[u8; MEMBER_SECRET_BYTES], StorageFault> {
        self.secret.0.as_slice().try_into().map_err(|_| StorageFault("member secret record is not 32 bytes".into()))
    }
}

/// What the state keeps per token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub info: TokenInfo,
    /// [`CapabilityToken::secret_hash`] of its secret.
    pub secret_hash: Bytes,
}

/// Token changes, as log commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenCommand {
    /// Records a token minted by the proposing node (which drew the secret and sends only its hash). Its creation
    /// and expiry times come from the log's clock.
    Create {
        accessor: Bytes,
        secret_hash: Bytes,
        name: String,
        capabilities: Vec<Capability>,
        /// Lifetime from the log time of this entry; `None`: never expires.
        ttl_ms: Option<u64>,
        join: Option<JoinSpec>,
    },
    Revoke {
        accessor: Bytes,
    },
    /// Spends one use of join token `accessor` on admitting `node_id` (refused when the token is unknown, expired or
    /// spent). The same node admitted again spends nothing.
    Admit {
        accessor: Bytes,
        node_id: u64,
    },
    /// Forgets what was granted to a removed node.
    ForgetNode {
        node_id: u64,
    },
    /// Replaces the member secret with one the proposing node drew: the next epoch. Members that apply it sign for
    /// plugins with keys derived from it; a node removed before it never learns it.
    RotateMemberSecret {
        secret: SecretBytes,
    },
}

/// Results of [`TokenCommand`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenOutput {
    Created(TokenInfo),
    Revoked {
        existed: bool,
    },
    /// The node may promote itself when `voter`.
    Admitted {
        voter: bool,
    },
    Forgotten,
    MemberSecretRotated {
        epoch: u64,
        rotated_ms: u64,
    },
}

fn record_key(accessor: &[u8]) -> Vec<u8> {
    with(RECORD, accessor)
}

fn node_key(node_id: u64) -> Vec<u8> {
    with(NODE, &node_id.to_be_bytes())
}

/// The record of `accessor`, if any.
pub fn record(store: &impl CoordRead, accessor: &[u8]) -> Result<Option<TokenRecord>, StorageFault> {
    crate::coord::load(store, &record_key(accessor))
}

/// The member secret of the latest rotation (`None`: never rotated, the founding secret holds).
pub fn member_secret(store: &impl CoordRead) -> Result<Option<MemberSecretRecord>, StorageFault> {
    crate::coord::load(store, MEMBER_SECRET)
}

/// Whether the join token that admitted `node_id` lets it promote itself.
pub fn node_may_promote(store: &impl CoordRead, node_id: u64) -> Result<bool, StorageFault> {
    Ok(crate::coord::load::<bool>(store, &node_key(node_id))?.unwrap_or(false))
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("malformed token: an accessor of 16 bytes and a secret of 32")]
    Malformed,
    #[error("unknown or revoked token")]
    Unknown,
    #[error("token secret does not match")]
    WrongSecret,
    #[error("token expired")]
    Expired,
}

impl From<Refused> for WireError {
    fn from(refused: Refused) -> WireError {
        WireError::new(ErrorCode::Unauthorized, refused.to_string())
    }
}

/// Checks `token` against the state at `now_ms`, answering what it is allowed.
pub fn authenticate(
    store: &impl CoordRead,
    token: &CapabilityToken,
    now_ms: u64,
) -> Result<Result<TokenInfo, Refused>, StorageFault> {
    if !token.is_well_formed() {
        return Ok(Err(Refused::Malformed));
    }
    let Some(found) = record(store, &token.accessor)? else {
        return Ok(Err(Refused::Unknown));
    };
    // blake3's Hash compares in constant time.
    let presented = blake3::Hash::from_bytes(token.secret_hash());
    let stored: [u8; 32] =
        found.secret_hash.as_slice().try_into().map_err(|_| StorageFault("token hash size".into()))?;
    if presented != blake3::Hash::from_bytes(stored) {
        return Ok(Err(Refused::WrongSecret));
    }
    if found.info.expired_at(now_ms) {
        return Ok(Err(Refused::Expired));
    }
    Ok(Ok(found.info))
}

/// One page of tokens in accessor order, strictly after `after`, and where the next page starts.
pub fn list(store: &impl CoordRead, after: Option<&[u8]>) -> Result<(Vec<TokenInfo>, Option<Bytes>), StorageFault> {
    let mut tokens = Vec::new();
    let mut more = false;
    visit_records(store, &mut |accessor, found| {
        if after.is_some_and(|after| accessor <= after) {
            return ControlFlow::Continue(());
        }
        if tokens.len() >= TOKEN_LIST_COUNT_MAX {
            more = true;
            return ControlFlow::Break(());
        }
        tokens.push(found.info);
        ControlFlow::Continue(())
    })?;
    let next = if more { tokens.last().map(|info: &TokenInfo| info.accessor.clone()) } else { None };
    Ok((tokens, next))
}

/// Visits every token record in accessor order, decoded, until `visit` breaks; a row that does not decode is a fault.
fn visit_records(
    store: &impl CoordRead,
    visit: &mut dyn FnMut(&[u8], TokenRecord) -> ControlFlow<()>,
) -> Result<(), StorageFault> {
    let mut fault = None;
    store.coord_scan(RECORD, &mut |key, bytes| match crate::coord::decode::<TokenRecord>(key, bytes) {
        Ok(found) => visit(&key[RECORD.len()..], found),
        Err(error) => {
            fault = Some(error);
            ControlFlow::Break(())
        }
    })?;
    fault.map_or(Ok(()), Err)
}

/// Applies a token command at log time `now`.
pub fn apply(
    store: &mut impl CoordWrite,
    now: u64,
    command: &TokenCommand,
) -> Result<Result<TokenOutput, WireError>, StorageFault> {
    match command {
        TokenCommand::Create { accessor, secret_hash, name, capabilities, ttl_ms, join } => {
            if let Err(error) = super::validate_scope(name, capabilities, join.as_ref())
                .and_then(|()| super::validate_accessor(accessor))
            {
                return Ok(Err(error));
            }
            if join.is_some() && ttl_ms.is_none() {
                return Ok(Err(WireError::invalid("a join token always expires")));
            }
            if ttl_ms.is_some_and(|ttl| ttl > TOKEN_TTL_MS_MAX) {
                return Ok(Err(WireError::invalid("token lifetime above the limit")));
            }
            if secret_hash.len() != 32 {
                return Ok(Err(WireError::invalid("a secret hash is 32 bytes")));
            }
            let info = TokenInfo {
                accessor: accessor.clone(),
                name: name.clone(),
                capabilities: capabilities.clone(),
                created_ms: now,
                expires_ms: ttl_ms.map(|ttl| now.saturating_add(ttl)),
                join: join.map(|spec| JoinGrant { uses_left: spec.uses, voter: spec.voter, admitted: Vec::new() }),
            };
            if let Some(existing) = record(store, accessor)? {
                // A retried proposal of the same token (same secret) is answered as it was first.
                if existing.secret_hash == *secret_hash {
                    return Ok(Ok(TokenOutput::Created(existing.info)));
                }
                return Ok(Err(WireError::new(ErrorCode::Conflict, "a token with this accessor exists")));
            }
            if count(store)? >= TOKENS_COUNT_MAX && purge_expired(store, now)? == 0 {
                return Ok(Err(WireError::too_large(format!(
                    "the cluster holds {TOKENS_COUNT_MAX} tokens; revoke some first"
                ))));
            }
            let saved = TokenRecord { info: info.clone(), secret_hash: secret_hash.clone() };
            crate::coord::save(store, &record_key(accessor), &saved)?;
            Ok(Ok(TokenOutput::Created(info)))
        }
        TokenCommand::Revoke { accessor } => {
            let existed = store.coord_delete(&record_key(accessor))?;
            if existed {
                store.emit(crate::coord::CoordEvent::TokenRevoked { accessor: accessor.clone() });
            }
            Ok(Ok(TokenOutput::Revoked { existed }))
        }
        TokenCommand::Admit { accessor, node_id } => {
            let refuse = |message: &str| Ok(Err(WireError::new(ErrorCode::Unauthorized, message)));
            let Some(mut found) = record(store, accessor)? else {
                return refuse("unknown or revoked join token");
            };
            if found.info.expired_at(now) {
                return refuse("join token expired");
            }
            let Some(grant) = found.info.join.as_mut() else {
                return refuse("not a join token");
            };
            let voter = grant.voter;
            if !grant.admitted.contains(node_id) {
                if grant.uses_left == 0 {
                    return refuse("join token already spent");
                }
                grant.uses_left -= 1;
                grant.admitted.push(*node_id);
                crate::coord::save(store, &record_key(accessor), &found)?;
            }
            crate::coord::save(store, &node_key(*node_id), &voter)?;
            Ok(Ok(TokenOutput::Admitted { voter }))
        }
        TokenCommand::ForgetNode { node_id } => {
            store.coord_delete(&node_key(*node_id))?;
            Ok(Ok(TokenOutput::Forgotten))
        }
        TokenCommand::RotateMemberSecret { secret } => {
            if secret.0.len() != MEMBER_SECRET_BYTES {
                return Ok(Err(WireError::invalid(format!("a member secret is {MEMBER_SECRET_BYTES} bytes"))));
            }
            let epoch = member_secret(store)?.map_or(0, |current| current.epoch) + 1;
            let record = MemberSecretRecord { epoch, secret: secret.clone(), rotated_ms: now };
            crate::coord::save(store, MEMBER_SECRET, &record)?;
            Ok(Ok(TokenOutput::MemberSecretRotated { epoch, rotated_ms: now }))
        }
    }
}

fn count(store: &impl CoordRead) -> Result<usize, StorageFault> {
    let mut count = 0;
    store.coord_scan(RECORD, &mut |_, _| {
        count += 1;
        ControlFlow::Continue(())
    })?;
    Ok(count)
}

/// Deletes every expired token, answering how many went.
fn purge_expired(store: &mut impl CoordWrite, now: u64) -> Result<usize, StorageFault> {
    let mut expired = Vec::new();
    visit_records(store, &mut |accessor, found| {
        if found.info.expired_at(now) {
            expired.push(record_key(accessor));
        }
        ControlFlow::Continue(())
    })?;
    for key in &expired {
        store.coord_delete(key)?;
    }
    Ok(expired.len())
}
