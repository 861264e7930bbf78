//! The `.pando/` folder at the root of every mount: a read-only view of the coordination state, rendered from the
//! state machine (through the node's services, each a linearizable read) when it is looked at, at most once per
//! [`VIEW_FRESH_MS`]:
//!
//! ```text
//! .pando/members            the members, the leader, and each one's replication lag (one JSON document)
//! .pando/leases/<id>        a lease: its prefix, TTL, deadline and everything it holds
//! .pando/locks/<name>       a held lock or read-write lock (a name with `/` is a path: locks/jobs/main)
//! .pando/queues/<name>      a queue's counts and settings
//! .pando/jobs/<queue>       a job queue's counts
//! .pando/plugins/<name>     a plugin's record and each node's status
//! .pando/errors             only when some category could not be read: which, and why (a client mount's token
//!                           without the capability it needs)
//! ```
//!
//! Files are JSON. The view is root's only (`dr-x------`; a uid mapped to 0 counts as root): it names every lock,
//! lease prefix and queue, which a scoped token would not see. Nothing in it can be written (`EROFS`); `.pando`
//! itself cannot be created, removed or renamed over (`EEXIST`, `EBUSY`, as a mount point), and a file the file
//! system may hold under that name in the root is hidden by it. Files are opened with direct I/O, so a read always
//! sees the current rendering rather than pages from an earlier one.
//!
//! The view's inode numbers start at [`VIEW_INO_BASE`], far above any the file system hands out, and are given out
//! per path as paths are seen (at most [`VIEW_INODES_MAX`] remembered; then the memory starts again, numbers are never reused, and
//! the kernel's older numbers answer `ESTALE`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pando_protocol::cluster::ClusterStatus;
use pando_protocol::coord::{CoordRequest, CoordResponse, LeaseInfo, LockInfo, QueueInfo, RwLockInfo};
use pando_protocol::error::WireError;
use pando_protocol::fs::{
    Attr, Caller, DirEntry, Errno, FileKind, FsCommandKind, FsQueryKind, FsQueryResponse, ROOT_INO, Time, validate_name,
};
use pando_protocol::job::{JobQuery, JobQueryResponse, QueueStats};
use pando_protocol::plugin::{PluginInfo, PluginRequest, PluginResponse};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::backend::Later;
use crate::services::{ClusterService, CoordService, JobService, PluginService};

/// The view's name in the mount's root.
pub const VIEW_NAME: &str = ".pando";
/// The view's root inode; its other inodes follow.
pub const VIEW_INO_BASE: u64 = 1 << 62;
/// Paths the view numbers before it starts again.
pub const VIEW_INODES_MAX: u64 = 1 << 20;
/// How long one rendering serves lookups and reads.
pub const VIEW_FRESH_MS: u64 = 1_000;
const _: () = assert!(pando_protocol::limits::FS_INODES_MAX < VIEW_INO_BASE);

/// What the view reads from: a member's own services ([`ViewSources`]), or, for `pando mount`, a node through the
/// client protocol with the mount's token (which may lack the capabilities some categories need: see [`View`]).
pub trait ViewSource: Send + Sync + 'static {
    fn members(&self, timeout: Duration) -> Later<'_, ClusterStatus>;
    /// A read-only coordination request (the listings).
    fn coord(&self, request: CoordRequest, timeout: Duration) -> Later<'_, CoordResponse>;
    fn job_stats(&self, timeout: Duration) -> Later<'_, Vec<QueueStats>>;
    fn plugins(&self, timeout: Duration) -> Later<'_, Vec<PluginInfo>>;
}

/// A member's own services, for the mount a node runs.
#[derive(Clone)]
pub struct ViewSources {
    pub coord: CoordService,
    pub jobs: JobService,
    pub plugins: PluginService,
    pub cluster: ClusterService,
}

