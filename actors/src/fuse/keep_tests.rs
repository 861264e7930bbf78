//! The mount's keeping of files removed while open ([`Shared::remove_name`] and the session's keep and let-go) over a
//! one-name backend that records what the session keeps, with the races the kernel makes: a close's release
//! arrives after `close` returned, so `close; unlink` sends the release and the unlink at once. Nothing may stay kept
//! once no handle is open, or the file and its chunks stay for the session's life. And an open the kernel sends after
//! it resolved a name that a removal is taking away waits for the removal (`removal.rs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pando_protocol::coord::LeaseInfo;
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::fs::{
    Attr, Caller, Errno, FsCommandKind, FsQueryKind, FsQueryResponse, FsResponse, ROOT_INO, SessionRequest,
};
use tokio::sync::Notify;

use super::MountConfig;
use super::backend::{FsBackend, Later};
use super::buffering_tests::file_attr;
use super::filesystem::PandoFs;

const INO: u64 = 9;
const LEASE: u64 = 77;

/// One file named `f` in the root, and what the mount's session keeps of it.
#[derive(Default)]
struct OneName {
    linked: AtomicBool,
    kept: Mutex<HashSet<u64>>,
    /// Every keep and let-go asked, in order.
    asked: Mutex<Vec<&'static str>>,
    /// While set, a keep waits for `go` (after saying so through `waiting`).
    hold_keep: AtomicBool,
    waiting: Notify,
    go: Notify,
    /// While set, a keep commits and then answers a timeout (its outcome unknown to the mount).
    keep_times_out: AtomicBool,
    /// While set, an unlink waits for `go` (after saying so through `waiting`).
    hold_unlink: AtomicBool,
}

impl OneName {
    fn new() -> Arc<Self> {
        let name = OneName::default();
        name.linked.store(true, Ordering::SeqCst);
        Arc::new(name)
    }

    fn attr(&self) -> Attr {
        file_attr(INO, 0, u32::from(self.linked.load(Ordering::SeqCst)), ROOT_INO)
    }

    fn kept(&self) -> bool {
        self.kept.lock().unwrap().contains(&INO)
    }

    fn asked(&self) -> Vec<&'static str> {
        self.asked.lock().unwrap().clone()
    }
}

fn not_here<'a, T: Send + 'a>(what: String) -> Later<'a, T> {
    Box::pin(async move { Err(WireError::internal(format!("not in this test: {what}"))) })
}

impl FsBackend for OneName {
    fn command<'a>(&'a self, _caller: &'a Caller, kind: FsCommandKind, _timeout: Duration) -> Later<'a, FsResponse> {
        Box::pin(async move {
            match kind {
                FsCommandKind::KeepOpen { ino: INO, lease: LEASE } => {
                    if self.hold_keep.load(Ordering::SeqCst) {
                        self.waiting.notify_one();
                        self.go.notified().await;
                    }
                    self.asked.lock().unwrap().push("keep");
                    self.kept.lock().unwrap().insert(INO);
                    if self.keep_times_out.load(Ordering::SeqCst) {
                        return Err(WireError::new(ErrorCode::Timeout, "the keep's outcome is unknown"));
                    }
                    Ok(FsResponse::Done)
                }
                FsCommandKind::ReleaseKept { ino: INO, lease: LEASE } => {
                    self.asked.lock().unwrap().push("let go");
                    self.kept.lock().unwrap().remove(&INO);
                    Ok(FsResponse::Done)
                }
                FsCommandKind::Unlink { parent: ROOT_INO, .. } => {
                    if self.hold_unlink.load(Ordering::SeqCst) {
                        self.waiting.notify_one();
                        self.go.notified().await;
                    }
                    self.linked.store(false, Ordering::SeqCst);
                    Ok(FsResponse::Done)
                }
                other => Err(WireError::internal(format!("not in this test: {other:?}"))),
            }
        })
    }

    fn query<'a>(&'a self, _caller: &'a Caller, kind: FsQueryKind, _timeout: Duration) -> Later<'a, FsQueryResponse> {
        Box::pin(async move {
            match kind {
                FsQueryKind::Lookup { parent: ROOT_INO, .. } if self.linked.load(Ordering::SeqCst) => {
                    Ok(FsQueryResponse::Attr(self.attr()))
                }
                FsQueryKind::Access { ino: INO, .. } => Ok(FsQueryResponse::Allowed),
                // A file with no name and no keeper is gone.
                FsQueryKind::GetAttr { ino: INO } if self.linked.load(Ordering::SeqCst) || self.kept() => {
                    Ok(FsQueryResponse::Attr(self.attr()))
                }
                FsQueryKind::GetAttr { ino: INO } => Err(Errno::ENOENT.error("no such inode")),
                other => Err(WireError::internal(format!("not in this test: {other:?}"))),
            }
        })
    }

