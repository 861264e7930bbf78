//! The repair worker: one task per node, woken by blob events on the commit stream and by a timer.
//!
//! Each round, this node (1) fetches every blob it is assigned and reports it held, and re-fetches any it should
//! hold but lost; (2) if it leads (for longer than the liveness window, so it has heard from every live member), tops
//! up every blob whose live copies (holders and assignees the leader heard from recently) fall short of its replica
//! count, releases members that left (holders only once enough live copies exist elsewhere, never the last one), and
//! releases surplus holders once every holder is live; (3) every few rounds, asks the actor to sweep the tags of
//! blobs it no longer keeps. Both passes look at a bounded number of blobs per round and continue where they
//! stopped on the next round, so every blob is visited however many there are.

use std::collections::BTreeSet;
use std::time::Duration;

use pando_protocol::blob::{BlobCommand, BlobHash, BlobRecord};
use pando_protocol::command::Command;
use pando_protocol::coord::CoordEvent;
use ractor::ActorRef;
use tokio_util::sync::CancellationToken;

use super::{BlobMsg, BlobNode, SWEEP_EVERY_ROUNDS, TransferError};

/// A member the leader has not heard from for this long does not count as holding its copies.
pub const PEER_LIVE_WINDOW_MS: u64 = 3_000;
/// Blobs one round looks at, per pass (placement on this node, and the leader's pass over every blob).
pub const REPAIR_BLOBS_PER_ROUND_MAX: usize = 4_096;
/// Deadline of one bookkeeping proposal.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
const PAGE: usize = 256;

/// Where each pass continues on the next round.
#[derive(Default)]
struct Cursors {
    placed: Option<BlobHash>,
    all: Option<BlobHash>,
    /// When this node was first seen leading in its current term of leadership.
    leading_since: Option<tokio::time::Instant>,
}

