//! The write-back path of the mount's handlers ([`Shared`]) over a one-file backend whose size can change behind the
//! mount's back (as another node's writes change it): appends land at the end, and no open handle writes into a buffer
//! that flushes and stats no longer see. And the extended-attribute reads a listing answers without asking.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pando_protocol::coord::LeaseInfo;
use pando_protocol::error::WireError;
use pando_protocol::fs::{
    Attr, Caller, DirEntry, Errno, FileKind, FsCommandKind, FsQueryKind, FsQueryResponse, FsResponse, ROOT_INO,
    SessionRequest, Time, XattrMode,
};

use super::MountConfig;
use super::backend::{FsBackend, Later};
use super::filesystem::PandoFs;

const INO: u64 = 7;

/// One file's committed bytes (the one entry of the root), and whether it has extended attributes.
#[derive(Default)]
struct OneFile {
    bytes: Mutex<Vec<u8>>,
    xattrs: std::sync::atomic::AtomicBool,
}

/// A regular file's attributes (mode 0644, owned by root, every time the epoch), for the mount tests' backends.
pub(super) fn file_attr(ino: u64, size: u64, nlink: u32, parent: u64) -> Attr {
    let time = Time::default();
    Attr {
        ino,
        kind: FileKind::File,
        perm: 0o644,
        uid: 0,
        gid: 0,
        nlink,
        size,
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        rdev: 0,
        parent,
    }
}

impl OneFile {
    fn attr(&self) -> Attr {
        file_attr(INO, self.bytes.lock().unwrap().len() as u64, 1, 0)
    }

    /// Another node's write: the file as the cluster has it changes.
    fn append_elsewhere(&self, data: &[u8]) {
        self.bytes.lock().unwrap().extend_from_slice(data);
    }

    fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

fn unsupported<'a, T: Send + 'a>() -> Later<'a, T> {
    Box::pin(async { Err(WireError::internal("not in this test")) })
}

impl FsBackend for OneFile {
    fn command<'a>(&'a self, _caller: &'a Caller, kind: FsCommandKind, _timeout: Duration) -> Later<'a, FsResponse> {
        match kind {
            FsCommandKind::SetXattr { ino: INO, .. } => Box::pin(async move {
                self.xattrs.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(FsResponse::Done)
            }),
            _ => unsupported(),
        }
    }

    fn query<'a>(&'a self, _caller: &'a Caller, kind: FsQueryKind, _timeout: Duration) -> Later<'a, FsQueryResponse> {
        Box::pin(async move {
            match kind {
                FsQueryKind::GetAttr { ino: INO } => Ok(FsQueryResponse::Attr(self.attr())),
                FsQueryKind::GetAttr { ino: ROOT_INO } => {
                    Ok(FsQueryResponse::Attr(Attr { ino: ROOT_INO, kind: FileKind::Dir, ..self.attr() }))
                }
                FsQueryKind::ReadDirPlus { ino: ROOT_INO, .. } => {
                    let entry = DirEntry { ino: INO, kind: FileKind::File, name: "f".into() };
                    let any = self.xattrs.load(std::sync::atomic::Ordering::SeqCst);
                    Ok(FsQueryResponse::EntriesPlus {
                        entries: vec![(entry, self.attr())],
                        more: false,
                        with_xattrs: if any { vec![INO] } else { Vec::new() },
                    })
                }
                other => Err(WireError::internal(format!("not in this test: {other:?}"))),
            }
        })
    }

    fn session(&self, _request: SessionRequest, _timeout: Duration) -> Later<'_, Option<LeaseInfo>> {
        unsupported()
    }

    fn read_committed<'a>(
        &'a self,
        _caller: &'a Caller,
        _ino: u64,
        offset: u64,
        len: u32,
        _timeout: Duration,
    ) -> Later<'a, (u64, Vec<u8>)> {
        Box::pin(async move {
            let bytes = self.bytes.lock().unwrap();
            let start = (offset as usize).min(bytes.len());
            let end = (start + len as usize).min(bytes.len());
            Ok((bytes.len() as u64, bytes[start..end].to_vec()))
        })
    }

    fn write_extents<'a>(
        &'a self,
        _caller: &'a Caller,
        _ino: u64,
        extents: &'a [(u64, Vec<u8>)],
        _timeout: Duration,
    ) -> Later<'a, Attr> {
        Box::pin(async move {
            {
                let mut bytes = self.bytes.lock().unwrap();
                for (offset, data) in extents {
                    let end = *offset as usize + data.len();
                    if bytes.len() < end {
                        bytes.resize(end, 0);
                    }
                    bytes[*offset as usize..end].copy_from_slice(data);
                }
            }
            Ok(self.attr())
        })
    }

    fn truncate<'a>(
        &'a self,
        _caller: &'a Caller,
        _ino: u64,
        size: u64,
        _through_open_file: bool,
        _timeout: Duration,
    ) -> Later<'a, Attr> {
        Box::pin(async move {
            self.bytes.lock().unwrap().resize(size as usize, 0);
            Ok(self.attr())
        })
    }

    fn free_bytes(&self, _timeout: Duration) -> Later<'_, Option<u64>> {
        Box::pin(async { Ok(None) })
    }
}

fn mount(file: Arc<OneFile>) -> PandoFs {
    let config = MountConfig::new("/nowhere".into());
    PandoFs::new(file, config, tokio::runtime::Handle::current(), None)
}

