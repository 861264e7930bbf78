//! Drops what the kernel cached of inodes and names that changed, from the commit stream (`fs.changed` events,
//! whichever member's write caused them; a mount that is not a member's hears them on a hook stream): the attributes and pages of each changed inode the kernel knows, and each
//! changed name under a directory it knows. A subscriber that lagged behind the stream drops every inode the kernel
//! knows (names then live at most their entry TTL).
//!
//! The notifications go out from a thread of their own, never from a request handler or the runtime: the kernel may
//! hold a lock on the very inode being invalidated while it waits for a reply to a request, and that reply comes from
//! the runtime, which must never wait on the notification.
//!
//! The feed or the thread ending on its own (a closed commit stream, a panic) is the mount's end, told to whoever
//! started it, as its kernel session's end is: a mount whose caches nobody drops any more would serve what another
//! node changed for as long as the kernel keeps it. The node's `FuseActor` then fails and its supervisor mounts again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use fuser::{INodeNo, Notifier};
use futures::{Stream, StreamExt};
use pando_protocol::coord::CoordEvent;
use tokio::sync::broadcast;

use super::PandoFs;
use crate::commit_stream::Committed;

/// What the feed hears of the file system's changes: inodes and entries (parent, name) that changed, or that it
/// missed some (everything the kernel knows is dropped then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsFeed {
    Changed { inodes: Vec<u64>, entries: Vec<(u64, String)> },
    Lost,
}

/// The feed of a member's mount: its node's commit stream.
pub fn commit_feed(events: broadcast::Receiver<Arc<Committed>>) -> impl Stream<Item = FsFeed> + Send + 'static {
    futures::stream::unfold(events, |mut events| async move {
        loop {
            let feed = match events.recv().await {
                Ok(committed) => {
                    let mut changed = committed.coord.iter().filter_map(|event| match event {
                        CoordEvent::FsChanged { inodes, entries } => Some((inodes, entries)),
                        _ => None,
                    });
                    let Some((inodes, entries)) = changed.next() else { continue };
                    let (mut inodes, mut entries) = (inodes.clone(), entries.clone());
                    for (more_inodes, more_entries) in changed {
                        inodes.extend_from_slice(more_inodes);
                        entries.extend_from_slice(more_entries);
                    }
                    FsFeed::Changed { inodes, entries }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "the FUSE invalidation feed lagged; dropping every cached inode");
                    FsFeed::Lost
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            return Some((feed, events));
        }
    })
}

/// Changes queued for the notifying thread before the feed drops every cached inode instead.
const QUEUE: usize = 4096;

enum Change {
    Inode(u64),
    Entry(u64, String),
    /// The feed lost events: everything the kernel knows.
    All,
}

pub struct Invalidator {
    feed: tokio::task::JoinHandle<()>,
    sent: Arc<AtomicU64>,
}

impl Invalidator {
    /// Starts the thread and the feed; `ended` hears why either ended on its own (never after [`Invalidator::stop`]).
    pub fn start(
        notifier: Notifier,
        events: impl Stream<Item = FsFeed> + Send + 'static,
        fs: PandoFs,
        ended: impl FnOnce(String) + Send + 'static,
    ) -> Invalidator {
        let (queue, changes) = mpsc::sync_channel::<Change>(QUEUE);
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let known = fs.clone();
        let overflowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let overflow = overflowed.clone();
        let spawned = std::thread::Builder::new().name("pando-fuse-inval".into()).spawn(move || {
            // Ends when the feed (the only sender) is dropped.
            while let Ok(change) = changes.recv() {
                // Changes that did not fit the queue: one sweep of everything stands in for them.
                let change = if overflow.swap(false, Ordering::SeqCst) { Change::All } else { change };
                let done = match change {
                    Change::Inode(ino) => notify_inode(&notifier, ino),
                    Change::Entry(parent, name) => {
                        notifier.inval_entry(INodeNo(parent), std::ffi::OsStr::new(&name)).is_ok()
                    }
                    Change::All => {
                        for ino in known.known_inodes() {
                            notify_inode(&notifier, ino);
                        }
                        true
                    }
                };
                if done {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let feed = tokio::spawn(async move {
            if let Err(error) = spawned {
                return ended(format!("the cache invalidation thread could not start: {error}"));
            }
            let mut events = std::pin::pin!(events);
            while let Some(feed) = events.next().await {
                let changes = match feed {
                    FsFeed::Changed { inodes, entries } => changes_of(&inodes, &entries, &fs),
                    FsFeed::Lost => {
                        // Whatever was listed may have changed unheard.
                        fs.changed_unheard();
                        vec![Change::All]
                    }
                };
                for change in changes {
                    match queue.try_send(change) {
                        Ok(()) => {}
                        // The thread is behind (the queue is full, so it wakes soon): it sweeps everything next.
                        Err(mpsc::TrySendError::Full(_)) => overflowed.store(true, Ordering::SeqCst),
                        Err(mpsc::TrySendError::Disconnected(_)) => {
                            return ended("the cache invalidation thread ended".into());
                        }
                    }
                }
            }
            ended("the feed of the file system's changes ended".into());
        });
        Invalidator { feed, sent }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.feed.abort();
    }
}

fn notify_inode(notifier: &Notifier, ino: u64) -> bool {
    // Offset 0, length 0: the attributes and every cached page.
    notifier.inval_inode(INodeNo(ino), 0, 0).is_ok()
}

fn changes_of(inodes: &[u64], entries: &[(u64, String)], fs: &PandoFs) -> Vec<Change> {
    let mut changes = Vec::new();
    for ino in inodes {
        if fs.forget_version(*ino) {
            changes.push(Change::Inode(*ino));
        }
    }
    for (parent, name) in entries {
        if fs.is_known(*parent) {
            changes.push(Change::Entry(*parent, name.clone()));
        }
    }
    changes
}
