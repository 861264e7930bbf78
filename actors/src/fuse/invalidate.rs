//! Drops what the kernel cached of inodes and names that changed, from the commit stream (`fs.changed` events,
//! whichever member's write caused them): the attributes and pages of each changed inode the kernel knows, and each
//! changed name under a directory it knows. A subscriber that lagged behind the stream drops every inode the kernel
//! knows (names then live at most their entry TTL).
//!
//! The notifications go out from a thread of their own, never from a request handler or the runtime: the kernel may
//! hold a lock on the very inode being invalidated while it waits for a reply to a request, and that reply comes from
//! the runtime, which must never wait on the notification.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use fuser::{INodeNo, Notifier};
use pando_protocol::coord::CoordEvent;
use tokio::sync::broadcast;

use super::PandoFs;
use crate::commit_stream::Committed;

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
    pub fn start(notifier: Notifier, mut events: broadcast::Receiver<Arc<Committed>>, fs: PandoFs) -> Invalidator {
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
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the FUSE invalidation thread: caches live their TTLs");
        }
        let feed = tokio::spawn(async move {
            loop {
                let changes = match events.recv().await {
                    Ok(committed) => changes_of(&committed, &fs),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "the FUSE invalidation feed lagged; dropping every cached inode");
                        vec![Change::All]
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for change in changes {
                    match queue.try_send(change) {
                        Ok(()) => {}
                        // The thread is behind (the queue is full, so it wakes soon): it sweeps everything next.
                        Err(mpsc::TrySendError::Full(_)) => overflowed.store(true, Ordering::SeqCst),
                        Err(mpsc::TrySendError::Disconnected(_)) => return,
                    }
                }
            }
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

fn changes_of(committed: &Committed, fs: &PandoFs) -> Vec<Change> {
    let mut changes = Vec::new();
    for event in &committed.coord {
        let CoordEvent::FsChanged { inodes, entries } = event else { continue };
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
    }
    changes
}
