//! Capability tokens: claims signed by the cluster key, presented by clients with every request.
//!
//! The signed message is a domain-separation context followed by the claims' exact bytes, so a signature made for a
//! token can never be replayed as a signature over anything else, and re-encoding never changes what was signed.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::kv::Bytes;
use crate::limits::{TOKEN_CAPABILITIES_COUNT_MAX, TOKEN_SUBJECT_BYTES_MAX};

/// Prefix of every signed token message.
pub const TOKEN_SIGNING_CONTEXT: &[u8] = b"pando/capability-token/v1\0";

/// What a token lets its holder do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capability {
    /// Everything, including cluster administration.
    All,
    /// Read keys starting with `prefix`.
    KvRead { prefix: Bytes },
    /// Read and write keys starting with `prefix`.
    KvWrite { prefix: Bytes },
    /// Read cluster status.
    ClusterRead,
    /// Join the cluster as a new node (what a join ticket carries).
    ClusterJoin,
    /// Read blobs by hash.
    BlobRead,
    /// Add, read, protect and delete blobs.
    BlobWrite,
    /// Call plugins: the one named, or any (`None`). Installing and managing plugins needs [`Capability::All`].
    PluginCall { plugin: Option<String> },
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The cluster this token is for.
    pub cluster_id: Bytes,
    /// Who holds it (free text for audit logs).
    pub subject: String,
    pub capabilities: Vec<Capability>,
    pub issued_at_ms: u64,
    /// `None`: does not expire.
    pub expires_at_ms: Option<u64>,
}

/// A token as it travels: encoded claims and the signature over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityToken {
    pub claims: Bytes,
    pub signature: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token signature does not verify against the cluster key")]
    BadSignature,
    #[error("token claims cannot be decoded: {0}")]
    Malformed(String),
    #[error("token is for another cluster")]
    WrongCluster,
    #[error("token expired at {expires_at_ms} ms")]
    Expired { expires_at_ms: u64 },
    #[error("token claims exceed limits: {0}")]
    TooLarge(&'static str),
}

impl CapabilityToken {
    /// Signs `claims` with the cluster key.
    pub fn sign(claims: &TokenClaims, cluster_key: &SigningKey) -> CapabilityToken {
        // Claims are plain data: encoding cannot fail.
        let encoded = rmp_serde::to_vec_named(claims).expect("token claims always encode");
        let signature = cluster_key.sign(&signed_message(&encoded));
        CapabilityToken { claims: Bytes::from(encoded), signature: Bytes::from(signature.to_bytes().to_vec()) }
    }

    /// Checks the signature, the cluster and the expiry, and returns the claims.
    pub fn verify(
        &self,
        cluster_key: &VerifyingKey,
        cluster_id: &[u8],
        now_ms: u64,
    ) -> Result<TokenClaims, TokenError> {
        let signature = Signature::from_slice(&self.signature).map_err(|_| TokenError::BadSignature)?;
        cluster_key.verify(&signed_message(&self.claims), &signature).map_err(|_| TokenError::BadSignature)?;
        let claims: TokenClaims =
            rmp_serde::from_slice(&self.claims).map_err(|error| TokenError::Malformed(error.to_string()))?;
        if claims.cluster_id.as_slice() != cluster_id {
            return Err(TokenError::WrongCluster);
        }
        if claims.subject.len() > TOKEN_SUBJECT_BYTES_MAX {
            return Err(TokenError::TooLarge("subject"));
        }
        if claims.capabilities.len() > TOKEN_CAPABILITIES_COUNT_MAX {
            return Err(TokenError::TooLarge("capabilities"));
        }
        if let Some(expires_at_ms) = claims.expires_at_ms
            && now_ms >= expires_at_ms
        {
            return Err(TokenError::Expired { expires_at_ms });
        }
        Ok(claims)
    }
}

fn signed_message(claims: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(TOKEN_SIGNING_CONTEXT.len() + claims.len());
    message.extend_from_slice(TOKEN_SIGNING_CONTEXT);
    message.extend_from_slice(claims);
    message
}

impl TokenClaims {
    /// Whether any capability grants `access`.
    pub fn allows(&self, access: Access<'_>) -> bool {
        self.capabilities.iter().any(|capability| match (capability, access) {
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
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claims(capabilities: Vec<Capability>) -> TokenClaims {
        TokenClaims {
            cluster_id: Bytes::from(vec![7; 16]),
            subject: "test".into(),
            capabilities,
            issued_at_ms: 1,
            expires_at_ms: Some(1_000),
        }
    }

    #[test]
    fn verifies_with_the_right_key_only() {
        let token = CapabilityToken::sign(&claims(vec![Capability::All]), &key(1));
        assert!(token.verify(&key(1).verifying_key(), &[7; 16], 10).is_ok());
        assert_eq!(token.verify(&key(2).verifying_key(), &[7; 16], 10), Err(TokenError::BadSignature));
        assert_eq!(token.verify(&key(1).verifying_key(), &[8; 16], 10), Err(TokenError::WrongCluster));
        assert_eq!(
            token.verify(&key(1).verifying_key(), &[7; 16], 1_000),
            Err(TokenError::Expired { expires_at_ms: 1_000 })
        );
    }

    #[test]
    fn tampered_claims_do_not_verify() {
        let mut token =
            CapabilityToken::sign(&claims(vec![Capability::KvRead { prefix: Bytes::from(b"a/".to_vec()) }]), &key(1));
        let mut forged = claims(vec![Capability::All]);
        forged.subject = "test".into();
        token.claims = Bytes::from(rmp_serde::to_vec_named(&forged).unwrap());
        assert_eq!(token.verify(&key(1).verifying_key(), &[7; 16], 10), Err(TokenError::BadSignature));
    }

    #[test]
    fn capabilities_are_checked_by_prefix() {
        let read_only = claims(vec![Capability::KvRead { prefix: Bytes::from(b"app/".to_vec()) }]);
        assert!(read_only.allows(Access::KvRead(b"app/x")));
        assert!(!read_only.allows(Access::KvRead(b"other")));
        assert!(!read_only.allows(Access::KvWrite(b"app/x")));
        assert!(!read_only.allows(Access::ClusterRead));
        let writer = claims(vec![Capability::KvWrite { prefix: Bytes::from(b"app/".to_vec()) }]);
        assert!(writer.allows(Access::KvWrite(b"app/x")));
        assert!(writer.allows(Access::KvRead(b"app/x")));
    }
}
