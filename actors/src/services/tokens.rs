//! The token service: mints tokens (this node draws the secret; the log carries only its hash), lists and revokes
//! them through the log, spends join tokens on admissions, and authenticates callers against the token records this
//! node applied.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::Bytes;
use pando_protocol::limits::{JOIN_TOKEN_TTL_MS_DEFAULT, TOKEN_PROPAGATION_WAIT_MS, TOKEN_TTL_MS_DEFAULT};
use pando_protocol::token::records::{MEMBER_SECRET_BYTES, Refused, SecretBytes, TokenCommand, TokenOutput};
use pando_protocol::token::{
    ACCESSOR_BYTES, Capability, CapabilityToken, JoinSpec, SECRET_BYTES, TokenInfo, TokenRequest, TokenResponse,
};

use super::kv::unexpected;
use crate::mesh::Proposer;
use crate::raft::RaftHandle;
use crate::storage_actor::StorageHandle;

/// How long a local read of the token records may wait for storage to open.
const TOKEN_READ_WAIT_MS: u64 = 1_000;
/// Unknown tokens this node catches up for at once (see [`TokenService::authenticate`]); more are answered `BUSY` at
/// once, so a flood of made-up tokens costs the node at most this many read-index rounds in flight (the leader shares
/// one round among the reads waiting at once).
pub const TOKEN_PROPAGATION_WAITERS_MAX: usize = 64;

#[derive(Clone)]
pub struct TokenService {
    raft: RaftHandle,
    storage: StorageHandle,
    /// Catches this node up with the cluster before it calls a token unknown.
    proposer: Proposer,
    randomness: TokenRandomness,
    propagation_waiters: Arc<Semaphore>,
}

/// A token as minted: its record's public part and the token itself (shown once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Minted {
    pub info: TokenInfo,
    pub token: CapabilityToken,
}

/// Where a node draws token secrets from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRandomness {
    /// The operating system's: every real node.
    Os,
    /// The thread's seeded generator ([`crate::raft::runtime::seed_thread_rng`]): the simulator, so a run stays a
    /// function of its seed. Never for a real node: its tokens would be guessable.
    Seeded,
}

/// A fresh token from the operating system's randomness.
pub fn fresh_token() -> CapabilityToken {
    fresh_token_from(TokenRandomness::Os)
}

fn fresh_token_from(randomness: TokenRandomness) -> CapabilityToken {
    let mut random = [0u8; ACCESSOR_BYTES + SECRET_BYTES];
    fill_random(randomness, &mut random);
    CapabilityToken::from_random(random)
}

fn fill_random(randomness: TokenRandomness, bytes: &mut [u8]) {
    match randomness {
        TokenRandomness::Os => rand::fill(bytes),
        TokenRandomness::Seeded => rand_core_06::RngCore::fill_bytes(&mut crate::raft::runtime::ThreadRng, bytes),
    }
}

/// The log command that records `token` (the lifetime as a request gives it: `None` the default, `Some(0)` never).
pub fn create_command(
    token: &CapabilityToken,
    name: String,
    capabilities: Vec<Capability>,
    ttl_ms: Option<u64>,
    join: Option<JoinSpec>,
) -> TokenCommand {
    let default = if join.is_some() { JOIN_TOKEN_TTL_MS_DEFAULT } else { TOKEN_TTL_MS_DEFAULT };
    TokenCommand::Create {
        accessor: token.accessor.clone(),
        secret_hash: Bytes::from(token.secret_hash().to_vec()),
        name,
        capabilities,
        ttl_ms: match ttl_ms {
            None => Some(default),
            Some(0) => None,
            Some(ttl_ms) => Some(ttl_ms),
        },
        join,
    }
}

impl TokenService {
    pub fn new(
        raft: RaftHandle,
        storage: StorageHandle,
        proposer: Proposer,
        randomness: TokenRandomness,
    ) -> TokenService {
        let propagation_waiters = Arc::new(Semaphore::new(TOKEN_PROPAGATION_WAITERS_MAX));
        TokenService { raft, storage, proposer, randomness, propagation_waiters }
    }

    /// Serves one token request (its caller holds [`pando_protocol::token::Access::TokenAdmin`]).
    pub async fn execute(&self, request: TokenRequest, timeout: Duration) -> Result<TokenResponse, WireError> {
        request.validate()?;
        match request {
            TokenRequest::Create { name, capabilities, ttl_ms, join } => {
                let Minted { info, token } = self.mint(name, capabilities, ttl_ms, join, timeout).await?;
                Ok(TokenResponse::Created { info, token })
            }
            TokenRequest::Get { accessor } => {
                self.raft.linearize(timeout).await?;
                let wanted = accessor.clone();
                match self.storage.read(timeout, move |reader| reader.token(&wanted)).await? {
                    Some(info) => Ok(TokenResponse::Token(info)),
                    None => Err(not_found(&accessor)),
                }
            }
            TokenRequest::List { after } => {
                self.raft.linearize(timeout).await?;
                let (tokens, next) = self
                    .storage
                    .read(timeout, move |reader| reader.tokens(after.as_ref().map(|after| after.as_slice())))
                    .await?;
                Ok(TokenResponse::Tokens { tokens, next })
            }
            TokenRequest::Revoke { accessor } => {
                match self.propose(TokenCommand::Revoke { accessor }, timeout).await? {
                    TokenOutput::Revoked { existed } => Ok(TokenResponse::Revoked { existed }),
                    other => Err(unexpected("token revocation", &other)),
                }
            }
            TokenRequest::RotateMemberSecret => {
                let mut secret = [0u8; MEMBER_SECRET_BYTES];
                fill_random(self.randomness, &mut secret);
                let command = TokenCommand::RotateMemberSecret { secret: SecretBytes(Bytes::from(secret.to_vec())) };
                match self.propose(command, timeout).await? {
                    TokenOutput::MemberSecretRotated { epoch, rotated_ms } => {
                        tracing::info!(epoch, "member secret rotated");
                        Ok(TokenResponse::MemberSecretRotated { epoch, rotated_ms })
                    }
                    other => Err(unexpected("member secret rotation", &other)),
                }
            }
        }
    }

