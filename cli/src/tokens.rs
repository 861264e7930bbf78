//! Typed token calls: mint, list, show and revoke tokens, and mint join tickets. A minted token comes back inside a
//! ticket for the same nodes, ready to hand to whoever will use it.

use pando_protocol::envelope::{Request, Response};
use pando_protocol::kv::Bytes;
use pando_protocol::ticket::Ticket;
use pando_protocol::token::{Capability, CapabilityToken, JoinSpec, TokenInfo, TokenRequest, TokenResponse};

use crate::client::{Client, unexpected};
use crate::error::ClientError;

/// A token as minted: what the cluster recorded, and a ticket carrying the token (its secret is shown only here).
#[derive(Clone, Debug)]
pub struct MintedToken {
    pub info: TokenInfo,
    pub token: CapabilityToken,
    pub ticket: Ticket,
}

/// One page of `pando token list`.
#[derive(Clone, Debug)]
pub struct TokenPage {
    pub tokens: Vec<TokenInfo>,
    /// Pass as `after` for the next page.
    pub next: Option<Bytes>,
}

/// A rotation of the member secret: its new epoch, and the log time it took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberSecretRotation {
    pub epoch: u64,
    pub rotated_ms: u64,
}

impl Client {
    async fn token_request(&self, request: TokenRequest) -> Result<TokenResponse, ClientError> {
        match self.request(Request::Token(request)).await? {
            Response::Token(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// Mints a token with `capabilities` (`ttl_ms`: `None` the default, `Some(0)` never expires).
    pub async fn create_token(
        &self,
        name: &str,
        capabilities: Vec<Capability>,
        ttl_ms: Option<u64>,
    ) -> Result<MintedToken, ClientError> {
        self.mint(TokenRequest::Create { name: name.to_string(), capabilities, ttl_ms, join: None }).await
    }

    /// Mints a join token: `uses` joins, learners unless `voter`, within `ttl_ms` (`None`: an hour).
    pub async fn create_join_token(
        &self,
        name: &str,
        uses: u32,
        voter: bool,
        ttl_ms: Option<u64>,
    ) -> Result<MintedToken, ClientError> {
        let join = Some(JoinSpec { uses, voter });
        self.mint(TokenRequest::Create {
            name: name.to_string(),
            capabilities: vec![Capability::ClusterJoin],
            ttl_ms,
            join,
        })
        .await
    }

    async fn mint(&self, request: TokenRequest) -> Result<MintedToken, ClientError> {
        match self.token_request(request).await? {
            TokenResponse::Created { info, token } => {
                let ticket = Ticket { token: Some(token.clone()), ..self.ticket().clone() };
                Ok(MintedToken { info, token, ticket })
            }
            other => Err(unexpected(&other)),
        }
    }

    pub async fn list_tokens(&self, after: Option<Bytes>) -> Result<TokenPage, ClientError> {
        match self.token_request(TokenRequest::List { after }).await? {
            TokenResponse::Tokens { tokens, next } => Ok(TokenPage { tokens, next }),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn token_info(&self, accessor: Bytes) -> Result<TokenInfo, ClientError> {
        match self.token_request(TokenRequest::Get { accessor }).await? {
            TokenResponse::Token(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// Revokes a token, answering whether it existed.
    pub async fn revoke_token(&self, accessor: Bytes) -> Result<bool, ClientError> {
        match self.token_request(TokenRequest::Revoke { accessor }).await? {
            TokenResponse::Revoked { existed } => Ok(existed),
            other => Err(unexpected(&other)),
        }
    }

    /// Replaces the member secret with a fresh one the serving node draws (needs the token capability).
    pub async fn rotate_member_secret(&self) -> Result<MemberSecretRotation, ClientError> {
        match self.token_request(TokenRequest::RotateMemberSecret).await? {
            TokenResponse::MemberSecretRotated { epoch, rotated_ms } => Ok(MemberSecretRotation { epoch, rotated_ms }),
            other => Err(unexpected(&other)),
        }
    }
}
