//! The file system's state machine over the in-memory tables, as a POSIX semantics suite: each error code where
//! Linux gives it, permission checks as a non-root caller (sticky directories, set-gid inheritance, set-uid and
//! set-gid clearing on write and chown), timestamps each operation updates, data inline and as chunks of
//! reference-counted blobs, extended attributes, files kept open past their last name; and a property test that
//! random namespace operations (and sessions keeping files, letting go and ending) keep the invariants, and that
//! every refused command leaves the tables as they were.

use proptest::prelude::*;

use super::query::query;
use super::*;
use crate::blob::{BlobCommand, BlobHash};
use crate::command::{Command, CommandOutput, Proposal};
use crate::coord::CoordEvent;
use crate::memory_tables::MemoryTables;
use crate::state_machine::apply_proposal;

/// 2026-12-05T00:00:00Z.
const T0: u64 = 1_796_428_800_000;
const ALICE: u32 = 1000;
const BOB: u32 = 1001;
const STAFF: u32 = 50;

fn alice() -> Caller {
    Caller { uid: ALICE, gid: ALICE, groups: vec![STAFF] }
}

fn bob() -> Caller {
    Caller::new(BOB, BOB)
}

#[derive(Default)]
struct Fs {
    tables: MemoryTables,
    revision: u64,
    now: u64,
}

impl Fs {
    fn new() -> Fs {
        Fs { now: T0, ..Fs::default() }
    }

    fn run_as(&mut self, caller: &Caller, kind: FsCommandKind) -> Result<FsResponse, WireError> {
        self.now += 1;
        let command = Command::Fs(FsCommand { caller: caller.clone(), kind });
        let proposal = Proposal { stamp_ms: self.now, commands: vec![command] };
        let mut outcome = apply_proposal(&mut self.tables, &mut self.revision, &proposal).expect("no faults");
        outcome.results.remove(0).map(|output| match output {
            CommandOutput::Fs(response) => response,
            other => panic!("unexpected {other:?}"),
        })
    }

    fn run(&mut self, kind: FsCommandKind) -> Result<FsResponse, WireError> {
        self.run_as(&Caller::ROOT, kind)
    }

    fn ask_as(&self, caller: &Caller, kind: FsQueryKind) -> Result<FsQueryResponse, WireError> {
        query(&self.tables, &FsQuery { caller: caller.clone(), kind }).expect("no faults")
    }