    /// Mints a token on the leader: draws its secret here and records its hash through the log.
    pub async fn mint(
        &self,
        name: String,
        capabilities: Vec<Capability>,
        ttl_ms: Option<u64>,
        join: Option<JoinSpec>,
        timeout: Duration,
    ) -> Result<Minted, WireError> {
        let token = fresh_token_from(self.randomness);
        match self.propose(create_command(&token, name, capabilities, ttl_ms, join), timeout).await? {
            TokenOutput::Created(info) => Ok(Minted { info, token }),
            other => Err(unexpected("token mint", &other)),
        }
    }

    /// Spends one use of join token `accessor` on admitting `node_id`, answering whether the node may promote
    /// itself. Run on the leader, before the membership change.
    pub async fn admit(&self, accessor: Bytes, node_id: u64, timeout: Duration) -> Result<bool, WireError> {
        match self.propose(TokenCommand::Admit { accessor, node_id }, timeout).await? {
            TokenOutput::Admitted { voter } => Ok(voter),
            other => Err(unexpected("admission", &other)),
        }
    }

    /// Forgets what was granted to removed node `node_id`.
    pub async fn forget_node(&self, node_id: u64, timeout: Duration) -> Result<(), WireError> {
        self.propose(TokenCommand::ForgetNode { node_id }, timeout).await.map(|_| ())
    }

    /// Proposes on this node's Raft: a follower answers `NOT_LEADER` and the client goes to the leader. Token commands
    /// are never forwarded over the actor mesh, so a member's key and the member secret (what a stolen node disk holds)
    /// cannot mint a token.
    async fn propose(&self, command: TokenCommand, timeout: Duration) -> Result<TokenOutput, WireError> {
        match self.raft.propose(Command::Token(command), timeout).await? {
            CommandOutput::Token(output) => Ok(output),
            other => Err(unexpected("token command", &other)),
        }
    }

    /// Checks `token` against the records this node applied, at `now_ms` by its clock. A token this node does not
    /// know may have been minted elsewhere a moment ago, or this node may lag (a joiner catching up, a member back
    /// from a partition): before it calls the token unknown, it catches up with the cluster (a read-index round,
    /// through the leader when it does not lead), so a token whose minting was acknowledged anywhere before the call
    /// is known here. When it cannot catch up within [`TOKEN_PROPAGATION_WAIT_MS`] (no leader it can reach), it
    /// cannot tell, and answers `UNAVAILABLE` (streams move to another member by themselves; a unary caller is told to),
    /// never `UNAUTHORIZED` for a token that may be valid (simulator seed 339: a lagging member refused the admin's
    /// token to an observer). At most [`TOKEN_PROPAGATION_WAITERS_MAX`] callers catch up at once; more are answered
    /// `BUSY` at once. `wait_if_unknown` is false for a token the caller knows this node accepted before (gone now:
    /// revoked).
    pub async fn authenticate(
        &self,
        token: &CapabilityToken,
        now_ms: u64,
        wait_if_unknown: bool,
    ) -> Result<TokenInfo, WireError> {
        let wait = Duration::from_millis(TOKEN_READ_WAIT_MS);
        // A leader that has not applied an entry of its own term may not have applied a revocation its predecessor
        // committed (and acknowledged): it checks once it has.
        self.raft.settled_as_leader(wait).await;
        let checked = {
            let token = token.clone();
            self.storage.read(wait, move |reader| reader.authenticate(&token, now_ms)).await?
        };
        let checked = match checked {
            Err(Refused::Unknown) if wait_if_unknown => {
                let Ok(_waiting) = self.propagation_waiters.try_acquire() else {
                    return Err(WireError::new(
                        ErrorCode::Busy,
                        "this member does not know the token and is checking too many unknown tokens already; try \
                         again or another member",
                    ));
                };
                let within = Duration::from_millis(TOKEN_PROPAGATION_WAIT_MS);
                tracing::debug!(accessor = %token.accessor_hex(), "a token this node does not know: catching up");
                if let Err(error) = self.proposer.linearize_anywhere(within).await {
                    tracing::debug!(accessor = %token.accessor_hex(), %error, "could not catch up to check a token");
                    return Err(WireError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "this member does not know the token and could not catch up with the cluster to tell \
                             whether it is valid ({error}); try another member"
                        ),
                    ));
                }
                let token = token.clone();
                self.storage.read(wait, move |reader| reader.authenticate(&token, now_ms)).await?
            }
            other => other,
        };
        checked.map_err(WireError::from)
    }

    /// Moves whenever this node applies an entry that takes a grant away; read it before a check, and check again
    /// once it moved.
    pub fn grants_epoch(&self) -> u64 {
        self.storage.grants_epoch()
    }

    /// Whether member `node_id` may promote itself, as this node applied it.
    pub fn node_may_promote(&self, node_id: u64) -> Result<bool, WireError> {
        let reader = self.storage.reader()?;
        reader.node_may_promote(node_id).map_err(|fault| WireError::internal(fault.to_string()))
    }
}

fn not_found(accessor: &[u8]) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("no token {}", pando_protocol::token::hex(accessor)))
}
