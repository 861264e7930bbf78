//! The repair worker: one task per node, woken by blob events on the commit stream and by a timer.
//!
//! Each round, this node (1) fetches every blob it is assigned and reports it held, and re-fetches any it should
//! hold but lost; (2) if it leads, tops up every blob whose live copies (holders and assignees the leader heard from
//! recently) fall short of its replica count, and releases holders that left the membership; (3) every few rounds,
//! asks the actor to sweep the tags of blobs it no longer keeps.

use std::collections::BTreeSet;
use std::time::Duration;

use pando_protocol::blob::{BlobCommand, BlobHash, BlobRecord};
use pando_protocol::command::Command;
use pando_protocol::coord::CoordEvent;
use ractor::ActorRef;
use tokio_util::sync::CancellationToken;

use super::{BlobMsg, BlobNode, SWEEP_EVERY_ROUNDS, TransferError, reader};
use crate::raft::propose_anywhere;
use crate::raft::transport::members;

/// A member the leader has not heard from for this long does not count as holding its copies.
pub const PEER_LIVE_WINDOW_MS: u64 = 3_000;
/// Blobs one round looks at, per pass (placement on this node, and the leader's pass over every blob).
pub const REPAIR_BLOBS_PER_ROUND_MAX: usize = 4_096;
/// Deadline of one bookkeeping proposal.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
const PAGE: usize = 256;

pub(super) async fn run(node: BlobNode, actor: ActorRef<BlobMsg>, stop: CancellationToken) {
    let mut round: u64 = 0;
    let mut events = None;
    loop {
        if events.is_none() {
            events = node.directory.stores().map(|stores| stores.state_machine.subscribe());
        }
        let wake = async {
            match events.as_mut() {
                Some(events) => loop {
                    match events.recv().await {
                        Ok(batch) if batch.iter().any(wakes_repair) => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            futures::future::pending::<()>().await;
                        }
                    }
                },
                None => futures::future::pending().await,
            }
        };
        let woken = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(node.config.repair_interval) => false,
            () = wake => true,
        };
        if events.as_ref().is_some_and(|events| events.is_closed()) {
            events = None;
        }
        round += 1;
        if let Err(error) = fetch_assigned(&node, &stop).await {
            tracing::debug!(%error, "blob repair: fetching assigned blobs");
        }
        if is_leader(&node)
            && let Err(error) = place(&node).await
        {
            tracing::debug!(%error, "blob repair: placing copies");
        }
        if woken || round.is_multiple_of(SWEEP_EVERY_ROUNDS) {
            let _ = actor.cast(BlobMsg::Sweep);
        }
    }
}

fn wakes_repair(event: &CoordEvent) -> bool {
    matches!(
        event,
        CoordEvent::BlobAssigned { .. }
            | CoordEvent::BlobHeld { .. }
            | CoordEvent::BlobReleased { .. }
            | CoordEvent::BlobCollected { .. }
    )
}

fn is_leader(node: &BlobNode) -> bool {
    node.directory.raft().is_some_and(|handles| handles.raft.metrics().borrow().current_leader == Some(node.node_id))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, pando_protocol::state_machine::StorageFault> + Send + 'static,
) -> Result<T, TransferError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| TransferError::Unavailable(error.to_string()))?
        .map_err(|fault| TransferError::Unavailable(fault.to_string()))
}

/// Fetches what this node is assigned (or holds but lost) and reports it held.
async fn fetch_assigned(node: &BlobNode, stop: &CancellationToken) -> Result<(), TransferError> {
    let reader = reader(node)?;
    let me = node.node_id;
    let mut after: Option<BlobHash> = None;
    let mut seen = 0;
    while seen < REPAIR_BLOBS_PER_ROUND_MAX && !stop.is_cancelled() {
        let page_reader = reader.clone();
        let page = blocking(move || page_reader.blobs_placed_on(me, after.as_ref(), PAGE)).await?;
        if page.is_empty() {
            break;
        }
        seen += page.len();
        after = page.last().copied();
        for hash in page {
            let record_reader = reader.clone();
            let Some(record) = blocking(move || record_reader.blob(&hash)).await? else { continue };
            if let Err(error) = repair_one(node, hash, &record).await {
                tracing::warn!(%hash, %error, "cannot get this node's copy of a blob");
            }
        }
    }
    Ok(())
}

