//! A watch that survives the loss of its node: [`Client::watch`] opens it on a member; when that member is lost (the
//! connection breaks, or the node cancels with `NO_LEADER`, `SLOW_CONSUMER` or `UNAVAILABLE`) the watch opens again on
//! another member from the first revision it has not delivered. Revisions come exactly once and in order, each whole
//! (fragments of a large revision are put back together; a revision cut by a lost node is asked for again).
//! A member that says nothing for a few progress intervals (the watch asks for progress, as a heartbeat, when its
//! caller did not) is lost too: a partition between the client and the member shows as silence, not as an error.
//!
//! `COMPACTED` (the history the watch needs is gone) ends the watch with an error naming the oldest revision held and
//! the current one, unless the caller asked for [`Watch::reread_on_compacted`]: then the watch reads every key it
//! watches as it is now ([`WatchItem::Reread`] pages, the state a cache of the range starts over from) and continues
//! with the events after that read, the way an informer relists and watches again.

use std::pin::Pin;
use std::time::Duration;

use pando_protocol::envelope::{Request, Response};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::{Consistency, KvEntry};
use pando_protocol::watch::{WatchEvent, WatchRange, WatchRequest, WatchResponse};

use tokio::time::{Instant, Sleep};

use crate::client::Client;
use crate::error::ClientError;
use crate::stream::{Mover, OpenStream, movable};

/// How often the member must say something when the caller asked for no progress notifications: the watch asks for
/// them at this interval and keeps them to itself.
pub const WATCH_HEARTBEAT_MS: u32 = 5_000;
/// Progress intervals a member may stay silent before the watch counts it lost (a partition between the client and
/// the member shows as silence: no frame, no error) and resumes on another one.
pub const WATCH_SILENT_INTERVALS_MAX: u32 = 3;
/// Keys one page of a re-read asks for.
pub const WATCH_REREAD_PAGE_KEYS: u32 = 1_000;

/// What a watch delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    /// Every matching event of one revision.
    Events { revision: u64, events: Vec<WatchEvent> },
    /// Every revision before `next_revision` was delivered (or held nothing this watch matches).
    Progress { next_revision: u64 },
    /// The history the watch needed was compacted, so it read what it watches again (only with
    /// [`Watch::reread_on_compacted`]): one page of the keys in its range, in key order; `last` on the final page.
    /// A cache of the range drops what it held at the first page and starts over from these entries. They are as of
    /// `revision` or a little later (pages are read one after another); the events from `revision + 1` follow, and
    /// applying them in order (a put replaces the entry, a delete removes it) makes the cache exact again.
    Reread { revision: u64, entries: Vec<KvEntry>, last: bool },
}

/// A watch in progress (see the module's documentation).
pub struct Watch<'a> {
    client: &'a Client,
    request: WatchRequest,
    stream: Option<OpenStream>,
    /// The first revision not delivered yet (0: not known until the first member says where the watch starts).
    next_revision: u64,
    /// Events of a revision whose last fragment has not arrived.
    partial: Option<(u64, Vec<WatchEvent>)>,
    mover: Mover,
    reread_on_compacted: bool,
    /// A re-read under way: the revision of its first page (0 before it), and where the next page starts.
    reread: Option<(u64, Option<Vec<u8>>)>,
    /// When the member last said something, and the timer that looks whether it went silent.
    heard: Instant,
    silence: Option<Pin<Box<Sleep>>>,
}

impl Client {
    /// Opens a watch (see [`Watch`]); the first member is reached when [`Watch::next`] is first called.
    pub fn watch(&self, request: WatchRequest) -> Watch<'_> {
        let next_revision = request.start_revision;
        Watch {
            client: self,
            request,
            stream: None,
            next_revision,
            partial: None,
            mover: Mover::default(),
            reread_on_compacted: false,
            reread: None,
            heard: Instant::now(),
            silence: None,
        }
    }
}

