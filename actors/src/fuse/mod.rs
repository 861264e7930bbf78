//! The FUSE mount: the cluster's file system (the `fs` state machine, through the [`FsService`]) as a POSIX file
//! system on this node, when it runs with `--mount PATH`.
//!
//! - **One actor per mount.** The [`FuseActor`] (child `fuse` of the root) owns the kernel session: it clears a mount
//!   a crashed node left behind, mounts, runs the session's request loop on threads of its own, and unmounts when it
//!   stops (node shutdown, SIGTERM). A session that ends under it (an outside `umount`, a kernel error) fails the
//!   actor, and its supervisor mounts again.
//! - **Handlers never wait.** The kernel's requests arrive on the session's threads; each handler hands its request
//!   to a task on the node's runtime and returns ([`filesystem`]), with at most [`FUSE_INFLIGHT_MAX`] in flight (the
//!   session's threads wait beyond that, so the kernel queues instead of the node's memory).
//! - **Coherence.** Every read goes through a read index (a mount sees every write acknowledged anywhere before it
//!   asked); `open` compares the file's version with what the kernel cached and keeps the page cache only when it
//!   did not change (close-to-open); `flush` (every `close`) and `fsync` return once the buffered writes are
//!   committed on a quorum. The kernel's attribute, entry and page caches are dropped from the commit stream by a
//!   thread of their own ([`invalidate`]), never from inside a handler (where a notification can deadlock on a lock
//!   the kernel holds for the very request being served).
//! - **`.pando/`** at the root is a read-only view of the coordination state ([`view`]).
//! - **Locks** (`fcntl` and `flock`) are the cluster's, held through a lease of the mount's ([`locks`]): a node that
//!   dies takes its locks with it when the lease lapses.

pub mod backend;
mod buffer;
#[cfg(test)]
mod buffering_tests;
mod convert;
pub mod filesystem;
mod invalidate;
#[cfg(test)]
mod keep_tests;
mod locks;
mod mountpoint;
mod owners;
mod removal;
mod shared;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::services::FsService;
use crate::storage_actor::StorageHandle;
use crate::supervision::{ActorDetail, ChildSpec, Control, Restart};
pub use backend::FsBackend;
pub use filesystem::PandoFs;
pub use invalidate::FsFeed;
pub use mountpoint::{MountError, check as check_mount_point};

/// Kernel requests served at once; the session's threads wait for a slot beyond that.
pub const FUSE_INFLIGHT_MAX: usize = 256;
/// Lock requests that wait for a lock at once (`F_SETLKW`, `flock` without `LOCK_NB`), outside the slots of
/// [`FUSE_INFLIGHT_MAX`]; one more is refused with `ENOLCK`.
pub const FUSE_LOCK_WAITERS_MAX: usize = 1024;
/// Bytes one open inode buffers before a write flushes them (with `--mount-write-back`).
pub const FUSE_WRITE_BUFFER_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Separate extents one open inode buffers before a write flushes them (each costs an allocation and a place in
/// the write-back's requests, so many tiny scattered writes are bounded too).
pub const FUSE_WRITE_BUFFER_EXTENTS_MAX: usize = 4096;
/// Entries one directory listing holds (a larger directory lists its first this many and says so in the log).
pub const FUSE_LIST_ENTRIES_MAX: usize = 1_000_000;
/// Listed inodes whose extended-attribute hint a mount keeps (all are dropped when a listing would pass it).
pub const FUSE_XATTR_HINTS_MAX: usize = 65_536;
/// Threads reading the kernel's requests.
const SESSION_THREADS: usize = 2;
/// How long one file-system operation may take before the caller sees `EIO`.
pub const FUSE_OP_TIMEOUT_MS: u64 = 30_000;
/// How long an unmount spends writing back what the mount buffered, before and again after the kernel session ends.
const FUSE_STOP_FLUSH_MS: u64 = 4_000;
/// How long the FuseActor's stop may take: two write-backs, the unmount's wait for the session, the lease's revoke.
/// Within the node's whole shutdown (`pando-node`'s `SHUTDOWN_TIMEOUT_MS`, 20 s), which must stay above it.
pub const FUSE_STOP_MS: u64 = 19_000;
const _: () = assert!(
    2 * FUSE_STOP_FLUSH_MS + mountpoint::UNMOUNT_JOIN_TIMEOUT.as_millis() as u64 + 2 * locks::END_TIMEOUT_MS
        < FUSE_STOP_MS
);
const _: () = assert!(FUSE_WRITE_BUFFER_BYTES_MAX as u64 >= pando_protocol::limits::FS_CHUNK_BYTES);

/// One uid or gid mapping: `local` (as processes on this machine see it) is stored as `stored`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdPair {
    pub local: u32,
    pub stored: u32,
}