    fn attr(&self, ino: u64) -> Attr {
        match self.ask_as(&Caller::ROOT, FsQueryKind::GetAttr { ino }) {
            Ok(FsQueryResponse::Attr(attr)) => attr,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn lookup(&self, parent: u64, name: &str) -> Result<Attr, WireError> {
        match self.ask_as(&Caller::ROOT, FsQueryKind::Lookup { parent, name: name.into() })? {
            FsQueryResponse::Attr(attr) => Ok(attr),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn names(&self, ino: u64) -> Vec<String> {
        match self.ask_as(&Caller::ROOT, FsQueryKind::ReadDir { ino, after: None, limit: 1_000 }) {
            Ok(FsQueryResponse::Entries { entries, .. }) => entries.into_iter().map(|entry| entry.name).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn mkdir_as(&mut self, caller: &Caller, parent: u64, name: &str, perm: u32) -> Attr {
        match self.run_as(caller, FsCommandKind::Mkdir { parent, name: name.into(), perm }) {
            Ok(FsResponse::Attr(attr)) => attr,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Attr {
        self.mkdir_as(&Caller::ROOT, parent, name, 0o755)
    }

    fn create_as(&mut self, caller: &Caller, parent: u64, name: &str, perm: u32) -> Attr {
        match self.run_as(caller, create(parent, name, perm)) {
            Ok(FsResponse::Attr(attr)) => attr,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn create(&mut self, parent: u64, name: &str) -> Attr {
        self.create_as(&Caller::ROOT, parent, name, 0o644)
    }

    fn write_as(&mut self, caller: &Caller, ino: u64, offset: u64, data: &[u8]) -> Result<FsResponse, WireError> {
        self.run_as(
            caller,
            FsCommandKind::Write { ino, offset, data: data.to_vec().into(), append: false, answer_attr: false },
        )
    }

    fn read(&self, ino: u64) -> (u64, FileData) {
        match self.ask_as(&Caller::ROOT, FsQueryKind::Read { ino, first_chunk: 0, most: 1_000 }) {
            Ok(FsQueryResponse::Data { size, data }) => (size, data),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn set_as(&mut self, caller: &Caller, ino: u64, set: SetAttr) -> Result<FsResponse, WireError> {
        self.run_as(caller, FsCommandKind::SetAttr { ino, set })
    }

    /// A blob the cluster holds, of `size` bytes.
    fn blob(&mut self, seed: u8, size: u64) -> BlobRef {
        let blob = BlobRef { hash: BlobHash::from_slice(&[seed; 32]).unwrap(), size };
        let added = BlobCommand::Added { blob, holder: 1, replicas: 1, pin: false, gc_grace_ms: 60_000 };
        let proposal = Proposal { stamp_ms: self.now, commands: vec![Command::Blob(added)] };
        apply_proposal(&mut self.tables, &mut self.revision, &proposal).unwrap().results.remove(0).unwrap();
        blob
    }

    /// A mount's session: a lease of no prefix.
    fn lease(&mut self) -> u64 {
        self.coord(crate::coord::CoordRequest::LeaseGrant { ttl_ms: 10_000, prefix: Bytes::default() })
    }

    fn end_lease(&mut self, lease: u64) {
        self.coord(crate::coord::CoordRequest::LeaseRevoke { lease, prefix: Bytes::default() });
    }

    fn coord(&mut self, request: crate::coord::CoordRequest) -> u64 {
        self.now += 1;
        let proposal = Proposal { stamp_ms: self.now, commands: vec![Command::Coord(request)] };
        match apply_proposal(&mut self.tables, &mut self.revision, &proposal).unwrap().results.remove(0) {
            Ok(CommandOutput::Coord(crate::coord::CoordResponse::Lease { lease })) => lease.id,
            Ok(_) => 0,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn totals(&self) -> FsTotals {
        let FsQueryResponse::StatFs(totals) = self.ask_as(&Caller::ROOT, FsQueryKind::StatFs).unwrap() else {
            panic!()
        };
        totals
    }

    fn blob_refs(&self, blob: &BlobRef) -> u64 {
        crate::blob::load(&self.tables, &blob.hash).unwrap().map(|record| record.kv_refs).unwrap_or(0)
    }
}

fn create(parent: u64, name: &str, perm: u32) -> FsCommandKind {
    FsCommandKind::Create { parent, name: name.into(), kind: FileKind::File, perm, rdev: 0, exclusive: true }
}

fn errno<T: std::fmt::Debug>(result: Result<T, WireError>) -> i32 {
    Errno::of(&result.expect_err("refused"))
}

fn rename(parent: u64, name: &str, new_parent: u64, new_name: &str, mode: RenameMode) -> FsCommandKind {
    FsCommandKind::Rename { parent, name: name.into(), new_parent, new_name: new_name.into(), mode }
}

#[test]
fn creating_gives_the_attributes_and_link_counts_linux_gives() {
    let mut fs = Fs::new();
    let dir = fs.mkdir(ROOT_INO, "d");
    assert_eq!((dir.kind, dir.nlink, dir.perm, dir.parent), (FileKind::Dir, 2, 0o755, ROOT_INO));
    let root = fs.attr(ROOT_INO);
    assert_eq!((root.nlink, root.size), (3, 1), "the root's `..` count and its one entry");
    let file = fs.create(dir.ino, "f");
    assert_eq!((file.kind, file.nlink, file.size, file.perm), (FileKind::File, 1, 0, 0o644));
    let link = fs.run(FsCommandKind::Link { ino: file.ino, parent: ROOT_INO, name: "hard".into() }).unwrap();
    assert!(matches!(link, FsResponse::Attr(Attr { nlink: 2, .. })));
    assert_eq!(fs.lookup(ROOT_INO, "hard").unwrap().ino, file.ino);
    let symlink = fs.run(FsCommandKind::Symlink { parent: dir.ino, name: "s".into(), target: "../hard".into() });
    let FsResponse::Attr(symlink) = symlink.unwrap() else { panic!() };
    assert_eq!((symlink.kind, symlink.size, symlink.perm), (FileKind::Symlink, 7, 0o777));
    assert_eq!(
        fs.ask_as(&alice(), FsQueryKind::ReadLink { ino: symlink.ino }),
        Ok(FsQueryResponse::Target("../hard".into()))
    );
    let fifo = FsCommandKind::Create {
        parent: dir.ino,
        name: "p".into(),
        kind: FileKind::Fifo,
        perm: 0o600,
        rdev: 0,
        exclusive: true,
    };
    assert!(matches!(fs.run(fifo), Ok(FsResponse::Attr(Attr { kind: FileKind::Fifo, .. }))));
    assert_eq!(fs.names(dir.ino), ["f", "p", "s"]);
    assert_eq!(fs.attr(dir.ino).size, 3);
    let FsQueryResponse::StatFs(totals) = fs.ask_as(&alice(), FsQueryKind::StatFs).unwrap() else { panic!() };
    assert_eq!(totals.inodes, 5, "the root, d, f, s and p");
}

#[test]
fn each_namespace_error_is_the_errno_linux_gives() {
    let mut fs = Fs::new();
    let dir = fs.mkdir(ROOT_INO, "d");
    let file = fs.create(ROOT_INO, "f");
    fs.create(dir.ino, "inside");
    let mkdir = |parent, name: &str| FsCommandKind::Mkdir { parent, name: name.into(), perm: 0o755 };
    let unlink = |parent, name: &str| FsCommandKind::Unlink { parent, name: name.into() };
    let rmdir = |parent, name: &str| FsCommandKind::Rmdir { parent, name: name.into() };
    let cases: Vec<(FsCommandKind, Errno)> = vec![
        (create(ROOT_INO, "f", 0o644), Errno::EEXIST),
        (mkdir(ROOT_INO, "d"), Errno::EEXIST),
        (mkdir(ROOT_INO, "f"), Errno::EEXIST),
        (unlink(ROOT_INO, "missing"), Errno::ENOENT),
        (rmdir(ROOT_INO, "missing"), Errno::ENOENT),
        (mkdir(999, "x"), Errno::ENOENT),
        (create(file.ino, "x", 0o644), Errno::ENOTDIR),
        (rmdir(ROOT_INO, "f"), Errno::ENOTDIR),
        (unlink(ROOT_INO, "d"), Errno::EISDIR),
        (rmdir(ROOT_INO, "d"), Errno::ENOTEMPTY),
        (mkdir(ROOT_INO, &"n".repeat(256)), Errno::ENAMETOOLONG),
        (FsCommandKind::Symlink { parent: ROOT_INO, name: "s".into(), target: "t".repeat(4096) }, Errno::ENAMETOOLONG),
        (mkdir(ROOT_INO, "a/b"), Errno::EINVAL),
        (mkdir(ROOT_INO, ".."), Errno::EINVAL),
        (FsCommandKind::Link { ino: dir.ino, parent: ROOT_INO, name: "dl".into() }, Errno::EPERM),
        (FsCommandKind::Link { ino: file.ino, parent: ROOT_INO, name: "d".into() }, Errno::EEXIST),
        (rename(ROOT_INO, "d", ROOT_INO, "f", RenameMode::Replace), Errno::ENOTDIR),
        (rename(ROOT_INO, "f", ROOT_INO, "d", RenameMode::Replace), Errno::EISDIR),
        (rename(ROOT_INO, "missing", ROOT_INO, "x", RenameMode::Replace), Errno::ENOENT),
        (rename(ROOT_INO, "d", dir.ino, "loop", RenameMode::Replace), Errno::EINVAL),
        (rename(ROOT_INO, "f", ROOT_INO, "d", RenameMode::NoReplace), Errno::EEXIST),
        (rename(ROOT_INO, "f", ROOT_INO, "nothing", RenameMode::Exchange), Errno::ENOENT),
        (
            FsCommandKind::Write {
                ino: dir.ino,
                offset: 0,
                data: b"x".to_vec().into(),
                append: false,
                answer_attr: false,
            },
            Errno::EISDIR,
        ),
    ];
    for (command, expected) in cases {
        let before = fs_rows(&fs.tables);
        let refused = fs.run(command.clone());
        assert_eq!(errno(refused), expected.code(), "{command:?}");
        assert!(fs_rows(&fs.tables) == before, "a refused {command:?} changed nothing");
    }
    // `open(O_CREAT)` without `O_EXCL` opens what exists, and is refused on a directory.
    let reopen = FsCommandKind::Create {
        parent: ROOT_INO,
        name: "f".into(),
        kind: FileKind::File,
        perm: 0o600,
        rdev: 0,
        exclusive: false,
    };
    assert!(matches!(fs.run(reopen), Ok(FsResponse::Attr(Attr { ino, perm: 0o644, .. })) if ino == file.ino));
    let onto_dir = FsCommandKind::Create {
        parent: ROOT_INO,
        name: "d".into(),
        kind: FileKind::File,
        perm: 0o600,
        rdev: 0,
        exclusive: false,
    };
    assert_eq!(errno(fs.run(onto_dir)), Errno::EISDIR.code());
    assert_eq!(errno(fs.lookup(ROOT_INO, "missing")), Errno::ENOENT.code());
    assert_eq!(errno(fs.ask_as(&Caller::ROOT, FsQueryKind::ReadLink { ino: file.ino })), Errno::EINVAL.code());
}

#[test]
fn renames_replace_refuse_and_exchange_as_renameat2_does() {
    let mut fs = Fs::new();
    let a = fs.mkdir(ROOT_INO, "a");
    let b = fs.mkdir(ROOT_INO, "b");
    let one = fs.create(a.ino, "one");
    let two = fs.create(b.ino, "two");
    // Over an existing file: the target's inode goes with its last link.
    fs.run(rename(a.ino, "one", b.ino, "two", RenameMode::Replace)).unwrap();
    assert_eq!(fs.lookup(b.ino, "two").unwrap().ino, one.ino);
    assert_eq!(errno(fs.ask_as(&Caller::ROOT, FsQueryKind::GetAttr { ino: two.ino })), Errno::ENOENT.code());
    assert_eq!((fs.attr(a.ino).size, fs.attr(b.ino).size), (0, 1));
    // A directory moves with everything in it, and the parents' link counts follow its `..`.
    let sub = fs.mkdir(a.ino, "sub");
    fs.create(sub.ino, "deep");
    assert_eq!(fs.attr(a.ino).nlink, 3);
    fs.run(rename(a.ino, "sub", b.ino, "moved", RenameMode::Replace)).unwrap();
    assert_eq!((fs.attr(a.ino).nlink, fs.attr(b.ino).nlink, fs.attr(sub.ino).parent), (2, 3, b.ino));
    assert_eq!(fs.names(sub.ino), ["deep"]);
    // Over an empty directory, but not a full one.
    let empty = fs.mkdir(a.ino, "empty");
    fs.run(rename(b.ino, "moved", a.ino, "empty", RenameMode::Replace)).unwrap();
    assert_eq!(errno(fs.ask_as(&Caller::ROOT, FsQueryKind::GetAttr { ino: empty.ino })), Errno::ENOENT.code());
    assert_eq!((fs.attr(a.ino).nlink, fs.attr(b.ino).nlink), (3, 2));
    fs.mkdir(b.ino, "full");
    let full = fs.lookup(b.ino, "full").unwrap();
    fs.create(full.ino, "x");
    fs.mkdir(b.ino, "dir2");
    assert_eq!(errno(fs.run(rename(b.ino, "dir2", b.ino, "full", RenameMode::Replace))), Errno::ENOTEMPTY.code());
    // Exchange a file and a directory across parents.
    fs.run(rename(a.ino, "empty", b.ino, "two", RenameMode::Exchange)).unwrap();
    assert_eq!(fs.lookup(a.ino, "empty").unwrap().ino, one.ino);
    assert_eq!(fs.lookup(b.ino, "two").unwrap().ino, sub.ino);
    assert_eq!((fs.attr(a.ino).nlink, fs.attr(b.ino).nlink, fs.attr(sub.ino).parent), (2, 5, b.ino));
    // Two names of one inode: nothing happens, successfully.
    fs.run(FsCommandKind::Link { ino: one.ino, parent: a.ino, name: "alias".into() }).unwrap();
    fs.run(rename(a.ino, "alias", a.ino, "empty", RenameMode::Replace)).unwrap();
    assert_eq!(fs.names(a.ino), ["alias", "empty"]);
    // An exchange may not put a directory inside itself either.
    assert_eq!(errno(fs.run(rename(ROOT_INO, "b", sub.ino, "deep", RenameMode::Exchange))), Errno::EINVAL.code());
}

#[test]
fn a_non_root_caller_meets_the_permission_checks_linux_makes() {
    let mut fs = Fs::new();
    let shared = fs.mkdir(ROOT_INO, "shared");
    // Root's 0755 directory: others may search, not create.
    assert_eq!(errno(fs.run_as(&alice(), create(shared.ino, "x", 0o644))), Errno::EACCES.code());
    let private = fs.mkdir_as(&Caller::ROOT, ROOT_INO, "private", 0o700);
    fs.create(private.ino, "secret");
    let lookup = FsQueryKind::Lookup { parent: private.ino, name: "secret".into() };
    assert_eq!(errno(fs.ask_as(&alice(), lookup)), Errno::EACCES.code());
    let list = FsQueryKind::ReadDir { ino: private.ino, after: None, limit: 10 };
    assert_eq!(errno(fs.ask_as(&alice(), list)), Errno::EACCES.code());

    // A sticky, world-writable directory: only the file's or the directory's owner (or root) removes or renames.
    let tmp = fs.mkdir_as(&Caller::ROOT, ROOT_INO, "tmp", 0o1777);
    let mine = fs.create_as(&alice(), tmp.ino, "alices", 0o666);
    assert_eq!((mine.uid, mine.gid), (ALICE, ALICE));
    let unlink = || FsCommandKind::Unlink { parent: tmp.ino, name: "alices".into() };
    assert_eq!(errno(fs.run_as(&bob(), unlink())), Errno::EPERM.code());
    let steal = rename(tmp.ino, "alices", tmp.ino, "bobs", RenameMode::Replace);
    assert_eq!(errno(fs.run_as(&bob(), steal)), Errno::EPERM.code());
    fs.create_as(&bob(), tmp.ino, "bobs", 0o644);
    let clobber = rename(tmp.ino, "bobs", tmp.ino, "alices", RenameMode::Replace);
    assert_eq!(errno(fs.run_as(&bob(), clobber)), Errno::EPERM.code(), "nor replaced by another's");
    fs.run_as(&alice(), unlink()).unwrap();

    // chmod and chown.
    let file = fs.create_as(&alice(), tmp.ino, "f", 0o644);
    let chmod = |perm| SetAttr { perm: Some(perm), ..SetAttr::default() };
    assert_eq!(errno(fs.set_as(&bob(), file.ino, chmod(0o777))), Errno::EPERM.code());
    let FsResponse::Attr(changed) = fs.set_as(&alice(), file.ino, chmod(0o2755)).unwrap() else { panic!() };
    assert_eq!(changed.perm, 0o2755, "alice is in the file's group");
    fs.set_as(&Caller::ROOT, file.ino, SetAttr { gid: Some(BOB), ..SetAttr::default() }).unwrap();
    let FsResponse::Attr(changed) = fs.set_as(&alice(), file.ino, chmod(0o2755)).unwrap() else { panic!() };
    assert_eq!(changed.perm, 0o755, "set-gid dropped: alice is not in group {BOB}");
    fs.set_as(&Caller::ROOT, file.ino, SetAttr { gid: Some(ALICE), ..SetAttr::default() }).unwrap();
    let chown = |uid, gid| SetAttr { uid, gid, ..SetAttr::default() };
    assert_eq!(errno(fs.set_as(&alice(), file.ino, chown(Some(BOB), None))), Errno::EPERM.code());
    assert_eq!(errno(fs.set_as(&alice(), file.ino, chown(None, Some(BOB)))), Errno::EPERM.code());
    assert_eq!(errno(fs.set_as(&bob(), file.ino, chown(None, Some(BOB)))), Errno::EPERM.code());
    let FsResponse::Attr(regrouped) = fs.set_as(&alice(), file.ino, chown(None, Some(STAFF))).unwrap() else {
        panic!()
    };
    assert_eq!((regrouped.uid, regrouped.gid), (ALICE, STAFF), "the owner may give a file to a group she is in");
    fs.set_as(&Caller::ROOT, file.ino, chown(Some(BOB), Some(BOB))).unwrap();

    // Times: "now" by anyone who may write, explicit times by the owner only.
    let open_file = fs.create_as(&alice(), tmp.ino, "open", 0o666);
    let now = SetAttr { atime: Some(SetTime::Now), mtime: Some(SetTime::Now), ..SetAttr::default() };
    fs.set_as(&bob(), open_file.ino, now.clone()).unwrap();
    let at = SetTime::At(Time { secs: 1, nanos: 2 });
    let explicit = SetAttr { atime: Some(at), mtime: Some(at), ..SetAttr::default() };
    assert_eq!(errno(fs.set_as(&bob(), open_file.ino, explicit.clone())), Errno::EPERM.code());
    let closed = fs.create_as(&alice(), tmp.ino, "closed", 0o644);
    assert_eq!(errno(fs.set_as(&bob(), closed.ino, now)), Errno::EACCES.code());
    let FsResponse::Attr(stamped) = fs.set_as(&alice(), closed.ino, explicit).unwrap() else { panic!() };
    assert_eq!((stamped.atime, stamped.mtime), (Time { secs: 1, nanos: 2 }, Time { secs: 1, nanos: 2 }));

    // Truncate needs write permission, unless through a file opened for writing.
    let truncate = |through_open_file| SetAttr { size: Some(0), through_open_file, ..SetAttr::default() };
    assert_eq!(errno(fs.set_as(&bob(), closed.ino, truncate(false))), Errno::EACCES.code());
    fs.set_as(&bob(), closed.ino, truncate(true)).unwrap();

    // Moving a directory to another parent rewrites its `..`: it needs write permission on the directory itself.
    let hers = fs.mkdir_as(&alice(), tmp.ino, "hers", 0o555);
    let elsewhere = fs.mkdir_as(&alice(), tmp.ino, "elsewhere", 0o777);
    let away = rename(tmp.ino, "hers", elsewhere.ino, "hers", RenameMode::Replace);
    assert_eq!(errno(fs.run_as(&alice(), away.clone())), Errno::EACCES.code());
    fs.run_as(&Caller::ROOT, away).unwrap();
    assert_eq!(fs.attr(hers.ino).parent, elsewhere.ino);
    // `access`.
    let access = |mask| FsQueryKind::Access { ino: closed.ino, mask };
    assert_eq!(fs.ask_as(&bob(), access(4)), Ok(FsQueryResponse::Allowed));
    assert_eq!(errno(fs.ask_as(&bob(), access(2))), Errno::EACCES.code());
    assert_eq!(errno(fs.ask_as(&Caller::ROOT, access(1))), Errno::EACCES.code(), "root executes only with an x bit");
}

#[test]
fn set_gid_directories_pass_their_group_on_and_writes_and_chowns_clear_set_uid_and_set_gid() {
    let mut fs = Fs::new();
    let team = fs.mkdir_as(&Caller::ROOT, ROOT_INO, "team", 0o2777);
    fs.set_as(&Caller::ROOT, team.ino, SetAttr { gid: Some(STAFF), ..SetAttr::default() }).unwrap();
    let file = fs.create_as(&bob(), team.ino, "f", 0o2755);
    assert_eq!((file.gid, file.perm), (STAFF, 0o755), "bob is not in staff: his file's set-gid bit is dropped");
    let sub = fs.mkdir_as(&bob(), team.ino, "sub", 0o755);
    assert_eq!((sub.gid, sub.perm), (STAFF, 0o2755), "a subdirectory inherits the group and the bit");

    fs.set_as(&Caller::ROOT, ROOT_INO, SetAttr { perm: Some(0o777), ..SetAttr::default() }).unwrap();
    let prog = fs.create_as(&alice(), ROOT_INO, "prog", 0o777);
    fs.set_as(&Caller::ROOT, prog.ino, SetAttr { perm: Some(0o6777), ..SetAttr::default() }).unwrap();
    fs.write_as(&Caller::ROOT, prog.ino, 0, b"root keeps the bits").unwrap();
    assert_eq!(fs.attr(prog.ino).perm, 0o6777);
    fs.write_as(&bob(), prog.ino, 0, b"x").unwrap();
    assert_eq!(fs.attr(prog.ino).perm, 0o777, "a non-root write clears set-uid, and set-gid with group-execute");
    fs.set_as(&Caller::ROOT, prog.ino, SetAttr { perm: Some(0o6767), ..SetAttr::default() }).unwrap();
    fs.write_as(&bob(), prog.ino, 0, b"x").unwrap();
    assert_eq!(fs.attr(prog.ino).perm, 0o2767, "set-gid without group-execute (mandatory locking) stays");
    fs.set_as(&Caller::ROOT, prog.ino, SetAttr { perm: Some(0o6777), ..SetAttr::default() }).unwrap();
    fs.set_as(&Caller::ROOT, prog.ino, SetAttr { uid: Some(BOB), ..SetAttr::default() }).unwrap();
    assert_eq!(fs.attr(prog.ino).perm, 0o777, "a chown clears them, by root too");
    let dir = fs.mkdir_as(&Caller::ROOT, ROOT_INO, "keeps", 0o3777);
    fs.set_as(&Caller::ROOT, dir.ino, SetAttr { uid: Some(BOB), ..SetAttr::default() }).unwrap();
    assert_eq!(fs.attr(dir.ino).perm, 0o3777, "not on a directory");
}

#[test]
fn each_operation_updates_the_times_posix_names() {
    let mut fs = Fs::new();
    let dir = fs.mkdir(ROOT_INO, "d");
    let created_at = fs.now;
    let file = fs.create(dir.ino, "f");
    let t = |ms: u64| Time::from_ms(ms);
    assert_eq!((file.atime, file.mtime, file.ctime, file.crtime), (t(fs.now), t(fs.now), t(fs.now), t(fs.now)));
    assert_eq!((fs.attr(dir.ino).mtime, fs.attr(dir.ino).ctime), (t(fs.now), t(fs.now)));
    assert!(fs.now > created_at);

    fs.write_as(&Caller::ROOT, file.ino, 0, b"data").unwrap();
    let written = fs.attr(file.ino);
    assert_eq!((written.atime, written.mtime, written.ctime), (t(created_at + 1), t(fs.now), t(fs.now)));
    assert_eq!(fs.attr(dir.ino).mtime, t(created_at + 1), "a write leaves the directory alone");

    fs.set_as(&Caller::ROOT, file.ino, SetAttr { perm: Some(0o600), ..SetAttr::default() }).unwrap();
    let chmodded = fs.attr(file.ino);
    assert_eq!((chmodded.mtime, chmodded.ctime), (written.mtime, t(fs.now)), "chmod moves ctime only");

    fs.run(FsCommandKind::Link { ino: file.ino, parent: ROOT_INO, name: "l".into() }).unwrap();
    assert_eq!((fs.attr(file.ino).ctime, fs.attr(ROOT_INO).mtime), (t(fs.now), t(fs.now)));

    fs.run(rename(dir.ino, "f", ROOT_INO, "g", RenameMode::Replace)).unwrap();
    let renamed_at = t(fs.now);
    assert_eq!(fs.attr(file.ino).ctime, renamed_at);
    assert_eq!((fs.attr(dir.ino).mtime, fs.attr(dir.ino).ctime), (renamed_at, renamed_at));
    assert_eq!(fs.attr(file.ino).mtime, written.mtime, "a rename leaves the data's time alone");

    fs.run(FsCommandKind::Unlink { parent: ROOT_INO, name: "l".into() }).unwrap();
    assert_eq!(fs.attr(file.ino).ctime, t(fs.now), "the remaining link's ctime moves");

    fs.set_as(&Caller::ROOT, file.ino, SetAttr { size: Some(2), ..SetAttr::default() }).unwrap();
    assert_eq!((fs.attr(file.ino).mtime, fs.attr(file.ino).ctime), (t(fs.now), t(fs.now)));

    let precise = Time { secs: 1_700_000_000, nanos: 123_456_789 };
    fs.set_as(&Caller::ROOT, file.ino, SetAttr { mtime: Some(SetTime::At(precise)), ..SetAttr::default() }).unwrap();
    assert_eq!(fs.attr(file.ino).mtime, precise, "nanoseconds are kept");
}

#[test]
fn making_and_removing_names_moves_the_parents_times_and_xattrs_move_ctime_only() {
    let mut fs = Fs::new();
    let t = |ms: u64| Time::from_ms(ms);
    let parent_times = |fs: &Fs, ino: u64| (fs.attr(ino).mtime, fs.attr(ino).ctime);

    let dir = fs.mkdir(ROOT_INO, "d");
    assert_eq!(parent_times(&fs, ROOT_INO), (t(fs.now), t(fs.now)), "mkdir moves its parent's mtime and ctime");
    assert_eq!((dir.atime, dir.mtime, dir.ctime), (t(fs.now), t(fs.now), t(fs.now)));

    let linked = match fs.run(FsCommandKind::Symlink { parent: dir.ino, name: "s".into(), target: "x".into() }) {
        Ok(FsResponse::Attr(attr)) => attr,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(parent_times(&fs, dir.ino), (t(fs.now), t(fs.now)), "symlink moves its parent's times");
    assert_eq!((linked.mtime, linked.ctime), (t(fs.now), t(fs.now)));
    let root_before = parent_times(&fs, ROOT_INO);
    assert!(root_before.0 < t(fs.now), "a grandparent is left alone");

    fs.run(FsCommandKind::Unlink { parent: dir.ino, name: "s".into() }).unwrap();
    assert_eq!(parent_times(&fs, dir.ino), (t(fs.now), t(fs.now)), "unlink moves its parent's times");

    fs.run(FsCommandKind::Rmdir { parent: ROOT_INO, name: "d".into() }).unwrap();
    assert_eq!(parent_times(&fs, ROOT_INO), (t(fs.now), t(fs.now)), "rmdir moves its parent's times");

    let file = fs.create(ROOT_INO, "f");
    fs.write_as(&Caller::ROOT, file.ino, 0, b"data").unwrap();
    let written = fs.attr(file.ino);
    let set = FsCommandKind::SetXattr {
        ino: file.ino,
        name: "user.a".into(),
        value: b"1".to_vec().into(),
        mode: XattrMode::Either,
    };
    fs.run(set).unwrap();
    let tagged = fs.attr(file.ino);
    assert_eq!((tagged.mtime, tagged.ctime), (written.mtime, t(fs.now)), "setxattr moves ctime only");
    fs.run(FsCommandKind::RemoveXattr { ino: file.ino, name: "user.a".into() }).unwrap();
    let untagged = fs.attr(file.ino);
    assert_eq!((untagged.mtime, untagged.ctime), (written.mtime, t(fs.now)), "removexattr moves ctime only");
}

#[test]
fn a_truncate_with_its_times_is_one_command_and_a_refused_one_changes_nothing() {
    let mut fs = Fs::new();
    let file = fs.create(ROOT_INO, "f");
    fs.set_as(&Caller::ROOT, file.ino, SetAttr { uid: Some(ALICE), gid: Some(ALICE), ..SetAttr::default() }).unwrap();
    fs.write_as(&alice(), file.ino, 0, b"0123456789").unwrap();

    // truncate(2) as the kernel sends it: the size and "mtime now" together; ftruncate with a chosen mtime.
    let at = Time { secs: 1_700_000_000, nanos: 5 };
    let set = SetAttr { size: Some(4), mtime: Some(SetTime::At(at)), perm: Some(0o600), ..SetAttr::default() };
    fs.set_as(&alice(), file.ino, set).unwrap();
    let after = fs.attr(file.ino);
    assert_eq!((after.size, after.mtime, after.ctime, after.perm & 0o7777), (4, at, Time::from_ms(fs.now), 0o600));

    // Bob may write the file but not chmod it: the truncate that comes with his chmod does not happen either.
    fs.set_as(&alice(), file.ino, SetAttr { perm: Some(0o666), ..SetAttr::default() }).unwrap();
    let unchanged = fs.attr(file.ino);
    let refused = SetAttr { size: Some(1), perm: Some(0o777), ..SetAttr::default() };
    assert_eq!(errno(fs.set_as(&bob(), file.ino, refused)), Errno::EPERM.code());
    assert_eq!(fs.attr(file.ino), unchanged, "a refused setattr changes nothing");
    assert_eq!(fs.read(file.ino).0, 4);
}

#[test]
fn small_files_are_written_in_place_and_large_ones_as_reference_counted_chunks() {
    let mut fs = Fs::new();
    let file = fs.create(ROOT_INO, "f");
    fs.write_as(&Caller::ROOT, file.ino, 4, b"tail").unwrap();
    assert_eq!(fs.read(file.ino), (8, FileData::Inline(b"\0\0\0\0tail".to_vec().into())), "the hole reads as zeros");
    let append =
        FsCommandKind::Write { ino: file.ino, offset: 0, data: b"+".to_vec().into(), append: true, answer_attr: false };
    assert_eq!(fs.run(append), Ok(FsResponse::Written { size: 9 }));
    let answering = FsCommandKind::Write {
        ino: file.ino,
        offset: 4,
        data: b"AB".to_vec().into(),
        append: false,
        answer_attr: true,
    };
    assert_eq!(
        fs.run(answering),
        Ok(FsResponse::Attr(fs.attr(file.ino))),
        "the attributes after the write, when asked"
    );
    fs.set_as(&Caller::ROOT, file.ino, SetAttr { size: Some(2), ..SetAttr::default() }).unwrap();
    fs.set_as(&Caller::ROOT, file.ino, SetAttr { size: Some(4), ..SetAttr::default() }).unwrap();
    assert_eq!(fs.read(file.ino).1, FileData::Inline(vec![0; 4].into()), "truncated bytes do not come back");
    let past = FsCommandKind::Write {
        ino: file.ino,
        offset: 65_535,
        data: b"xy".to_vec().into(),
        append: false,
        answer_attr: false,
    };
    assert_eq!(errno(fs.run(past)), Errno::EFBIG.code(), "past the inline bound: chunks");

    // The same blob for two chunks of two files: stored once, referenced twice.
    let shared = fs.blob(1, FS_CHUNK_BYTES);
    let tail = fs.blob(2, 100);
    let big = fs.create(ROOT_INO, "big");
    let size = 2 * FS_CHUNK_BYTES + 100;
    let chunks =
        vec![(0, Some(Chunk { blob: shared, len: FS_CHUNK_BYTES as u32 })), (2, Some(Chunk { blob: tail, len: 100 }))];
    fs.run(FsCommandKind::SetChunks { ino: big.ino, chunks, size }).unwrap();
    let copy = fs.create(ROOT_INO, "copy");
    let chunks = vec![(0, Some(Chunk { blob: shared, len: FS_CHUNK_BYTES as u32 }))];
    fs.run(FsCommandKind::SetChunks { ino: copy.ino, chunks, size: FS_CHUNK_BYTES }).unwrap();
    assert_eq!((fs.blob_refs(&shared), fs.blob_refs(&tail)), (2, 1));
    let (read_size, FileData::Chunks(map)) = fs.read(big.ino) else { panic!() };
    assert_eq!(
        (read_size, map.iter().map(|(index, _)| *index).collect::<Vec<_>>()),
        (size, vec![0, 2]),
        "chunk 1 is a hole"
    );
    let write =
        FsCommandKind::Write { ino: big.ino, offset: 0, data: b"x".to_vec().into(), append: false, answer_attr: false };
    assert_eq!(errno(fs.run(write)), Errno::EFBIG.code(), "a chunked file is written as chunks");

    // Truncating drops and trims chunks; unlinking releases the rest.
    fs.set_as(&Caller::ROOT, big.ino, SetAttr { size: Some(10), ..SetAttr::default() }).unwrap();
    assert_eq!((fs.blob_refs(&shared), fs.blob_refs(&tail)), (2, 0));
    let (_, FileData::Chunks(map)) = fs.read(big.ino) else { panic!() };
    assert_eq!(map, [(0, Chunk { blob: shared, len: 10 })], "bytes past 10 read as zeros when the file grows again");
    fs.run(FsCommandKind::Unlink { parent: ROOT_INO, name: "big".into() }).unwrap();
    fs.run(FsCommandKind::Unlink { parent: ROOT_INO, name: "copy".into() }).unwrap();
    assert_eq!(fs.blob_refs(&shared), 0);

    // A chunk must name a blob the cluster holds, with its size.
    let unknown = BlobRef { hash: BlobHash::from_slice(&[9; 32]).unwrap(), size: 10 };
    let orphan = fs.create(ROOT_INO, "orphan");
    let chunks = vec![(0, Some(Chunk { blob: unknown, len: 10 }))];
    assert_eq!(errno(fs.run(FsCommandKind::SetChunks { ino: orphan.ino, chunks, size: 10 })), Errno::ENOENT.code());
    let chunks = vec![(1, Some(Chunk { blob: tail, len: 100 }))];
    let beyond = FsCommandKind::SetChunks { ino: orphan.ino, chunks, size: 10 };
    assert_eq!(errno(fs.run(beyond)), Errno::EINVAL.code(), "a chunk past the end");
    let FsQueryResponse::StatFs(totals) = fs.ask_as(&alice(), FsQueryKind::StatFs).unwrap() else { panic!() };
    assert_eq!(totals, FsTotals { inodes: 3, bytes: 4 }, "the root, f (4 bytes) and orphan");
}

#[test]
fn a_file_kept_open_outlives_its_last_name_until_its_keeper_lets_go() {
    let mut fs = Fs::new();
    let session = fs.lease();
    let file = fs.create(ROOT_INO, "f");
    fs.write_as(&Caller::ROOT, file.ino, 0, b"still here").unwrap();
    fs.run(FsCommandKind::KeepOpen { ino: file.ino, lease: session }).unwrap();
    fs.run(FsCommandKind::Unlink { parent: ROOT_INO, name: "f".into() }).unwrap();

    assert_eq!(errno(fs.lookup(ROOT_INO, "f")), Errno::ENOENT.code(), "the name is gone");
    assert!(fs.names(ROOT_INO).is_empty());
    assert_eq!(fs.attr(file.ino).nlink, 0, "fstat of an unlinked open file says 0 links, as on Linux");
    assert_eq!(fs.read(file.ino).1, FileData::Inline(b"still here".to_vec().into()));
    fs.write_as(&Caller::ROOT, file.ino, 0, b"STILL").unwrap();
    assert_eq!(fs.totals(), FsTotals { inodes: 2, bytes: 10 }, "it still takes its room");
    let relink = FsCommandKind::Link { ino: file.ino, parent: ROOT_INO, name: "back".into() };
    assert_eq!(errno(fs.run(relink)), Errno::ENOENT.code(), "a removed file cannot be linked again");

    fs.run(FsCommandKind::ReleaseKept { ino: file.ino, lease: session }).unwrap();
    assert_eq!(errno(fs.ask_as(&Caller::ROOT, FsQueryKind::GetAttr { ino: file.ino })), Errno::ENOENT.code());
    assert_eq!(fs.totals(), FsTotals { inodes: 1, bytes: 0 });
    assert_eq!(fs.run(FsCommandKind::ReleaseKept { ino: file.ino, lease: session }), Ok(FsResponse::Done), "twice");
    check_invariants(&fs.tables);

    // A file that keeps a name is only let go of: the keep changes nothing else.
    let named = fs.create(ROOT_INO, "named");
    fs.run(FsCommandKind::KeepOpen { ino: named.ino, lease: session }).unwrap();
    fs.run(FsCommandKind::ReleaseKept { ino: named.ino, lease: session }).unwrap();
    assert_eq!(fs.lookup(ROOT_INO, "named").unwrap().nlink, 1);
    let dir = fs.mkdir(ROOT_INO, "d");
    assert_eq!(errno(fs.run(FsCommandKind::KeepOpen { ino: dir.ino, lease: session })), Errno::EINVAL.code());
    let gone = fs.run(FsCommandKind::KeepOpen { ino: named.ino, lease: 999 }).unwrap_err();
    assert_eq!(gone.code, crate::error::ErrorCode::NotFound, "a lease that is gone keeps nothing: {gone}");
    check_invariants(&fs.tables);
}

#[test]
fn a_kept_file_replaced_by_a_rename_goes_with_its_chunks_when_the_session_ends() {
    let mut fs = Fs::new();
    let (first, second) = (fs.lease(), fs.lease());
    let blob = fs.blob(3, FS_CHUNK_BYTES);
    let big = fs.create(ROOT_INO, "big");
    let chunks = vec![(0, Some(Chunk { blob, len: FS_CHUNK_BYTES as u32 }))];
    fs.run(FsCommandKind::SetChunks { ino: big.ino, chunks, size: FS_CHUNK_BYTES }).unwrap();
    fs.run(FsCommandKind::KeepOpen { ino: big.ino, lease: first }).unwrap();
    fs.run(FsCommandKind::KeepOpen { ino: big.ino, lease: second }).unwrap();
    fs.create(ROOT_INO, "new");
    fs.run(rename(ROOT_INO, "new", ROOT_INO, "big", RenameMode::Replace)).unwrap();
    assert_ne!(fs.lookup(ROOT_INO, "big").unwrap().ino, big.ino, "the name is the new file's");
    assert_eq!(fs.attr(big.ino).nlink, 0);
    assert_eq!(fs.blob_refs(&blob), 1, "the replaced file's chunk is still referenced");

    fs.end_lease(first);
    assert_eq!(fs.attr(big.ino).size, FS_CHUNK_BYTES, "another session keeps it still");
    check_invariants(&fs.tables);
    fs.end_lease(second);
    assert_eq!(errno(fs.ask_as(&Caller::ROOT, FsQueryKind::GetAttr { ino: big.ino })), Errno::ENOENT.code());
    assert_eq!(fs.blob_refs(&blob), 0, "the last session's end released its chunk");
    assert_eq!(fs.totals(), FsTotals { inodes: 2, bytes: 0 }, "the root and the new file");
    check_invariants(&fs.tables);
}

#[test]
fn extended_attributes_follow_linux_namespaces_flags_and_bounds() {
    let mut fs = Fs::new();
    fs.set_as(&Caller::ROOT, ROOT_INO, SetAttr { perm: Some(0o777), ..SetAttr::default() }).unwrap();
    let file = fs.create_as(&alice(), ROOT_INO, "f", 0o644);
    let set = |name: &str, value: &[u8], mode| FsCommandKind::SetXattr {
        ino: file.ino,
        name: name.into(),
        value: value.to_vec().into(),
        mode,
    };
    fs.run_as(&alice(), set("user.color", b"blue", XattrMode::Create)).unwrap();
    assert_eq!(errno(fs.run_as(&alice(), set("user.color", b"red", XattrMode::Create))), Errno::EEXIST.code());
    assert_eq!(errno(fs.run_as(&alice(), set("user.size", b"1", XattrMode::Replace))), Errno::ENODATA.code());
    fs.run_as(&alice(), set("user.color", b"red", XattrMode::Replace)).unwrap();
    let get = |name: &str| FsQueryKind::GetXattr { ino: file.ino, name: name.into() };
    assert_eq!(fs.ask_as(&bob(), get("user.color")), Ok(FsQueryResponse::Xattr(b"red".to_vec().into())));
    assert_eq!(errno(fs.run_as(&bob(), set("user.color", b"x", XattrMode::Either))), Errno::EACCES.code());
    assert_eq!(errno(fs.ask_as(&bob(), get("user.none"))), Errno::ENODATA.code());
    assert_eq!(errno(fs.run_as(&alice(), set("trusted.t", b"x", XattrMode::Either))), Errno::EPERM.code());
    fs.run(set("trusted.t", b"x", XattrMode::Either)).unwrap();
    assert_eq!(errno(fs.ask_as(&alice(), get("trusted.t"))), Errno::ENODATA.code());
    let list = FsQueryKind::ListXattr { ino: file.ino };
    assert_eq!(fs.ask_as(&alice(), list.clone()), Ok(FsQueryResponse::XattrNames(vec!["user.color".into()])));
    assert_eq!(
        fs.ask_as(&Caller::ROOT, list),
        Ok(FsQueryResponse::XattrNames(vec!["trusted.t".into(), "user.color".into()]))
    );
    assert_eq!(
        errno(fs.run_as(&alice(), set("system.posix_acl_access", b"x", XattrMode::Either))),
        Errno::EOPNOTSUPP.code()
    );
    assert_eq!(
        errno(fs.run_as(&alice(), set("user.big", &vec![0; 64 * 1024 + 1], XattrMode::Either))),
        Errno::E2BIG.code()
    );
    fs.run_as(&alice(), set("user.a", &vec![0; 64 * 1024], XattrMode::Either)).unwrap();
    assert_eq!(errno(fs.run_as(&alice(), set("user.b", &vec![0; 64 * 1024], XattrMode::Either))), Errno::ENOSPC.code());
    let symlink = fs.run(FsCommandKind::Symlink { parent: ROOT_INO, name: "s".into(), target: "f".into() });
    let FsResponse::Attr(symlink) = symlink.unwrap() else { panic!() };
    let on_link = FsCommandKind::SetXattr {
        ino: symlink.ino,
        name: "user.x".into(),
        value: Bytes::default(),
        mode: XattrMode::Either,
    };
    assert_eq!(errno(fs.run(on_link)), Errno::EPERM.code(), "no user attributes on a symlink");
    let remove = |name: &str| FsCommandKind::RemoveXattr { ino: file.ino, name: name.into() };
    fs.run_as(&alice(), remove("user.color")).unwrap();
    assert_eq!(errno(fs.run_as(&alice(), remove("user.color"))), Errno::ENODATA.code());
    // The attributes go with the inode.
    fs.run(FsCommandKind::Unlink { parent: ROOT_INO, name: "f".into() }).unwrap();
    assert!(!fs.tables.coord.keys().any(|key| key.starts_with(b"Fx/")));
}

#[test]
fn a_directory_listing_pages_by_name() {
    let mut fs = Fs::new();
    for name in ["c", "a", "b", "e", "d"] {
        fs.create(ROOT_INO, name);
    }
    let page = |after: Option<&str>| match fs
        .ask_as(&alice(), FsQueryKind::ReadDir { ino: ROOT_INO, after: after.map(Into::into), limit: 2 })
    {
        Ok(FsQueryResponse::Entries { entries, more }) => {
            (entries.into_iter().map(|entry| entry.name).collect::<Vec<_>>(), more)
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(page(None), (vec!["a".to_string(), "b".to_string()], true));
    assert_eq!(page(Some("b")), (vec!["c".to_string(), "d".to_string()], true));
    assert_eq!(page(Some("d")), (vec!["e".to_string()], false));
}

#[test]
fn a_listing_with_attributes_names_the_same_entries_with_what_getattr_answers_for_each() {
    let mut fs = Fs::new();
    for name in ["c", "a", "b"] {
        fs.create(ROOT_INO, name);
    }
    fs.mkdir(ROOT_INO, "d");
    let plain = match fs.ask_as(&alice(), FsQueryKind::ReadDir { ino: ROOT_INO, after: None, limit: 3 }) {
        Ok(FsQueryResponse::Entries { entries, more }) => (entries, more),
        other => panic!("unexpected {other:?}"),
    };
    let plus = match fs.ask_as(&alice(), FsQueryKind::ReadDirPlus { ino: ROOT_INO, after: None, limit: 3 }) {
        Ok(FsQueryResponse::EntriesPlus { entries, more, with_xattrs }) => {
            assert!(with_xattrs.is_empty(), "no listed inode has an attribute yet");
            (entries, more)
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(plus.1, plain.1, "both say more follow");
    assert_eq!(plus.0.iter().map(|(entry, _)| entry.clone()).collect::<Vec<_>>(), plain.0);
    for (entry, attr) in &plus.0 {
        assert_eq!(*attr, fs.attr(entry.ino), "{}", entry.name);
    }
    let b = fs.lookup(ROOT_INO, "b").unwrap();
    let tag = FsCommandKind::SetXattr {
        ino: b.ino,
        name: "security.tag".into(),
        value: b"x".to_vec().into(),
        mode: XattrMode::Either,
    };
    fs.run(tag).unwrap();
    match fs.ask_as(&alice(), FsQueryKind::ReadDirPlus { ino: ROOT_INO, after: None, limit: 10 }) {
        Ok(FsQueryResponse::EntriesPlus { with_xattrs, .. }) => assert_eq!(with_xattrs, [b.ino], "b has one now"),
        other => panic!("unexpected {other:?}"),
    }
    let private = fs.mkdir(ROOT_INO, "private");
    fs.set_as(&Caller::ROOT, private.ino, SetAttr { perm: Some(0o700), ..SetAttr::default() }).unwrap();
    let refused = fs.ask_as(&alice(), FsQueryKind::ReadDirPlus { ino: private.ino, after: None, limit: 3 });
    assert_eq!(errno(refused), Errno::EACCES.code(), "the same permission as a plain listing");
}

#[test]
fn each_accepted_command_says_on_the_commit_stream_what_it_changed() {
    let mut fs = Fs::new();
    let dir = fs.mkdir(ROOT_INO, "d");
    let proposal = Proposal {
        stamp_ms: fs.now + 1,
        commands: vec![
            Command::Fs(FsCommand { caller: Caller::ROOT, kind: create(dir.ino, "f", 0o644) }),
            Command::Fs(FsCommand { caller: Caller::ROOT, kind: create(dir.ino, "f", 0o644) }),
        ],
    };
    let outcome = apply_proposal(&mut fs.tables, &mut fs.revision, &proposal).unwrap();
    let changes: Vec<_> = outcome.events.iter().filter(|event| matches!(event, CoordEvent::FsChanged { .. })).collect();
    assert_eq!(changes.len(), 1, "the refused second create says nothing: {changes:?}");
    let CoordEvent::FsChanged { inodes, entries } = changes[0] else { unreachable!() };
    assert!(inodes.contains(&dir.ino) && inodes.len() == 2, "{inodes:?}");
    assert_eq!(entries, &[(dir.ino, "f".to_string())]);
}

/// The file system's rows (and the blob records its chunks count on): what a refused command must leave alone.
fn fs_rows(tables: &MemoryTables) -> Vec<(Vec<u8>, Vec<u8>)> {
    tables
        .coord
        .iter()
        .filter(|(key, _)| key.starts_with(b"F") || key.starts_with(b"m/fs_") || key.starts_with(b"B/"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Every invariant of the namespace (see `apply.rs`), checked over all rows.
fn check_invariants(tables: &MemoryTables) {
    let mut attrs = std::collections::BTreeMap::new();
    for (key, bytes) in tables.coord.range(b"Fi/".to_vec()..b"Fi0".to_vec()) {
        let attr: Attr = rmp_serde::from_slice(bytes).unwrap();
        assert_eq!(key[3..], attr.ino.to_be_bytes());
        attrs.insert(attr.ino, attr);
    }
    let mut kept: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for (key, _) in tables.coord.range(b"Fk/".to_vec()..b"Fk0".to_vec()) {
        let ino = u64::from_be_bytes(key[3..11].try_into().unwrap());
        kept.entry(ino).or_default().push(u64::from_be_bytes(key[11..19].try_into().unwrap()));
    }
    let mut entries: std::collections::BTreeMap<u64, Vec<(String, u64)>> = Default::default();
    let mut links: std::collections::BTreeMap<u64, u32> = Default::default();
    for (key, bytes) in tables.coord.range(b"Fe/".to_vec()..b"Fe0".to_vec()) {
        let parent = u64::from_be_bytes(key[3..11].try_into().unwrap());
        let name = String::from_utf8(key[11..].to_vec()).unwrap();
        #[derive(serde::Deserialize)]
        struct Entry {
            ino: u64,
        }
        let entry: Entry = rmp_serde::from_slice(bytes).unwrap();
        assert!(attrs.contains_key(&entry.ino), "{name:?} in {parent} names a missing inode {}", entry.ino);
        entries.entry(parent).or_default().push((name, entry.ino));
        *links.entry(entry.ino).or_default() += 1;
    }
    for attr in attrs.values() {
        let children = entries.get(&attr.ino).map(Vec::as_slice).unwrap_or_default();
        if attr.kind == FileKind::Dir {
            let subdirs = children.iter().filter(|(_, ino)| attrs[ino].kind == FileKind::Dir).count() as u32;
            assert_eq!(attr.size, children.len() as u64, "inode {} counts its entries", attr.ino);
            assert_eq!(attr.nlink, 2 + subdirs, "inode {} links", attr.ino);
            if attr.ino != ROOT_INO {
                assert_eq!(links.get(&attr.ino), Some(&1), "a directory has one name");
                assert!(entries[&attr.parent].iter().any(|(_, ino)| *ino == attr.ino), "inode {}'s parent", attr.ino);
                let mut up = attr.parent;
                for _ in 0..attrs.len() {
                    if up == ROOT_INO {
                        break;
                    }
                    assert_ne!(up, attr.ino, "inode {} is inside itself", attr.ino);
                    up = attrs[&up].parent;
                }
                assert_eq!(up, ROOT_INO, "inode {} reaches the root", attr.ino);
            }
        } else {
            assert!(children.is_empty());
            assert_eq!(attr.nlink, links.get(&attr.ino).copied().unwrap_or(0), "inode {} links", attr.ino);
            let keepers = kept.get(&attr.ino).map(Vec::len).unwrap_or(0);
            assert!(attr.nlink > 0 || keepers > 0, "inode {} has no name and no keeper", attr.ino);
        }
    }
    for (ino, leases) in &kept {
        assert!(attrs.contains_key(ino), "a keeper of inode {ino}, which is gone");
        for lease in leases {
            let info = crate::coord::lease::load_lease(tables, *lease).unwrap();
            assert!(info.is_some_and(|info| info.kept.contains(ino)), "lease {lease} keeps inode {ino} unlisted");
        }
    }
    if let Some(bytes) = tables.coord.get(b"m/fs_totals".as_slice()) {
        let totals: FsTotals = rmp_serde::from_slice(bytes).unwrap();
        assert_eq!(totals.inodes, attrs.len() as u64);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create(u8, u8),
    Mkdir(u8, u8),
    Link(u8, u8, u8),
    Unlink(u8, u8),
    Rmdir(u8, u8),
    Rename(u8, u8, u8, u8, u8),
    /// Session `l` (of two) keeps inode `i` open, lets go of it, or ends (a new one takes its place).
    Keep(u8, u8),
    LetGo(u8, u8),
    EndSession(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let dir = 0u8..6;
    let name = 0u8..3;
    prop_oneof![
        (dir.clone(), name.clone()).prop_map(|(d, n)| Op::Create(d, n)),
        (dir.clone(), name.clone()).prop_map(|(d, n)| Op::Mkdir(d, n)),
        (0u8..12, dir.clone(), name.clone()).prop_map(|(i, d, n)| Op::Link(i, d, n)),
        (dir.clone(), name.clone()).prop_map(|(d, n)| Op::Unlink(d, n)),
        (dir.clone(), name.clone()).prop_map(|(d, n)| Op::Rmdir(d, n)),
        (dir.clone(), name.clone(), dir, name, 0u8..3).prop_map(|(a, n, b, m, mode)| Op::Rename(a, n, b, m, mode)),
        (0u8..12, 0u8..2).prop_map(|(i, l)| Op::Keep(i, l)),
        (0u8..12, 0u8..2).prop_map(|(i, l)| Op::LetGo(i, l)),
        (0u8..2).prop_map(Op::EndSession),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random namespace operations on a few directories and names keep every invariant, and a refused one changes
    /// no row.
    #[test]
    fn random_namespace_operations_keep_the_invariants_and_refusals_change_nothing(ops in proptest::collection::vec(op(), 1..60)) {
        let mut fs = Fs::new();
        let mut sessions = [fs.lease(), fs.lease()];
        // Inode numbers the ops pick from: the root and whatever they created (by creation order).
        let mut known = vec![ROOT_INO];
        let pick = |known: &Vec<u64>, index: u8| known[index as usize % known.len()];
        let name = |n: u8| ["a", "b", "c"][n as usize].to_string();
        for op in ops {
            let kind = match op {
                Op::Create(d, n) => create(pick(&known, d), &name(n), 0o644),
                Op::Mkdir(d, n) => FsCommandKind::Mkdir { parent: pick(&known, d), name: name(n), perm: 0o755 },
                Op::Link(i, d, n) => FsCommandKind::Link { ino: pick(&known, i), parent: pick(&known, d), name: name(n) },
                Op::Unlink(d, n) => FsCommandKind::Unlink { parent: pick(&known, d), name: name(n) },
                Op::Rmdir(d, n) => FsCommandKind::Rmdir { parent: pick(&known, d), name: name(n) },
                Op::Rename(a, n, b, m, mode) => rename(
                    pick(&known, a),
                    &name(n),
                    pick(&known, b),
                    &name(m),
                    [RenameMode::Replace, RenameMode::NoReplace, RenameMode::Exchange][mode as usize],
                ),
                Op::Keep(i, l) => FsCommandKind::KeepOpen { ino: pick(&known, i), lease: sessions[l as usize] },
                Op::LetGo(i, l) => FsCommandKind::ReleaseKept { ino: pick(&known, i), lease: sessions[l as usize] },
                Op::EndSession(l) => {
                    fs.end_lease(sessions[l as usize]);
                    sessions[l as usize] = fs.lease();
                    check_invariants(&fs.tables);
                    continue;
                }
            };
            let before = fs_rows(&fs.tables);
            match fs.run(kind.clone()) {
                Ok(FsResponse::Attr(attr)) => {
                    if !known.contains(&attr.ino) {
                        known.push(attr.ino);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    prop_assert!(matches!(error.detail, Some(crate::error::ErrorDetail::Errno { .. })), "{error}");
                    prop_assert!(fs_rows(&fs.tables) == before, "refused {:?} changed rows", kind);
                }
            }
            check_invariants(&fs.tables);
        }
    }
}