    fn session(&self, request: SessionRequest, _timeout: Duration) -> Later<'_, Option<LeaseInfo>> {
        let SessionRequest::Grant { ttl_ms } = request else { return not_here(format!("{request:?}")) };
        Box::pin(async move {
            Ok(Some(LeaseInfo {
                id: LEASE,
                prefix: Default::default(),
                ttl_ms,
                deadline_ms: ttl_ms,
                locks: Vec::new(),
                keys: Vec::new(),
                semaphores: Vec::new(),
                rwlocks: Vec::new(),
                elections: Vec::new(),
                barriers: Vec::new(),
                services: Vec::new(),
                files: Vec::new(),
                kept: Vec::new(),
            }))
        })
    }

    fn read_committed<'a>(
        &'a self,
        _caller: &'a Caller,
        ino: u64,
        _offset: u64,
        _len: u32,
        _timeout: Duration,
    ) -> Later<'a, (u64, Vec<u8>)> {
        not_here(format!("a read of {ino}"))
    }

    fn write_extents<'a>(
        &'a self,
        _caller: &'a Caller,
        ino: u64,
        _extents: &'a [(u64, Vec<u8>)],
        _timeout: Duration,
    ) -> Later<'a, Attr> {
        not_here(format!("a write of {ino}"))
    }

    fn truncate<'a>(
        &'a self,
        _caller: &'a Caller,
        ino: u64,
        _size: u64,
        _through_open_file: bool,
        _timeout: Duration,
    ) -> Later<'a, Attr> {
        not_here(format!("a truncate of {ino}"))
    }

    fn free_bytes(&self, _timeout: Duration) -> Later<'_, Option<u64>> {
        Box::pin(async { Ok(None) })
    }
}

fn mount(name: Arc<OneName>) -> PandoFs {
    PandoFs::new(name, MountConfig::new("/nowhere".into()), tokio::runtime::Handle::current(), None)
}

fn unlink() -> FsCommandKind {
    FsCommandKind::Unlink { parent: ROOT_INO, name: "f".into() }
}

#[tokio::test]
async fn a_file_removed_while_open_is_kept_until_its_last_close_lets_it_go() {
    let name = OneName::new();
    let fs = mount(name.clone());
    let s = fs.shared();
    let handle = s.open_handle(INO, false);
    s.remove_name(&Caller::ROOT, ROOT_INO, "f", unlink()).await.unwrap();
    assert!(name.kept(), "the open handle's file is kept past its unlink");
    s.release(handle).await.unwrap();
    assert!(!name.kept(), "the last close let go");
    assert_eq!(name.asked(), ["keep", "let go"]);
}

#[tokio::test]
async fn a_last_close_that_lands_while_the_keep_is_asked_still_lets_the_file_go() {
    let name = OneName::new();
    let fs = mount(name.clone());
    let handle = fs.shared().open_handle(INO, false);
    name.hold_keep.store(true, Ordering::SeqCst);
    let removing = fs.clone();
    let remove =
        tokio::spawn(async move { removing.shared().remove_name(&Caller::ROOT, ROOT_INO, "f", unlink()).await });
    name.waiting.notified().await;
    // The close's release runs while the keep is on its way: it finds nothing kept yet.
    fs.shared().release(handle).await.unwrap();
    name.go.notify_one();
    remove.await.unwrap().unwrap();
    assert!(!name.kept(), "nothing is kept once no handle is open (the file would stay for the session's life)");
    assert_eq!(name.asked(), ["keep", "let go"]);
}

#[tokio::test]
async fn a_keep_of_unknown_outcome_fails_the_removal_and_is_let_go_before_the_next_keep() {
    let name = OneName::new();
    let fs = mount(name.clone());
    let s = fs.shared();
    let handle = s.open_handle(INO, false);
    name.keep_times_out.store(true, Ordering::SeqCst);
    let refused = s.remove_name(&Caller::ROOT, ROOT_INO, "f", unlink()).await.unwrap_err();
    assert_eq!(Errno::of(&refused), Errno::EBUSY.code(), "{refused:?}");
    assert!(name.linked.load(Ordering::SeqCst), "the name stays when its file could not be kept");

    // The next removal lets go of the unknown keep first, so that a late let-go cannot drop the keep it makes.
    name.keep_times_out.store(false, Ordering::SeqCst);
    s.remove_name(&Caller::ROOT, ROOT_INO, "f", unlink()).await.unwrap();
    assert!(name.kept());
    s.release(handle).await.unwrap();
    assert!(!name.kept());
    assert_eq!(name.asked(), ["keep", "let go", "keep", "let go"]);
}

#[tokio::test]
async fn an_open_that_lands_while_its_name_is_removed_waits_and_finds_the_file_gone() {
    let name = OneName::new();
    let fs = mount(name.clone());
    name.hold_unlink.store(true, Ordering::SeqCst);
    let removing = fs.clone();
    // Nothing is open, so the removal looks nothing up: the open arrives once the kernel resolved the name.
    let remove =
        tokio::spawn(async move { removing.shared().remove_name(&Caller::ROOT, ROOT_INO, "f", unlink()).await });
    name.waiting.notified().await;
    let opening = fs.clone();
    let open = tokio::spawn(async move { opening.shared().open_file(&Caller::ROOT, INO, 4, false).await });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!open.is_finished(), "the open waits for the removal under way");
    name.go.notify_one();
    remove.await.unwrap().unwrap();
    let refused = open.await.unwrap().unwrap_err();
    assert_eq!(Errno::of(&refused), Errno::ENOENT.code(), "the removal came first: {refused:?}");
    assert!(!fs.shared().is_open(INO), "the handle it began is closed again");
    assert!(!name.kept(), "nothing is kept for it");

    // With no removal under way, an open answers at once (and a removal then keeps the file for it).
    let name = OneName::new();
    let fs = mount(name.clone());
    let (handle, _) = fs.shared().open_file(&Caller::ROOT, INO, 4, false).await.unwrap();
    fs.shared().remove_name(&Caller::ROOT, ROOT_INO, "f", unlink()).await.unwrap();
    assert!(name.kept());
    fs.shared().release(handle).await.unwrap();
    assert!(!name.kept());
}