/// How local uids and gids map to the ones the file system stores (identity where no pair names them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    pub uids: Vec<IdPair>,
    pub gids: Vec<IdPair>,
}

impl IdMap {
    pub fn uid_to_stored(&self, uid: u32) -> u32 {
        map(&self.uids, uid, |pair| (pair.local, pair.stored))
    }
    pub fn gid_to_stored(&self, gid: u32) -> u32 {
        map(&self.gids, gid, |pair| (pair.local, pair.stored))
    }
    pub fn uid_to_local(&self, uid: u32) -> u32 {
        map(&self.uids, uid, |pair| (pair.stored, pair.local))
    }
    pub fn gid_to_local(&self, gid: u32) -> u32 {
        map(&self.gids, gid, |pair| (pair.stored, pair.local))
    }

    /// The maps of `--uid-map` and `--gid-map` pairs (`LOCAL:STORED` each).
    pub fn parse(uids: &[String], gids: &[String]) -> Result<IdMap, MountError> {
        let pairs = |texts: &[String]| texts.iter().map(|text| IdMap::parse_pair(text)).collect::<Result<Vec<_>, _>>();
        Ok(IdMap { uids: pairs(uids)?, gids: pairs(gids)? })
    }

    /// Parses `LOCAL:STORED`.
    pub fn parse_pair(text: &str) -> Result<IdPair, MountError> {
        let bad = || MountError::Option(format!("{text:?} is not LOCAL:STORED (two numeric ids)"));
        let (local, stored) = text.split_once(':').ok_or_else(bad)?;
        Ok(IdPair {
            local: local.trim().parse().map_err(|_| bad())?,
            stored: stored.trim().parse().map_err(|_| bad())?,
        })
    }
}

fn map(pairs: &[IdPair], id: u32, sides: impl Fn(&IdPair) -> (u32, u32)) -> u32 {
    pairs.iter().map(sides).find(|(from, _)| *from == id).map_or(id, |(_, to)| to)
}

/// How this node mounts the file system (`--mount` and its options).
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub path: PathBuf,
    /// Other users may use the mount (`allow_other`; needs root or `user_allow_other` in `/etc/fuse.conf`).
    pub allow_other: bool,
    pub read_only: bool,
    /// How long the kernel trusts an inode's attributes and a name's lookup without asking again (the commit stream
    /// drops them sooner when they change).
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    /// Buffer writes per inode until `close`, `fsync`, a truncate, or the buffer's bound (reads see them); without it
    /// every `write` is committed before it returns.
    pub write_back: bool,
    pub ids: IdMap,
}

impl MountConfig {
    pub fn new(path: PathBuf) -> MountConfig {
        MountConfig {
            path,
            allow_other: false,
            read_only: false,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            write_back: true,
            ids: IdMap::default(),
        }
    }
}

#[derive(Clone)]
pub struct FuseArgs {
    pub config: MountConfig,
    pub fs: FsService,
    /// What the `.pando/` view reads from.
    pub view: view::ViewSources,
    pub storage: StorageHandle,
}

pub fn child_spec(args: FuseArgs) -> ChildSpec {
    ChildSpec::new("fuse", Restart::Permanent, FuseActor, args)
        .with_shutdown_timeout(Duration::from_millis(FUSE_STOP_MS))
}

pub enum FuseMsg {
    /// The session's request loop returned (the mount is gone).
    Ended(String),
    Control(Control),
}
impl ractor::Message for FuseMsg {}
impl From<Control> for FuseMsg {
    fn from(control: Control) -> FuseMsg {
        FuseMsg::Control(control)
    }
}

/// A mounted file system with what keeps it coherent: the kernel session, the invalidation feed and the lock
/// lease's renewer. The node's [`FuseActor`] holds one, and so does `pando mount`.
pub struct Mount {
    mounted: mountpoint::Mounted,
    invalidator: invalidate::Invalidator,
    fs: PandoFs,
    /// Keeps the mount's lock lease alive.
    renewer: tokio::task::JoinHandle<()>,
}

