//! Observations of coordination resources (an election today): the state as this member has applied it, then again
//! after every committed entry that may have changed it, and unchanged as a heartbeat when nothing did for
//! [`OBSERVE_HEARTBEAT_MS`]. An observation holds a watch slot and is cancelled `NO_LEADER` like a watch.
//!
//! The node reads the state again only when an entry's coordination events concern it (or its subscription lagged),
//! and once a second besides: an entry applied by a storage instance that stopped before publishing is seen that way.

use std::sync::Arc;
use std::time::Duration;

use pando_protocol::coord::{CoordResponse, ElectionInfo};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::limits::OBSERVE_HEARTBEAT_MS;
use pando_protocol::observe::{ObserveRequest, ObserveResponse};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use super::LeaderLoss;
use crate::commit_stream::{Committed, FEED_IDLE_CHECK_MS};
use crate::storage_actor::StorageHandle;

/// One open observation: its frames, in order, until it is cancelled.
pub struct Observer {
    storage: StorageHandle,
    request: ObserveRequest,
    events: broadcast::Receiver<Arc<Committed>>,
    /// The state last sent (`None` before the first frame).
    last: Option<ElectionInfo>,
    last_frame: Instant,
    /// The state may have changed since it was last read.
    stale: bool,
    leader: LeaderLoss,
    ended: bool,
    _slot: OwnedSemaphorePermit,
}

impl Observer {
    pub(super) fn new(
        storage: StorageHandle,
        request: ObserveRequest,
        leader: LeaderLoss,
        slot: OwnedSemaphorePermit,
    ) -> Observer {
        // Subscribed before the first read, so a change between the two is not missed.
        let events = storage.subscribe();
        Observer {
            storage,
            request,
            events,
            last: None,
            last_frame: Instant::now(),
            stale: true,
            leader,
            ended: false,
            _slot: slot,
        }
    }

    /// The next frame: the state, then each change (or a heartbeat); `Canceled` ends the observation (then `None`).
    pub async fn next(&mut self) -> Option<ObserveResponse> {
        if self.ended {
            return None;
        }
        let heartbeat = Duration::from_millis(OBSERVE_HEARTBEAT_MS);
        loop {
            if self.stale {
                self.stale = false;
                if crate::sim::planted_bug(crate::sim::PlantedBug::ObserveStale) && self.last.is_some() {
                    continue;
                }
                let state = match self.read() {
                    Ok(state) => state,
                    Err(error) => return Some(self.cancel(error)),
                };
                if self.last.as_ref() != Some(&state) {
                    return Some(self.sent(state));
                }
            }
            if let Some(last) = self.last.clone().filter(|_| self.last_frame.elapsed() >= heartbeat) {
                return Some(self.sent(last));
            }
            let wake = (self.last_frame + heartbeat).min(Instant::now() + Duration::from_millis(FEED_IDLE_CHECK_MS));
            tokio::select! {
                // Biased: the same order every run (the simulator replays a seed exactly).
                biased;
                committed = self.events.recv() => match committed {
                    Ok(committed) => {
                        self.stale = committed.coord.iter().any(|event| self.request.concerns(event));
                    }
                    Err(RecvError::Lagged(_)) => self.stale = true,
                    Err(RecvError::Closed) => {
                        return Some(self.cancel(WireError::new(ErrorCode::Unavailable, "the node is shutting down")));
                    }
                },
                () = tokio::time::sleep_until(wake) => {
                    if let Some(error) = self.leader.check() {
                        return Some(self.cancel(error));
                    }
                    self.stale = true;
                }
            }
        }
    }

    /// The state as this member has applied it.
    fn read(&self) -> Result<ElectionInfo, WireError> {
        let reader = self.storage.reader()?;
        match reader.read_coord(&self.request.as_read()) {
            Ok(Ok(CoordResponse::Election { election })) => Ok(election),
            Ok(Ok(other)) => Err(WireError::internal(format!("an election read answered {other:?}"))),
            Ok(Err(error)) => Err(error),
            Err(fault) => Err(WireError::internal(fault.to_string())),
        }
    }

    fn sent(&mut self, election: ElectionInfo) -> ObserveResponse {
        self.last_frame = Instant::now();
        self.last = Some(election.clone());
        ObserveResponse::Election { election }
    }

    fn cancel(&mut self, error: WireError) -> ObserveResponse {
        self.ended = true;
        ObserveResponse::Canceled { error }
    }
}