async fn repair_one(node: &BlobNode, hash: BlobHash, record: &BlobRecord) -> Result<(), TransferError> {
    let me = node.node_id;
    let holding = record.holders.binary_search(&me).is_ok();
    let complete = matches!(node.local(&hash).await?, pando_protocol::blob::LocalBlob::Complete { .. });
    if complete && holding {
        // Keep the tag in place (a restored data directory, or a tag lost before a crash).
        node.keep(hash).await?;
        return Ok(());
    }
    let _pin = node.ensure_local(&hash, &record.holders).await?;
    if !node.keep(hash).await? {
        return Ok(());
    }
    if !holding {
        propose_anywhere(&node.directory, Command::Blob(BlobCommand::Held { hash, node: me }), PROPOSE_TIMEOUT)
            .await
            .map_err(|error| TransferError::Unavailable(error.to_string()))?;
        tracing::info!(%hash, "fetched a copy of a blob");
    }
    Ok(())
}

/// The leader's pass: assign copies to live members where live copies fall short, release departed members.
async fn place(node: &BlobNode) -> Result<(), TransferError> {
    let reader = reader(node)?;
    let members: BTreeSet<u64> = members(&node.directory).keys().copied().collect();
    let live: BTreeSet<u64> = members
        .iter()
        .copied()
        .filter(|member| {
            *member == node.node_id
                || node.directory.peer_heard_within(*member, Duration::from_millis(PEER_LIVE_WINDOW_MS))
        })
        .collect();
    let mut after: Option<BlobHash> = None;
    let mut seen = 0;
    while seen < REPAIR_BLOBS_PER_ROUND_MAX {
        let page_reader = reader.clone();
        let (page, next) = blocking(move || page_reader.blobs(after.as_ref(), PAGE as u32)).await?;
        seen += page.len();
        for (hash, record) in &page {
            for gone in record.holders.iter().chain(&record.assigned).filter(|id| !members.contains(id)) {
                let release = Command::Blob(BlobCommand::Release { hash: *hash, node: *gone });
                propose_anywhere(&node.directory, release, PROPOSE_TIMEOUT)
                    .await
                    .map_err(|error| TransferError::Unavailable(error.to_string()))?;
            }
            let wanted = assignments(hash, record, &members, &live);
            if !wanted.is_empty() {
                tracing::info!(%hash, nodes = ?wanted, "assigning copies of a blob");
                let assign = Command::Blob(BlobCommand::Assign { hash: *hash, nodes: wanted });
                propose_anywhere(&node.directory, assign, PROPOSE_TIMEOUT)
                    .await
                    .map_err(|error| TransferError::Unavailable(error.to_string()))?;
            }
        }
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(())
}

/// The live members that should start fetching `record`: as many as its live copies fall short of its replica count,
/// in rendezvous-hash order (so every leader picks the same nodes for the same blob and membership).
pub(crate) fn assignments(
    hash: &BlobHash,
    record: &BlobRecord,
    members: &BTreeSet<u64>,
    live: &BTreeSet<u64>,
) -> Vec<u64> {
    let counted = record.holders.iter().chain(&record.assigned).filter(|node| live.contains(node)).count();
    let wanted = usize::from(record.replicas).saturating_sub(counted);
    if wanted == 0 || record.holders.is_empty() {
        return Vec::new();
    }
    let mut candidates: Vec<(blake3::Hash, u64)> = members
        .iter()
        .copied()
        .filter(|node| live.contains(node) && !record.places(*node))
        .map(|node| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(hash.as_bytes());
            hasher.update(&node.to_be_bytes());
            (hasher.finalize(), node)
        })
        .collect();
    candidates.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(&b.1)));
    let mut nodes: Vec<u64> = candidates.into_iter().take(wanted).map(|(_, node)| node).collect();
    nodes.sort_unstable();
    nodes
}
