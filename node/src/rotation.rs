//! Rotating a node's key without taking the cluster down. `pando-node --data-dir D --rotate-key` writes a new key
//! beside the current one (`node.key.next`) and exits; the running node notices it within a second (or finds it on
//! its next start), asks the cluster to register it (over its current key, with the new key's signature as proof),
//! and once the membership holds the new key, stops, makes the new key its own and restarts itself in place (same
//! process id, same arguments). The rest of the cluster serves throughout; the old key is refused everywhere from the
//! commit on.
//!
//! Crash safety: the pending key is on disk before it is registered, and becomes `node.key` only after the cluster
//! has it. A node that crashes in between starts again with its old key, asks again, and if the old key was already
//! replaced, finds its new key in the membership (asking as the new key) and finishes.

use std::path::PathBuf;
use std::time::Duration;

use iroh::SecretKey;
use pando_actors::raft::RaftHandle;
use pando_actors::services::cluster::register_node_key;
use pando_client::ClientError;
use pando_protocol::cluster::{ClusterRequest, ClusterResponse, hex, node_key_rotation_message};
use pando_protocol::error::ErrorCode;
use pando_protocol::kv::Bytes;

use crate::identity;
use crate::membership::{ClusterIdentity, ask_as, members};

/// How often the node looks for a pending key, and retries registering one.
pub const KEY_ROTATION_POLL_MS: u64 = 1_000;

/// Runs for the node's life; returns once a pending key is registered with the cluster (the node then restarts with
/// it). A refusal that asking again cannot change (another member has the key, the node is no member) ends the attempts
/// until the node restarts, with an error saying so; anything else is retried every [`KEY_ROTATION_POLL_MS`], each
/// distinct problem logged once.
pub async fn register_pending(data_dir: PathBuf, identity: ClusterIdentity, raft: RaftHandle) {
    let mut last_problem = String::new();
    let mut report = |problem: String| {
        if problem != last_problem {
            tracing::warn!(%problem, "the new node key is not registered yet; retrying");
            last_problem = problem;
        }
    };
    loop {
        match identity::pending_key(&data_dir) {
            Ok(Some(next)) => match register(&identity, &raft, next).await {
                Ok(()) => return,
                Err(ClientError::Wire(wire))
                    if matches!(wire.code, ErrorCode::Conflict | ErrorCode::NotFound | ErrorCode::InvalidArgument) =>
                {
                    tracing::error!(
                        error = %wire,
                        "the cluster refused this node's new key; the rotation stops until the node restarts \
                         (remove node.key.next from the data directory to give it up)"
                    );
                    std::future::pending::<()>().await;
                }
                Err(error) => report(error.to_string()),
            },
            Ok(None) => {}
            Err(error) => report(format!("{error:#}")),
        }
        tokio::time::sleep(Duration::from_millis(KEY_ROTATION_POLL_MS)).await;
    }
}

/// Asks the cluster to register `next` as this node's key; `Ok` once the membership holds it.
async fn register(identity: &ClusterIdentity, raft: &RaftHandle, next: [u8; 32]) -> Result<(), ClientError> {
    let next = SecretKey::from_bytes(&next);
    let public_key = next.public();
    let message = node_key_rotation_message(&identity.cluster_id, identity.node_id, public_key.as_bytes());
    let (registered, proof) =
        (Bytes::from(public_key.as_bytes().to_vec()), Bytes::from(next.sign(&message).to_bytes().to_vec()));
    // A leader registers its own key in-process (its own key cannot call itself); anyone else asks the leader.
    match register_node_key(raft, &identity.cluster_id, identity.node_id, registered.clone(), proof.clone()).await {
        Ok(_) => return Ok(()),
        Err(error) if error.code == ErrorCode::NotLeader || error.code == ErrorCode::Unavailable => {}
        Err(error) => return Err(ClientError::Wire(error)),
    }
    let current = members(raft);
    let request = ClusterRequest::RotateNodeKey { node_id: identity.node_id, public_key: registered, proof };
    match ask_as(identity, &current, request, identity.node_key).await {
        Ok(_) => Ok(()),
        // The old key no longer authenticates: the change may have committed before this node switched (it crashed
        // in between). Asking as the new key tells.
        Err(ClientError::Wire(wire)) if wire.code == ErrorCode::Unauthorized => {
            match ask_as(identity, &current, ClusterRequest::Status, next.to_bytes()).await? {
                ClusterResponse::Status(status)
                    if status.members.iter().any(|member| {
                        member.node_id == identity.node_id && member.public_key == hex(public_key.as_bytes())
                    }) =>
                {
                    Ok(())
                }
                _ => Err(ClientError::Wire(wire)),
            }
        }
        Err(error) => Err(error),
    }
}
