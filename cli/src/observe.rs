//! An election observation that survives the loss of its node: [`Client::observe_election`] opens one stream on a
//! member, which sends the election's state now and after every change (and repeats it as a heartbeat while nothing
//! changes). When the member is lost (the connection breaks, it cancels with `NO_LEADER`, `SLOW_CONSUMER` or
//! `UNAVAILABLE`, or it says nothing for three heartbeats) the observation opens again on another member. States come
//! in the election's order ([`election_order`]): a member that lags behind the last one cannot take the observer back
//! to a leader it already saw go, and an unchanged state is not delivered twice.

use std::time::Duration;

use pando_protocol::coord::ElectionInfo;
use pando_protocol::envelope::{Request, Response};
use pando_protocol::kv::Bytes;
use pando_protocol::limits::OBSERVE_HEARTBEAT_MS;
use pando_protocol::observe::{ObserveRequest, ObserveResponse, election_order};

use crate::client::Client;
use crate::error::ClientError;
use crate::stream::{Mover, OpenStream, movable};

/// Heartbeats a member may miss before the observation counts it lost.
pub const OBSERVE_SILENT_HEARTBEATS_MAX: u64 = 3;

/// An election observation in progress (see the module's documentation).
pub struct Observation<'a> {
    client: &'a Client,
    request: ObserveRequest,
    stream: Option<OpenStream>,
    /// The state last delivered.
    last: Option<ElectionInfo>,
    mover: Mover,
}

impl Client {
    /// Observes election `name` (see [`Observation`]); the first member is reached when [`Observation::next`] is
    /// first called.
    pub fn observe_election(&self, name: &[u8]) -> Observation<'_> {
        let request = ObserveRequest::Election { name: Bytes::from(name.to_vec()) };
        Observation { client: self, request, stream: None, last: None, mover: Mover::default() }
    }
}

impl Observation<'_> {
    /// How many times the observation moved to another member.
    pub fn resumes(&self) -> u64 {
        self.mover.resumes
    }

    /// The election's state: first as it is, then each time it changes; waits as long as it takes.
    pub async fn next(&mut self) -> Result<ElectionInfo, ClientError> {
        let silence = Duration::from_millis(OBSERVE_HEARTBEAT_MS * OBSERVE_SILENT_HEARTBEATS_MAX);
        loop {
            let Some(stream) = self.stream.as_mut() else {
                match OpenStream::open(self.client, Request::Observe(self.request.clone())).await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(error) if self.mover.gives_up(&error) => return Err(error),
                    Err(error) => self.lost(&error.to_string()).await?,
                }
                continue;
            };
            // A member silent for several heartbeats is lost: its stream is dropped and the observation moves on.
            let read = match tokio::time::timeout(silence, stream.next_response()).await {
                Ok(read) => read,
                Err(_) => {
                    self.lost("the member said nothing for several heartbeats").await?;
                    continue;
                }
            };
            let error = match read {
                Ok(Ok(Response::Observe(ObserveResponse::Election { election }))) => {
                    self.mover.served();
                    let new = match &self.last {
                        Some(last) => election_order(&election) >= election_order(last) && election != *last,
                        None => true,
                    };
                    if new {
                        self.last = Some(election.clone());
                        return Ok(election);
                    }
                    continue;
                }
                Ok(Ok(Response::Observe(ObserveResponse::Canceled { error }))) | Ok(Err(error)) => error,
                Ok(Ok(other)) => {
                    return Err(ClientError::Protocol(format!("unexpected answer to an observation: {other:?}")));
                }
                Err(error) => {
                    self.lost(&error.to_string()).await?;
                    continue;
                }
            };
            if !movable(&error) {
                self.stream = None;
                return Err(ClientError::Wire(error));
            }
            self.lost(&error.to_string()).await?;
        }
    }

    /// Ends the observation: the member stops serving it.
    pub async fn cancel(mut self) {
        if let Some(stream) = self.stream.take() {
            stream.close().await;
        }
    }

    async fn lost(&mut self, why: &str) -> Result<(), ClientError> {
        self.stream = None;
        self.mover.lost(self.client, why).await
    }
}
