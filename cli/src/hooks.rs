//! Hooks from the client's side: typed calls for durable hooks and user events, and a [`HookWatch`] that survives the
//! loss of its member. A hook stream runs on one member (any member: every one holds the hook log); when the member
//! is lost (the connection breaks, it cancels with `SLOW_CONSUMER` or `UNAVAILABLE`, or it says nothing for three
//! heartbeats) the watch opens again on another member from the first sequence it has not delivered, and drops what
//! it already delivered, so events come in sequence order, each once. `COMPACTED` is final.

use std::time::Duration;

use pando_protocol::envelope::{Request, Response};
use pando_protocol::hook::HookEvent;
use pando_protocol::hook::api::{HookInfo, HookReply, HookRequest, HookStreamResponse, HookWatchRequest};
use pando_protocol::hook::durable::{DeadLetter, HookRecord, HookResponse, HookSpec, StartAt};
use pando_protocol::limits::HOOK_STREAM_PROGRESS_MS;

use crate::client::{Client, unexpected};
use crate::error::ClientError;
use crate::stream::{Mover, OpenStream, movable};

/// Heartbeats a member may miss before the watch counts it lost.
const SILENT_HEARTBEATS_MAX: u64 = 3;

impl Client {
    async fn hook(&self, request: HookRequest) -> Result<HookReply, ClientError> {
        match self.request(Request::Hook(request)).await? {
            Response::Hook(reply) => Ok(reply),
            other => Err(unexpected(&other)),
        }
    }

    async fn hook_command(&self, request: HookRequest) -> Result<HookResponse, ClientError> {
        match self.hook(request).await? {
            HookReply::Command(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a durable hook; answers whether it existed already (with this spec) and its position.
    pub async fn hook_create(&self, name: &str, spec: HookSpec, start: StartAt) -> Result<(bool, u64), ClientError> {
        match self.hook_command(HookRequest::Create { name: name.into(), spec, start }).await? {
            HookResponse::Created { existed, position } => Ok((existed, position)),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn hook_delete(&self, name: &str) -> Result<(), ClientError> {
        self.hook_command(HookRequest::Delete { name: name.into() }).await.map(|_| ())
    }

    /// Pauses (`true`) or resumes a hook.
    pub async fn hook_pause(&self, name: &str, pause: bool) -> Result<(), ClientError> {
        let request =
            if pause { HookRequest::Pause { name: name.into() } } else { HookRequest::Resume { name: name.into() } };
        self.hook_command(request).await.map(|_| ())
    }

    /// Publishes a user event; answers its sequence.
    pub async fn hook_publish(&self, subject: &str, data: &[u8]) -> Result<u64, ClientError> {
        match self.hook_command(HookRequest::Publish { subject: subject.into(), data: data.to_vec().into() }).await? {
            HookResponse::Published { seq } => Ok(seq),
            other => Err(unexpected(&other)),
        }
    }

    /// Moves a hook's dead letters back; answers how many, and whether more are left.
    pub async fn hook_redrive(&self, name: &str) -> Result<(u32, bool), ClientError> {
        match self.hook_command(HookRequest::Redrive { name: name.into() }).await? {
            HookResponse::Redriven { count, more } => Ok((count, more)),
            other => Err(unexpected(&other)),
        }
    }

    /// Rewinds a hook to sequence `from`; answers where it starts (the log's oldest, if `from` was trimmed).
    pub async fn hook_replay(&self, name: &str, from: u64) -> Result<u64, ClientError> {
        match self.hook_command(HookRequest::Replay { name: name.into(), from }).await? {
            HookResponse::Replayed { from } => Ok(from),
            other => Err(unexpected(&other)),
        }
    }

    /// Every hook, in name order.
    pub async fn hook_list(&self) -> Result<Vec<HookRecord>, ClientError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            match self.hook(HookRequest::List { after: after.clone(), limit: 1_000 }).await? {
                HookReply::List { hooks, more } => {
                    after = hooks.last().map(|hook| hook.name.clone());
                    all.extend(hooks);
                    if !more || after.is_none() {
                        return Ok(all);
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    pub async fn hook_info(&self, name: &str) -> Result<HookInfo, ClientError> {
        match self.hook(HookRequest::Info { name: name.into() }).await? {
            HookReply::Info(info) => Ok(*info),
            other => Err(unexpected(&other)),
        }
    }

    /// A hook's dead letters after sequence `after` (one page), and whether more follow.
    pub async fn hook_dead_letters(
        &self,
        name: &str,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<DeadLetter>, bool), ClientError> {
        match self.hook(HookRequest::DeadLetters { name: name.into(), after, limit }).await? {
            HookReply::DeadLetters { letters, more } => Ok((letters, more)),
            other => Err(unexpected(&other)),
        }
    }

    /// Watches the events matching `pattern` from sequence `from` (0: from now); the first member is reached when
    /// [`HookWatch::next`] is first called.
    pub fn hook_watch(&self, pattern: &str, from: u64) -> HookWatch<'_> {
        HookWatch {
            client: self,
            pattern: pattern.to_string(),
            next: from,
            stream: None,
            ready: Default::default(),
            mover: Mover::default(),
        }
    }
}

/// A hook stream in progress (see the module's documentation).
pub struct HookWatch<'a> {
    client: &'a Client,
    pattern: String,
    /// The first sequence not delivered yet (0 until the first member named it).
    next: u64,
    stream: Option<OpenStream>,
    ready: std::collections::VecDeque<HookEvent>,
    mover: Mover,
}

impl HookWatch<'_> {
    /// How many times the watch moved to another member.
    pub fn resumes(&self) -> u64 {
        self.mover.resumes
    }

    /// The next sequence the watch will deliver from.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The next matching event, waiting as long as it takes.
    pub async fn next(&mut self) -> Result<HookEvent, ClientError> {
        let silence = Duration::from_millis(HOOK_STREAM_PROGRESS_MS * SILENT_HEARTBEATS_MAX);
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            let Some(stream) = self.stream.as_mut() else {
                let request = HookWatchRequest { pattern: self.pattern.clone(), from_seq: self.next };
                match OpenStream::open(self.client, Request::HookWatch(request)).await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(error) if self.mover.gives_up(&error) => return Err(error),
                    Err(error) => self.lost(&error.to_string()).await?,
                }
                continue;
            };
            let read = match tokio::time::timeout(silence, stream.next_response()).await {
                Ok(read) => read,
                Err(_) => {
                    self.lost("the member said nothing for several heartbeats").await?;
                    continue;
                }
            };
            let error = match read {
                Ok(Ok(Response::HookStream(HookStreamResponse::Canceled { error, .. }))) | Ok(Err(error)) => error,
                Ok(Ok(Response::HookStream(
                    HookStreamResponse::Created { next_seq } | HookStreamResponse::Progress { next_seq },
                ))) => {
                    self.mover.served();
                    self.next = self.next.max(next_seq);
                    continue;
                }
                Ok(Ok(Response::HookStream(HookStreamResponse::Events { events }))) => {
                    self.mover.served();
                    for event in events {
                        // A member that resumed from an older point repeats nothing delivered.
                        if event.seq >= self.next {
                            self.next = event.seq + 1;
                            self.ready.push_back(event);
                        }
                    }
                    continue;
                }
                Ok(Ok(other)) => return Err(unexpected(&other)),
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

    /// Ends the watch: the member stops serving it.
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