impl Watch<'_> {
    /// On `COMPACTED`, read what the watch covers again and continue from there (see [`WatchItem::Reread`]) instead
    /// of ending with the error.
    pub fn reread_on_compacted(mut self, reread: bool) -> Self {
        self.reread_on_compacted = reread;
        self
    }

    /// The first revision not delivered yet.
    pub fn next_revision(&self) -> u64 {
        self.next_revision
    }

    /// How many times the watch resumed on another member.
    pub fn resumes(&self) -> u64 {
        self.mover.resumes
    }

    /// The next revision's events, a progress notification, or a page of a re-read; waits as long as it takes.
    pub async fn next(&mut self) -> Result<WatchItem, ClientError> {
        loop {
            if self.reread.is_some() {
                if let Some(page) = self.reread_page().await? {
                    return Ok(page);
                }
                continue;
            }
            let silence = Duration::from_millis(u64::from(self.heartbeat_ms() * WATCH_SILENT_INTERVALS_MAX));
            let Some(stream) = self.stream.as_mut() else {
                self.open().await?;
                self.heard = Instant::now();
                continue;
            };
            // Silence past a few progress intervals: the member is cut off from us, and the watch moves on. One
            // timer for the watch's life, re-armed when it fires (not set and cleared for every frame);
            // `next_response` is cancel-safe, so racing it loses nothing.
            let timer = self.silence.get_or_insert_with(|| Box::pin(tokio::time::sleep(silence)));
            let read = tokio::select! {
                biased;
                read = stream.next_response() => Some(read),
                () = timer.as_mut() => None,
            };
            let Some(read) = read else {
                let quiet_until = self.heard + silence;
                if Instant::now() < quiet_until {
                    timer.as_mut().reset(quiet_until);
                } else {
                    timer.as_mut().reset(Instant::now() + silence);
                    self.lost("the member said nothing for several progress intervals").await?;
                }
                continue;
            };
            self.heard = Instant::now();
            let frame = match read {
                Ok(Ok(Response::Watch(frame))) => frame,
                Ok(Ok(other)) => return Err(ClientError::Protocol(format!("unexpected answer to a watch: {other:?}"))),
                Ok(Err(error)) => {
                    self.refused(error).await?;
                    continue;
                }
                Err(error) => {
                    self.lost(&error.to_string()).await?;
                    continue;
                }
            };
            self.mover.served();
            match frame {
                WatchResponse::Created { start_revision, .. } => {
                    if self.next_revision == 0 {
                        self.next_revision = start_revision;
                    }
                }
                WatchResponse::Events { revision, events, more } => {
                    if revision < self.next_revision {
                        // Delivered before the watch moved here.
                        continue;
                    }
                    let mut gathered = match self.partial.take() {
                        Some((partial, mut gathered)) if partial == revision => {
                            gathered.extend(events);
                            gathered
                        }
                        _ => events,
                    };
                    if more {
                        self.partial = Some((revision, std::mem::take(&mut gathered)));
                        continue;
                    }
                    self.next_revision = revision + 1;
                    return Ok(WatchItem::Events { revision, events: gathered });
                }
                WatchResponse::Progress { next_revision } => {
                    // A member that lags behind the one the watch left may name an earlier revision: never go back.
                    if self.partial.is_none() && next_revision >= self.next_revision {
                        self.next_revision = next_revision;
                        // Heartbeats the caller did not ask for stay here.
                        if self.request.progress_ms > 0 {
                            return Ok(WatchItem::Progress { next_revision });
                        }
                    }
                }
                WatchResponse::Canceled { error, .. } => self.refused(error).await?,
            }
        }
    }

    /// Ends the watch: the member stops serving it.
    pub async fn cancel(mut self) {
        if let Some(stream) = self.stream.take() {
            stream.close().await;
        }
    }

    /// Opens the watch on the client's current member, from the first revision not delivered.
    async fn open(&mut self) -> Result<(), ClientError> {
        let request = WatchRequest {
            start_revision: self.next_revision,
            progress_ms: self.heartbeat_ms(),
            ..self.request.clone()
        };
        match OpenStream::open(self.client, Request::Watch(request)).await {
            Ok(stream) => {
                self.stream = Some(stream);
                Ok(())
            }
            Err(error) if self.mover.gives_up(&error) => Err(error),
            Err(error) => self.lost(&error.to_string()).await,
        }
    }

    /// The member refused or cancelled the watch: another member may serve it, a re-read may continue it, or the
    /// error is the caller's.
    async fn refused(&mut self, error: WireError) -> Result<(), ClientError> {
        if movable(&error) {
            return self.lost(&error.to_string()).await;
        }
        self.stream = None;
        self.partial = None;
        if error.code == ErrorCode::Compacted && self.reread_on_compacted {
            self.reread = Some((0, None));
            return Ok(());
        }
        Err(ClientError::Wire(error))
    }

    /// Reads the next page of a re-read (`None`: a page with nothing in the range, or the read failed over to
    /// another member). After the last page the watch continues from the revision after the first.
    async fn reread_page(&mut self) -> Result<Option<WatchItem>, ClientError> {
        let Some((first_revision, after)) = self.reread.clone() else { return Ok(None) };
        let (prefix, range) = (self.request.range.access_prefix().to_vec(), &self.request.range);
        let page =
            self.client.scan(&prefix, WATCH_REREAD_PAGE_KEYS, after.as_deref(), Consistency::Linearizable).await?;
        let revision = if first_revision == 0 { page.revision } else { first_revision };
        let entries: Vec<KvEntry> = page.entries.into_iter().filter(|entry| range.contains(&entry.key)).collect();
        let last = page.next.is_none() || beyond(range, page.next.as_deref());
        if last {
            self.reread = None;
            self.next_revision = revision + 1;
        } else {
            self.reread = Some((revision, page.next));
        }
        let first = first_revision == 0;
        Ok((first || last || !entries.is_empty()).then_some(WatchItem::Reread { revision, entries, last }))
    }

    /// The progress interval asked of members: the caller's, or a heartbeat.
    fn heartbeat_ms(&self) -> u32 {
        match self.request.progress_ms {
            0 => WATCH_HEARTBEAT_MS,
            asked => asked,
        }
    }

    /// The member was lost (or cannot serve the watch): the next open goes to another one, after a pause.
    async fn lost(&mut self, why: &str) -> Result<(), ClientError> {
        self.stream = None;
        self.partial = None;
        self.mover.lost(self.client, why).await
    }
}

/// Whether a scan that would continue after `next` has left the range (its keys only grow from there).
fn beyond(range: &WatchRange, next: Option<&[u8]>) -> bool {
    match (range, next) {
        (WatchRange::Key(key), Some(next)) => next >= key.as_slice(),
        (WatchRange::Range { end, .. }, Some(next)) => !end.is_empty() && next >= end.as_slice(),
        _ => false,
    }
}