impl Mount {
    /// Mounts `fs` at `config.path` (clearing a mount a crash left there), with the `.pando/` view when `view`
    /// names its sources, dropping the kernel's caches from `feed`. `ended` hears why the mount ended when it ends
    /// on its own: its kernel session (an outside `umount`, a kernel error) or its cache invalidation (the feed or its
    /// thread), whichever ends first. Runs on the current tokio runtime.
    pub async fn start(
        config: MountConfig,
        fs: Arc<dyn FsBackend>,
        view: Option<Arc<dyn view::ViewSource>>,
        feed: impl futures::Stream<Item = FsFeed> + Send + 'static,
        ended: impl FnOnce(String) + Send + 'static,
    ) -> Result<Mount, MountError> {
        let fs = PandoFs::new(fs, config.clone(), tokio::runtime::Handle::current(), view);
        let once = Arc::new(std::sync::Mutex::new(Some(ended)));
        let end = move |why: String| {
            let ended = once.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            if let Some(ended) = ended {
                ended(why);
            }
        };
        let mounted = mountpoint::mount(&config, fs.clone(), end.clone()).await?;
        let invalidator = invalidate::Invalidator::start(mounted.notifier(), feed, fs.clone(), end);
        let renewer = tokio::spawn({
            let fs = fs.clone();
            async move { fs.renew_locks().await }
        });
        tracing::info!(path = %config.path.display(), "file system mounted");
        Ok(Mount { mounted, invalidator, fs, renewer })
    }

    pub fn path(&self) -> &std::path::Path {
        self.mounted.path()
    }

    /// One line on the mount: its path, what it holds, and how many cache drops it sent.
    pub fn summary(&self) -> String {
        format!("{} mounted; {}; {} invalidations", self.path().display(), self.fs.summary(), self.invalidator.sent())
    }

    /// Writes back what the mount buffered, unmounts, writes back what was written meanwhile, and releases the
    /// mount's locks. Each write-back is bounded ([`FUSE_STOP_FLUSH_MS`]; what is left is logged as lost), so the
    /// whole stop fits the actor's shutdown time.
    pub async fn stop(&mut self) {
        self.invalidator.stop();
        let budget = Duration::from_millis(FUSE_STOP_FLUSH_MS);
        self.fs.flush_all(budget).await;
        self.mounted.unmount().await;
        // Writes that came in while the first write-back ran (no request comes once the session ended).
        self.fs.flush_all(budget).await;
        // The lease is renewed until it is revoked: a long flush must not let the locks lapse while their
        // processes still run.
        self.fs.end_locks().await;
        self.renewer.abort();
    }
}

impl Drop for Mount {
    /// A mount dropped without [`Mount::stop`] (its actor killed) stops renewing its lock lease, so its locks lapse.
    fn drop(&mut self) {
        self.renewer.abort();
        self.invalidator.stop();
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct FuseActor;

pub struct FuseState {
    mount: Mount,
}

impl Actor for FuseActor {
    type Msg = FuseMsg;
    type State = FuseState;
    type Arguments = FuseArgs;

    async fn pre_start(&self, myself: ActorRef<FuseMsg>, args: FuseArgs) -> Result<FuseState, ActorProcessingErr> {
        let feed = invalidate::commit_feed(args.storage.subscribe());
        let ended = move |outcome| {
            let _ = myself.cast(FuseMsg::Ended(outcome));
        };
        let mount = Mount::start(args.config, Arc::new(args.fs), Some(Arc::new(args.view)), feed, ended).await?;
        Ok(FuseState { mount })
    }

    async fn handle(
        &self,
        _myself: ActorRef<FuseMsg>,
        message: FuseMsg,
        state: &mut FuseState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            FuseMsg::Ended(outcome) => {
                return Err(format!("the FUSE session at {} ended: {outcome}", state.mount.path().display()).into());
            }
            FuseMsg::Control(Control::InjectPanic) => panic!("fault injection: FUSE actor panics on request"),
            FuseMsg::Control(Control::Status(reply, _)) => {
                let _ = reply.send(ActorDetail::line(state.mount.summary()));
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<FuseMsg>, state: &mut FuseState) -> Result<(), ActorProcessingErr> {
        state.mount.stop().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_translate_both_ways_and_leave_other_ids_alone() {
        let ids = IdMap {
            uids: vec![IdMap::parse_pair("1000:0").unwrap()],
            gids: vec![IdMap::parse_pair(" 100 : 5 ").unwrap()],
        };
        assert_eq!(ids.uid_to_stored(1000), 0);
        assert_eq!(ids.uid_to_local(0), 1000);
        assert_eq!(ids.uid_to_stored(7), 7);
        assert_eq!(ids.gid_to_stored(100), 5);
        assert_eq!(ids.gid_to_local(5), 100);
        assert!(IdMap::parse_pair("1000").is_err());
        assert!(IdMap::parse_pair("a:b").is_err());
    }
}