pub(super) async fn run(node: BlobNode, actor: ActorRef<BlobMsg>, stop: CancellationToken) {
    let mut round: u64 = 0;
    let mut events = None;
    let mut cursors = Cursors::default();
    loop {
        if events.is_none() {
            events = Some(node.storage.subscribe());
        }
        let wake = async {
            match events.as_mut() {
                Some(events) => loop {
                    match events.recv().await {
                        Ok(committed) if committed.coord.iter().any(wakes_repair) => return,
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
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(node.config.repair_interval) => false,
            () = wake => true,
        };
        if events.as_ref().is_some_and(|events| events.is_closed()) {
            events = None;
        }
        round += 1;
        tracing::trace!(node = node.node_id, round, woken, "blob repair round");
        if let Err(error) = fetch_assigned(&node, &stop, &mut cursors.placed).await {
            tracing::debug!(%error, "blob repair: fetching assigned blobs");
        }
        if !node.leads() {
            cursors.leading_since = None;
        } else {
            let since = *cursors.leading_since.get_or_insert_with(tokio::time::Instant::now);
            // A new leader has heard from nobody yet: placing now would count every other copy as lost.
            if since.elapsed() >= Duration::from_millis(PEER_LIVE_WINDOW_MS)
                && let Err(error) = place(&node, &mut cursors.all).await
            {
                tracing::debug!(%error, "blob repair: placing copies");
            }
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

impl BlobNode {
    /// Proposes blob bookkeeping from this node, wherever the leader is.
    async fn propose(&self, command: BlobCommand) -> Result<(), TransferError> {
        self.proposer
            .propose_anywhere(Command::Blob(command), PROPOSE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|error| TransferError::Unavailable(error.to_string()))
    }
}

/// Fetches what this node is assigned (or holds but lost) and reports it held.
async fn fetch_assigned(
    node: &BlobNode,
    stop: &CancellationToken,
    cursor: &mut Option<BlobHash>,
) -> Result<(), TransferError> {
    let me = node.node_id;
    let mut seen = 0;
    while seen < REPAIR_BLOBS_PER_ROUND_MAX && !stop.is_cancelled() {
        let after = *cursor;
        let page = node.read(move |reader| reader.blobs_placed_on(me, after.as_ref(), PAGE)).await?;
        if page.is_empty() {
            // The end: the next round starts over.
            *cursor = None;
            break;
        }
        seen += page.len();
        *cursor = page.last().copied();
        for hash in page {
            let Some(record) = node.read(move |reader| reader.blob(&hash)).await? else { continue };
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
        // The tag may be missing (lost in a crash before the store synced it): put it back.
        if !node.store.is_kept(hash).await? {
            node.hold(hash).await?;
        }
        return Ok(());
    }
    let _pin = node.ensure_local(&hash, record.size, &record.holders).await?;
    node.hold(hash).await?;
    if !holding {
        node.propose(BlobCommand::Held { hash, node: me }).await?;
        tracing::info!(%hash, "fetched a copy of a blob");
    }
    Ok(())
}

/// The leader's pass: assign copies to live members where live copies fall short, release departed members and
/// surplus holders.
async fn place(node: &BlobNode, cursor: &mut Option<BlobHash>) -> Result<(), TransferError> {
    let members: BTreeSet<u64> = node.raft.members().keys().copied().collect();
    let live: BTreeSet<u64> = members.iter().copied().filter(|member| node.is_live(*member)).collect();
    let mut seen = 0;
    while seen < REPAIR_BLOBS_PER_ROUND_MAX {
        let after = *cursor;
        let (page, next) = node.read(move |reader| reader.blobs(after.as_ref(), PAGE as u32)).await?;
        seen += page.len();
        for (hash, record) in &page {
            for command in plan(hash, record, &members, &live) {
                tracing::info!(node = node.node_id, %hash, ?command, "blob placement");
                node.propose(command).await?;
            }
        }
        *cursor = next;
        if next.is_none() {
            break;
        }
    }
    Ok(())
}

/// What the leader proposes for one blob: assignments where live copies fall short; releases of departed members
/// (a departed holder only while enough live copies remain without it, and never the last holder, which stays a
/// source to fetch from) and of assignees that are down while enough live copies exist without them; and, once every
/// holder is live and nothing is being fetched, releases of the holders beyond the replica count that rank last in
/// rendezvous order.
pub(crate) fn plan(
    hash: &BlobHash,
    record: &BlobRecord,
    members: &BTreeSet<u64>,
    live: &BTreeSet<u64>,
) -> Vec<BlobCommand> {
    let mut commands = Vec::new();
    let replicas = usize::from(record.replicas);
    let live_holders: Vec<u64> = record.holders.iter().copied().filter(|node| live.contains(node)).collect();
    for gone in record.assigned.iter().filter(|node| !members.contains(node)) {
        commands.push(BlobCommand::Release { hash: *hash, node: *gone });
    }
    // An assignee that is down while enough live copies exist without it is surplus: forget it, so a node that never
    // comes back does not stay assigned.
    let live_assigned = record.assigned.iter().filter(|node| live.contains(node)).count();
    if live_holders.len() + live_assigned >= replicas {
        for down in record.assigned.iter().filter(|node| members.contains(node) && !live.contains(node)) {
            commands.push(BlobCommand::Release { hash: *hash, node: *down });
        }
    }
    let departed: Vec<u64> = record.holders.iter().copied().filter(|node| !members.contains(node)).collect();
    let mut remaining = record.holders.len();
    for gone in departed {
        if live_holders.len() >= replicas && remaining > 1 {
            commands.push(BlobCommand::Release { hash: *hash, node: gone });
            remaining -= 1;
        }
    }
    let wanted = assignments(hash, record, members, live);
    if !wanted.is_empty() {
        commands.push(BlobCommand::Assign { hash: *hash, nodes: wanted });
    } else if record.assigned.is_empty()
        && live_holders.len() == record.holders.len()
        && record.holders.len() > replicas
    {
        let mut ranked = rank(hash, record.holders.iter().copied());
        for (_, surplus) in ranked.split_off(replicas) {
            commands.push(BlobCommand::Release { hash: *hash, node: surplus });
        }
    }
    commands
}

/// `nodes` in rendezvous order for `hash`: every leader ranks the same nodes the same way.
fn rank(hash: &BlobHash, nodes: impl Iterator<Item = u64>) -> Vec<(blake3::Hash, u64)> {
    let mut ranked: Vec<(blake3::Hash, u64)> = nodes
        .map(|node| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(hash.as_bytes());
            hasher.update(&node.to_be_bytes());
            (hasher.finalize(), node)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(&b.1)));
    ranked
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
    let mut wanted = usize::from(record.replicas).saturating_sub(counted);
    if crate::sim::planted_bug(crate::sim::PlantedBug::BlobPlacementShort) {
        wanted = wanted.saturating_sub(1);
    }
    if wanted == 0 || record.holders.is_empty() {
        return Vec::new();
    }
    let candidates = rank(hash, members.iter().copied().filter(|node| live.contains(node) && !record.places(*node)));
    let mut nodes: Vec<u64> = candidates.into_iter().take(wanted).map(|(_, node)| node).collect();
    nodes.sort_unstable();
    nodes
}