impl ViewSource for ViewSources {
    fn members(&self, _timeout: Duration) -> Later<'_, ClusterStatus> {
        Box::pin(async move { self.cluster.status() })
    }

    fn coord(&self, request: CoordRequest, timeout: Duration) -> Later<'_, CoordResponse> {
        Box::pin(async move { self.coord.execute("fuse-view", request, timeout).await })
    }

    fn job_stats(&self, timeout: Duration) -> Later<'_, Vec<QueueStats>> {
        Box::pin(async move {
            match self.jobs.query(JobQuery::Stats, timeout).await? {
                JobQueryResponse::Stats(queues) => Ok(queues),
                other => Err(unexpected("the job statistics", other)),
            }
        })
    }

    fn plugins(&self, timeout: Duration) -> Later<'_, Vec<PluginInfo>> {
        Box::pin(async move {
            match self.plugins.execute(PluginRequest::List, timeout, None).await? {
                PluginResponse::List(plugins) => Ok(plugins),
                other => Err(unexpected("the plugin listing", other)),
            }
        })
    }
}

pub fn is_view(ino: u64) -> bool {
    ino >= VIEW_INO_BASE
}

fn is_view_name(parent: u64, name: &str) -> bool {
    parent == ROOT_INO && name == VIEW_NAME
}

/// One rendering: every path (`""` is `.pando` itself) and what it is.
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
    at: Time,
}

enum Node {
    Dir(BTreeSet<String>),
    File(Arc<Vec<u8>>),
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_string() } else { format!("{path}/{name}") }
}

impl Tree {
    fn new(at: Time) -> Tree {
        let mut tree = Tree { nodes: BTreeMap::new(), at };
        tree.nodes.insert(String::new(), Node::Dir(BTreeSet::new()));
        tree
    }