#[tokio::test]
async fn an_append_goes_after_what_another_node_wrote_since_the_file_was_opened() {
    let file = Arc::new(OneFile::default());
    file.append_elsewhere(b"0123");
    let fs = mount(file.clone());
    let s = fs.shared();
    let caller = Caller::new(0, 0);
    let handle = s.open_handle(INO, true);
    file.append_elsewhere(b"4567");
    s.write(caller.clone(), handle, 0, b"ab".to_vec()).await.unwrap();
    s.write(caller.clone(), handle, 0, b"cd".to_vec()).await.unwrap();
    s.release(handle).await.unwrap();
    assert_eq!(file.contents(), b"01234567abcd");

    // After the flush the size is asked again: a write elsewhere between two appends is not overwritten.
    let handle = s.open_handle(INO, true);
    s.write(caller.clone(), handle, 0, b"ef".to_vec()).await.unwrap();
    s.flush(INO).await.unwrap();
    file.append_elsewhere(b"XY");
    s.write(caller, handle, 0, b"gh".to_vec()).await.unwrap();
    s.release(handle).await.unwrap();
    assert_eq!(file.contents(), b"01234567abcdefXYgh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_opened_while_the_last_one_closes_writes_into_the_buffer_that_is_flushed() {
    let file = Arc::new(OneFile::default());
    file.append_elsewhere(b"0123456789");
    let fs = mount(file.clone());
    let caller = Caller::new(0, 0);
    for round in 0..500u32 {
        let s = fs.shared();
        let first = s.open_handle(INO, false);
        s.write(caller.clone(), first, 0, vec![round as u8]).await.unwrap();
        s.flush(INO).await.unwrap();
        // The release of the first handle and the open and append of the next one run at once on two threads, as
        // the kernel sends them after a close and a new open.
        let releasing = fs.clone();
        let release = tokio::spawn(async move { releasing.shared().release(first).await });
        let (appending, caller) = (fs.clone(), caller.clone());
        let append = tokio::spawn(async move {
            let s = appending.shared();
            let next = s.open_handle(INO, true);
            s.write(caller, next, 0, vec![round as u8]).await?;
            s.release(next).await
        });
        release.await.unwrap().unwrap();
        append.await.unwrap().unwrap();
        let bytes = file.contents();
        assert_eq!(bytes.len(), 11 + round as usize, "round {round}: the append landed at the end");
        assert_eq!(bytes[0], round as u8);
        assert_eq!(*bytes.last().unwrap(), round as u8);
        assert!(s.buffer(INO).is_none(), "round {round}: no buffer is left once every handle is closed");
    }
}

#[tokio::test]
async fn a_fresh_listing_answers_ls_attribute_reads_of_an_entry_without_any_and_a_change_makes_the_mount_ask() {
    let file = Arc::new(OneFile::default());
    let fs = mount(file.clone());
    let s = fs.shared();
    let caller = Caller::new(0, 0);
    let answer = |name: &str| s.xattr_shortcut(INO, name).map(|error| Errno::of(&error));
    assert_eq!(answer("security.selinux"), None, "nothing listed yet: the cluster is asked");

    s.rows(&super::shared::Listing::default(), &caller, ROOT_INO, 0).await.unwrap();
    assert_eq!(answer("security.selinux"), Some(Errno::ENODATA.code()));
    assert_eq!(answer("trusted.x"), Some(Errno::ENODATA.code()));
    assert_eq!(answer("system.posix_acl_access"), Some(Errno::EOPNOTSUPP.code()), "no ACLs");
    assert_eq!(answer("user.x"), None, "a user attribute's read checks the caller's permission: asked");
    assert_eq!(s.xattr_shortcut(ROOT_INO, "security.selinux").map(|error| Errno::of(&error)), None, "`.` is not");

    // A change through this mount (here, the attribute itself) makes every hint stale at once, before the commit
    // stream says so.
    let tag = FsCommandKind::SetXattr {
        ino: INO,
        name: "security.tag".into(),
        value: vec![1].into(),
        mode: XattrMode::Either,
    };
    s.command(&caller, tag).await.unwrap();
    assert_eq!(answer("security.tag"), None);
    s.rows(&super::shared::Listing::default(), &caller, ROOT_INO, 0).await.unwrap();
    assert_eq!(answer("security.selinux"), None, "listed with an attribute: every read is asked");
}

/// Whether this machine can mount (`/dev/fuse` and `fusermount3`); with `PANDO_REQUIRE_FUSE` set it must.
fn can_mount() -> bool {
    let usable = std::path::Path::new("/dev/fuse").exists()
        && std::process::Command::new("fusermount3").arg("-V").output().is_ok_and(|output| output.status.success());
    assert!(
        usable || std::env::var_os("PANDO_REQUIRE_FUSE").is_none(),
        "PANDO_REQUIRE_FUSE is set but fuse3 is missing"
    );
    usable
}

/// Detaches whatever is still mounted at a path when dropped (a failing test leaves no mount behind).
struct Detach(std::path::PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fusermount3").arg("-uz").arg(&self.0).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_whose_feed_of_changes_ends_on_its_own_tells_its_owner_it_ended() {
    if !can_mount() {
        eprintln!("skipped: /dev/fuse or fusermount3 is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    std::fs::create_dir(&point).unwrap();
    let _detach = Detach(point.clone());
    // The feed says once that it lost changes (a sweep of what the kernel knows), then ends: a closed commit stream.
    let feed = futures::stream::iter([super::FsFeed::Lost]);
    let (told, heard) = tokio::sync::oneshot::channel();
    let backend: Arc<dyn FsBackend> = Arc::new(OneFile::default());
    let mut mounted = super::Mount::start(MountConfig::new(point.clone()), backend, None, feed, move |why| {
        let _ = told.send(why);
    })
    .await
    .unwrap();
    let why =
        tokio::time::timeout(Duration::from_secs(10), heard).await.expect("the mount's owner heard of it").unwrap();
    assert!(why.contains("feed of the file system's changes ended"), "{why}");
    mounted.stop().await;
}