    fn dir(&mut self, path: &str) -> bool {
        match self.nodes.get(path) {
            Some(Node::Dir(_)) => return true,
            Some(Node::File(_)) => return false,
            None => {}
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        if !self.dir(parent) {
            return false;
        }
        if let Some(Node::Dir(children)) = self.nodes.get_mut(parent) {
            children.insert(name.to_string());
        }
        self.nodes.insert(path.to_string(), Node::Dir(BTreeSet::new()));
        true
    }

    /// Puts `document` at `category/name`: a name with `/` becomes a path when every part of it is a file name and
    /// no file stands where it needs a directory; otherwise it is one entry with `/` and `%` written `%2F` and `%25`.
    fn file(&mut self, category: &str, name: &str, document: &Value) {
        let mut bytes = serde_json::to_vec_pretty(document).unwrap_or_default();
        bytes.push(b'\n');
        let bytes = Arc::new(bytes);
        let nested = name.split('/').all(|part| validate_name(part).is_ok());
        if nested && self.put(&child(category, name), bytes.clone()) {
            return;
        }
        let flat = name.replace('%', "%25").replace('/', "%2F");
        if validate_name(&flat).is_ok() {
            self.put(&child(category, &flat), bytes);
        }
    }

    fn put(&mut self, path: &str, bytes: Arc<Vec<u8>>) -> bool {
        if self.nodes.contains_key(path) {
            return false;
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        if !self.dir(parent) {
            return false;
        }
        if let Some(Node::Dir(children)) = self.nodes.get_mut(parent) {
            children.insert(name.to_string());
        }
        self.nodes.insert(path.to_string(), Node::File(bytes));
        true
    }
}

/// Path and inode numbers, both ways.
#[derive(Default)]
struct Inodes {
    by_path: HashMap<String, u64>,
    by_ino: HashMap<u64, String>,
    /// Paths numbered so far (never reused: a number the kernel kept from before a reset answers `ESTALE`).
    numbered: u64,
}

impl Inodes {
    fn ino(&mut self, path: &str) -> u64 {
        if let Some(ino) = self.by_path.get(path) {
            return *ino;
        }
        if self.by_path.len() as u64 >= VIEW_INODES_MAX {
            self.by_path.clear();
            self.by_ino.clear();
        }
        // The root is always the base; the others follow in the order they are seen.
        let ino = if path.is_empty() {
            VIEW_INO_BASE
        } else {
            self.numbered += 1;
            VIEW_INO_BASE + self.numbered
        };
        self.by_path.insert(path.to_string(), ino);
        self.by_ino.insert(ino, path.to_string());
        ino
    }
}

/// The view's files, rendered from a [`ViewSource`]. A category the source may not read (`UNAUTHORIZED`: a client
/// mount's token without that capability) is left empty and named, with the refusal, in `.pando/errors`; any other
/// failure fails the rendering.
pub(super) struct View {
    sources: Arc<dyn ViewSource>,
    timeout: Duration,
    inodes: Mutex<Inodes>,
    rendered: tokio::sync::Mutex<Option<(Instant, Arc<Tree>)>>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn lease_document(lease: &LeaseInfo) -> Value {
    let names = |list: &[pando_protocol::kv::Bytes]| list.iter().map(|name| text(name)).collect::<Vec<_>>();
    json!({
        "id": lease.id,
        "prefix": text(&lease.prefix),
        "ttl_ms": lease.ttl_ms,
        "deadline_ms": lease.deadline_ms,
        "locks": names(&lease.locks),
        "rwlocks": names(&lease.rwlocks),
        "semaphores": names(&lease.semaphores),
        "elections": names(&lease.elections),
        "barriers": names(&lease.barriers),
        "keys": lease.keys.len(),
        "services": lease.services.len(),
        "file_locks_on_inodes": lease.files,
    })
}

fn lock_document(lock: &LockInfo) -> Value {
    let holder = lock.holder.as_ref();
    json!({
        "kind": "lock",
        "name": text(&lock.name),
        "lease": holder.map(|holder| holder.lease),
        "token": holder.map(|holder| holder.token),
        "acquired_ms": holder.map(|holder| holder.acquired_ms),
        "last_token": lock.last_token,
    })
}

fn rwlock_document(rwlock: &RwLockInfo) -> Value {
    json!({
        "kind": "rwlock",
        "name": text(&rwlock.name),
        "writer": rwlock.writer.as_ref().map(|writer| json!({ "lease": writer.lease, "token": writer.token })),
        "readers": rwlock.readers,
        "last_token": rwlock.last_token,
    })
}

fn queue_document(queue: &QueueInfo) -> Value {
    // Every field as it is, but the name as text (it serializes as bytes).
    let mut document = serde_json::to_value(queue).unwrap_or(Value::Null);
    if let Some(fields) = document.as_object_mut() {
        fields.insert("name".into(), Value::String(text(&queue.name)));
    }
    document
}

fn job_queue_document(stats: &QueueStats) -> Value {
    serde_json::to_value(stats).unwrap_or(Value::Null)
}

fn plugin_document(plugin: &PluginInfo) -> Value {
    let record = &plugin.record;
    json!({
        "name": record.manifest.name,
        "version": record.manifest.version,
        "generation": record.generation,
        "enabled": record.enabled,
        "wasm": record.wasm.to_hex(),
        "wasm_size": record.wasm_size,
        "installed_ms": record.installed_ms,
        "updated_ms": record.updated_ms,
        "nodes": plugin.nodes.iter().map(|status| json!({
            "node": status.node,
            "running": status.running,
            "state": serde_json::to_value(status.state).unwrap_or(Value::Null),
            "generation": status.generation,
            "error": status.error,
        })).collect::<Vec<_>>(),
    })
}

/// A category's answer: its value, or `None` when the source may not read it (the refusal goes to `refused`, a line
/// for `.pando/errors`); any other failure fails the rendering.
fn readable<T>(
    answer: Result<T, WireError>,
    category: &str,
    refused: &mut Vec<String>,
) -> Result<Option<T>, WireError> {
    match answer {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.code == pando_protocol::error::ErrorCode::Unauthorized => {
            refused.push(format!("{category}: {error}\n"));
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

fn unexpected(what: &str, answer: impl std::fmt::Debug) -> WireError {
    WireError::internal(format!("{what} answered {answer:?}"))
}

impl View {
    pub(super) fn new(sources: Arc<dyn ViewSource>, timeout: Duration) -> View {
        View { sources, timeout, inodes: Mutex::default(), rendered: tokio::sync::Mutex::new(None) }
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current rendering (a fresh one when the last is older than [`VIEW_FRESH_MS`]).
    async fn tree(&self) -> Result<Arc<Tree>, WireError> {
        let mut rendered = self.rendered.lock().await;
        if let Some((at, tree)) = rendered.as_ref()
            && at.elapsed() < Duration::from_millis(VIEW_FRESH_MS)
        {
            return Ok(tree.clone());
        }
        let tree = Arc::new(self.render().await?);
        *rendered = Some((Instant::now(), tree.clone()));
        Ok(tree)
    }

    async fn render(&self) -> Result<Tree, WireError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut tree = Tree::new(Time { secs: now.as_secs() as i64, nanos: now.subsec_nanos() });
        for category in ["leases", "locks", "queues", "jobs", "plugins"] {
            tree.dir(category);
        }
        let mut refused = Vec::new();
        if let Some(status) = readable(self.sources.members(self.timeout).await, "members", &mut refused)? {
            let members: Vec<Value> = status
                .members
                .iter()
                .map(|member| {
                    json!({
                        "node_id": member.node_id,
                        "voter": member.voter,
                        "leader": status.leader_id == Some(member.node_id),
                        "addrs": member.addrs.iter().map(|addr| addr.to_string()).collect::<Vec<_>>(),
                        "public_key": member.public_key,
                        "lag": member.lag,
                    })
                })
                .collect();
            let members = json!({ "leader": status.leader_id, "term": status.term, "members": members });
            tree.put(
                "members",
                Arc::new(format!("{}\n", serde_json::to_string_pretty(&members).unwrap_or_default()).into_bytes()),
            );
        }

        let coord = |request| self.sources.coord(request, self.timeout);
        match readable(coord(CoordRequest::LeaseList { prefix: Default::default() }).await, "leases", &mut refused)? {
            Some(CoordResponse::Leases { leases, .. }) => {
                for lease in &leases {
                    tree.file("leases", &lease.id.to_string(), &lease_document(lease));
                }
            }
            None => {}
            Some(other) => return Err(unexpected("a lease listing", other)),
        }
        match readable(coord(CoordRequest::LockList { prefix: Default::default() }).await, "locks", &mut refused)? {
            Some(CoordResponse::Locks { locks, rwlocks, .. }) => {
                for lock in &locks {
                    tree.file("locks", &text(&lock.name), &lock_document(lock));
                }
                for rwlock in &rwlocks {
                    tree.file("locks", &text(&rwlock.name), &rwlock_document(rwlock));
                }
            }
            None => {}
            Some(other) => return Err(unexpected("a lock listing", other)),
        }
        match readable(coord(CoordRequest::QueueList { prefix: Default::default() }).await, "queues", &mut refused)? {
            Some(CoordResponse::Queues { queues, .. }) => {
                for queue in &queues {
                    tree.file("queues", &text(&queue.name), &queue_document(queue));
                }
            }
            None => {}
            Some(other) => return Err(unexpected("a queue listing", other)),
        }
        for stats in readable(self.sources.job_stats(self.timeout).await, "jobs", &mut refused)?.unwrap_or_default() {
            tree.file("jobs", &stats.queue, &job_queue_document(&stats));
        }
        for plugin in readable(self.sources.plugins(self.timeout).await, "plugins", &mut refused)?.unwrap_or_default() {
            tree.file("plugins", &plugin.record.manifest.name, &plugin_document(&plugin));
        }
        if !refused.is_empty() {
            tree.put("errors", Arc::new(refused.join("").into_bytes()));
        }
        Ok(tree)
    }

    fn attr(&self, tree: &Tree, path: &str) -> Option<Attr> {
        let node = tree.nodes.get(path)?;
        let mut inodes = self.inodes();
        let ino = inodes.ino(path);
        let parent = match path.rsplit_once('/') {
            Some((parent, _)) => inodes.ino(parent),
            None if path.is_empty() => ROOT_INO,
            None => VIEW_INO_BASE,
        };
        let (kind, perm, nlink, size) = match node {
            Node::Dir(children) => (FileKind::Dir, 0o500, 2, children.len() as u64),
            Node::File(bytes) => (FileKind::File, 0o400, 1, bytes.len() as u64),
        };
        let at = tree.at;
        Some(Attr {
            ino,
            kind,
            perm,
            uid: 0,
            gid: 0,
            nlink,
            size,
            atime: at,
            mtime: at,
            ctime: at,
            crtime: at,
            rdev: 0,
            parent,
        })
    }

    fn path_of(&self, ino: u64) -> Result<String, WireError> {
        self.inodes()
            .by_ino
            .get(&ino)
            .cloned()
            .ok_or_else(|| Errno::ESTALE.error(format!("inode {ino} of {VIEW_NAME} is no longer known")))
    }

    async fn found(&self, path: &str) -> Result<(Arc<Tree>, Attr), WireError> {
        let tree = self.tree().await?;
        let attr = self.attr(&tree, path).ok_or_else(|| {
            Errno::ENOENT.error(format!("{VIEW_NAME}/{path} is gone (what it showed no longer exists)"))
        })?;
        Ok((tree, attr))
    }

    /// Answers a query about the view (`None`: it is not about the view).
    pub(super) async fn query(
        &self,
        caller: &Caller,
        kind: &FsQueryKind,
    ) -> Option<Result<FsQueryResponse, WireError>> {
        let root_only = || Errno::EACCES.error(format!("{VIEW_NAME} is root's only"));
        Some(match kind {
            FsQueryKind::Lookup { parent, name } if is_view_name(*parent, name) => {
                self.found("").await.map(|(_, attr)| FsQueryResponse::Attr(attr))
            }
            FsQueryKind::Lookup { parent, name } if is_view(*parent) => {
                if !caller.is_root() {
                    return Some(Err(root_only()));
                }
                match self.path_of(*parent) {
                    Ok(path) => self.found(&child(&path, name)).await.map(|(_, attr)| FsQueryResponse::Attr(attr)),
                    Err(error) => Err(error),
                }
            }
            FsQueryKind::GetAttr { ino } if is_view(*ino) => match self.path_of(*ino) {
                Ok(path) => self.found(&path).await.map(|(_, attr)| FsQueryResponse::Attr(attr)),
                Err(error) => Err(error),
            },
            FsQueryKind::ReadDir { ino, after, limit } if is_view(*ino) => {
                if !caller.is_root() {
                    return Some(Err(root_only()));
                }
                self.entries(*ino, after.as_deref(), *limit).await
            }
            FsQueryKind::Access { ino, mask } if is_view(*ino) => {
                if *mask & 2 != 0 {
                    Err(Errno::EROFS.error(format!("{VIEW_NAME} is read-only")))
                } else if *mask != 0 && !caller.is_root() {
                    Err(root_only())
                } else {
                    Ok(FsQueryResponse::Allowed)
                }
            }
            FsQueryKind::ReadLink { ino } | FsQueryKind::Read { ino, .. } if is_view(*ino) => {
                Err(Errno::EINVAL.error(format!("inode {ino} of {VIEW_NAME} is not a link")))
            }
            FsQueryKind::GetXattr { ino, .. } if is_view(*ino) => Err(Errno::ENODATA.error("no attributes")),
            FsQueryKind::ListXattr { ino } if is_view(*ino) => Ok(FsQueryResponse::XattrNames(Vec::new())),
            FsQueryKind::TestLock { ino, .. } if is_view(*ino) => Ok(FsQueryResponse::Lock(None)),
            _ => return None,
        })
    }

    async fn entries(&self, ino: u64, after: Option<&str>, limit: u32) -> Result<FsQueryResponse, WireError> {
        let path = self.path_of(ino)?;
        let (tree, _) = self.found(&path).await?;
        let Some(Node::Dir(children)) = tree.nodes.get(&path) else {
            return Err(Errno::ENOTDIR.error(format!("{VIEW_NAME}/{path} is not a directory")));
        };
        let mut entries = Vec::new();
        let mut names = children.iter().filter(|name| after.is_none_or(|after| name.as_str() > after));
        for name in names.by_ref().take(limit as usize) {
            let full = child(&path, name);
            let kind = if matches!(tree.nodes.get(&full), Some(Node::Dir(_))) { FileKind::Dir } else { FileKind::File };
            entries.push(DirEntry { name: name.clone(), ino: self.inodes().ino(&full), kind });
        }
        Ok(FsQueryResponse::Entries { entries, more: names.next().is_some() })
    }

    /// `size` bytes of a view file from `offset`, as rendered now.
    pub(super) async fn read(&self, caller: &Caller, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, WireError> {
        if !caller.is_root() {
            return Err(Errno::EACCES.error(format!("{VIEW_NAME} is root's only")));
        }
        let path = self.path_of(ino)?;
        let (tree, _) = self.found(&path).await?;
        match tree.nodes.get(&path) {
            Some(Node::File(bytes)) => {
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            _ => Err(Errno::EISDIR.error(format!("{VIEW_NAME}/{path} is a directory"))),
        }
    }

    /// The view's root as a listing row of the mount's root (it hides a file of that name there).
    pub(super) fn root_entry(&self) -> DirEntry {
        DirEntry { name: VIEW_NAME.to_string(), ino: self.inodes().ino(""), kind: FileKind::Dir }
    }
}

/// Why a command may not run: it changes the view or names `.pando` in the root (`None`: it may).
pub(super) fn refusal(kind: &FsCommandKind) -> Option<WireError> {
    let read_only = || Some(Errno::EROFS.error(format!("{VIEW_NAME} is read-only")));
    let busy = || Some(Errno::EBUSY.error(format!("{VIEW_NAME} is the cluster's view; it cannot be moved or removed")));
    match kind {
        FsCommandKind::Create { parent, name, .. }
        | FsCommandKind::Mkdir { parent, name, .. }
        | FsCommandKind::Symlink { parent, name, .. }
        | FsCommandKind::Link { parent, name, .. }
            if is_view_name(*parent, name) =>
        {
            Some(Errno::EEXIST.error(format!("{VIEW_NAME} exists (the cluster's view)")))
        }
        FsCommandKind::Unlink { parent, name } | FsCommandKind::Rmdir { parent, name }
            if is_view_name(*parent, name) =>
        {
            busy()
        }
        FsCommandKind::Rename { parent, name, new_parent, new_name, .. }
            if is_view_name(*parent, name) || is_view_name(*new_parent, new_name) =>
        {
            busy()
        }
        FsCommandKind::Rename { parent, new_parent, .. } if is_view(*parent) || is_view(*new_parent) => read_only(),
        FsCommandKind::Link { ino, parent, .. } if is_view(*ino) || is_view(*parent) => read_only(),
        FsCommandKind::Create { parent, .. }
        | FsCommandKind::Mkdir { parent, .. }
        | FsCommandKind::Symlink { parent, .. }
        | FsCommandKind::Unlink { parent, .. }
        | FsCommandKind::Rmdir { parent, .. }
            if is_view(*parent) =>
        {
            read_only()
        }
        FsCommandKind::SetAttr { ino, .. }
        | FsCommandKind::Write { ino, .. }
        | FsCommandKind::SetChunks { ino, .. }
        | FsCommandKind::SetXattr { ino, .. }
        | FsCommandKind::RemoveXattr { ino, .. }
        | FsCommandKind::SetLock { ino, .. }
        | FsCommandKind::ReleaseLocks { ino, .. }
        | FsCommandKind::KeepOpen { ino, .. }
        | FsCommandKind::ReleaseKept { ino, .. }
            if is_view(*ino) =>
        {
            read_only()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_become_paths_unless_a_part_is_no_name_or_a_file_is_in_the_way() {
        let mut tree = Tree::new(Time::default());
        tree.dir("locks");
        tree.file("locks", "jobs/main", &json!(1));
        tree.file("locks", "jobs", &json!(2));
        tree.file("locks", "a//b", &json!(3));
        tree.file("locks", "jobs/main/x", &json!(4));
        let paths: Vec<&str> = tree.nodes.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            ["", "locks", "locks/a%2F%2Fb", "locks/jobs", "locks/jobs%2Fmain%2Fx", "locks/jobs/main"],
            "a lock named like a directory, or under a file, is flattened"
        );
        assert!(matches!(tree.nodes.get("locks/jobs"), Some(Node::Dir(_))));
    }

    #[test]
    fn commands_that_touch_the_view_are_refused_and_others_pass() {
        let view_file = VIEW_INO_BASE + 3;
        let create = |parent: u64, name: &str| FsCommandKind::Mkdir { parent, name: name.into(), perm: 0o755 };
        let errno = |kind: &FsCommandKind| refusal(kind).map(|error| Errno::of(&error));
        assert_eq!(errno(&create(ROOT_INO, VIEW_NAME)), Some(Errno::EEXIST.code()));
        assert_eq!(errno(&create(VIEW_INO_BASE, "x")), Some(Errno::EROFS.code()));
        assert_eq!(errno(&create(ROOT_INO, "x")), None);
        let unlink = FsCommandKind::Rmdir { parent: ROOT_INO, name: VIEW_NAME.into() };
        assert_eq!(errno(&unlink), Some(Errno::EBUSY.code()));
        let write = FsCommandKind::Write {
            ino: view_file,
            offset: 0,
            data: Default::default(),
            append: false,
            answer_attr: false,
        };
        assert_eq!(errno(&write), Some(Errno::EROFS.code()));
    }
}
