//! `pando-node mount PATH` (what `pando mount PATH` runs): the cluster's file system mounted on a machine that is
//! not a member, through the ticket's nodes, with a token of the `fs` capability. The mount is the one a member runs
//! (`pando-node --mount`), over the client protocol instead of the node's own service: the same handlers,
//! write-back buffers, locks and close-to-open checks; the kernel's caches are dropped from a hook stream of
//! `fs.changed` events. Its `.pando/` view reads through the same node with the same token: a category the token may
//! not read is left empty and named, with the node's refusal, in `.pando/errors`. It lives here rather than in the
//! `pando` client because the mount is the actors' code, which the client library never depends on. Runs in the
//! foreground until SIGINT or SIGTERM, or until the mount is unmounted from outside; then writes back what it
//! buffered, releases its locks and unmounts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pando_actors::fuse::backend::Later;
use pando_actors::fuse::view::ViewSource;
use pando_actors::fuse::{FsBackend, FsFeed, IdMap, Mount, MountConfig};
use pando_client::pando_protocol::cluster::ClusterStatus;
use pando_client::pando_protocol::coord::{CoordEvent, CoordRequest, CoordResponse, LeaseInfo};
use pando_client::pando_protocol::error::WireError;
use pando_client::pando_protocol::fs::{
    Attr, Caller, FsCommandKind, FsQueryKind, FsQueryResponse, FsResponse, SessionRequest,
};
use pando_client::pando_protocol::hook::{EventBody, FS_CHANGED_SUBJECT};
use pando_client::pando_protocol::job::QueueStats;
use pando_client::pando_protocol::plugin::{PluginInfo, PluginRequest, PluginResponse};
use pando_client::{Client, ClientError, ClientOptions};

/// The first argument that makes `pando-node` a client mount.
pub const MOUNT_ARG: &str = "mount";

#[derive(Debug, clap::Parser)]
#[command(
    name = "pando mount",
    bin_name = "pando mount",
    about = "Mount the cluster's file system through a node (FUSE)"
)]
pub struct MountArgs {
    /// Cluster ticket whose token has the fs capability (`pando token create --fs read|write`).
    #[arg(long, env = "PANDO_TICKET", hide_env_values = true)]
    ticket: String,
    /// An empty directory to mount at (a mount a crashed `pando mount` left there is cleared first).
    path: PathBuf,
    /// Let other users use the mount (FUSE's allow_other: root, or user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    /// Milliseconds the kernel trusts a file's attributes and a name's lookup (changes anywhere drop them sooner).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    cache_ms: u64,
    /// Commit every write before it returns, instead of buffering writes until close, fsync or 8 MiB.
    #[arg(long)]
    write_through: bool,
    /// Map a local uid to the uid the file system stores, LOCAL:STORED (repeatable).
    #[arg(long = "uid-map", value_name = "LOCAL:STORED")]
    uid_map: Vec<String>,
    /// Map a local gid to the gid the file system stores, LOCAL:STORED (repeatable).
    #[arg(long = "gid-map", value_name = "LOCAL:STORED")]
    gid_map: Vec<String>,
}

/// A node's file system through the client protocol.
struct RemoteFs(Arc<Client>);

/// A client's failure as the mount answers it (a node's refusal keeps its `errno`).
fn wire(error: ClientError) -> WireError {
    match error {
        ClientError::Wire(error) => error,
        other => WireError::new(other.code(), other.to_string()),
    }
}

impl FsBackend for RemoteFs {
    fn command<'a>(&'a self, caller: &'a Caller, kind: FsCommandKind, timeout: Duration) -> Later<'a, FsResponse> {
        Box::pin(async move { self.0.fs_command(caller, kind, timeout).await.map_err(wire) })
    }

    fn query<'a>(&'a self, caller: &'a Caller, kind: FsQueryKind, timeout: Duration) -> Later<'a, FsQueryResponse> {
        Box::pin(async move { self.0.fs_query(caller, kind, timeout).await.map_err(wire) })
    }

    fn session(&self, request: SessionRequest, timeout: Duration) -> Later<'_, Option<LeaseInfo>> {
        Box::pin(async move { self.0.fs_session(request, timeout).await.map_err(wire) })
    }

    fn read_committed<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> Later<'a, (u64, Vec<u8>)> {
        Box::pin(async move { self.0.fs_read(caller, ino, offset, len, timeout).await.map_err(wire) })
    }

    fn write_extents<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        extents: &'a [(u64, Vec<u8>)],
        timeout: Duration,
    ) -> Later<'a, Attr> {
        Box::pin(async move {
            match self.0.fs_write(caller, ino, extents, timeout).await.map_err(wire)? {
                Some(attr) => Ok(attr),
                None => self.attr(caller, ino, timeout).await,
            }
        })
    }

    fn truncate<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        size: u64,
        through_open_file: bool,
        timeout: Duration,
    ) -> Later<'a, Attr> {
        Box::pin(async move { self.0.fs_truncate(caller, ino, size, through_open_file, timeout).await.map_err(wire) })
    }

    fn free_bytes(&self, timeout: Duration) -> Later<'_, Option<u64>> {
        Box::pin(async move { self.0.fs_free_bytes(timeout).await.map_err(wire) })
    }
}

/// How long the feed waits before opening its stream again after it failed: the first pause, doubling to the last.
const FEED_RETRY_MS: u64 = 500;
const FEED_RETRY_MAX_MS: u64 = 30_000;

/// The file system's changes from a hook stream of `fs.changed` (it moves to another node when one goes). When the
/// stream fails, [`FsFeed::Lost`] (every cached inode is dropped) and a new stream, from where the failed one
/// stopped (no change missed), or from now when it made no progress there (the log no longer holds that point).
fn hook_feed(client: Arc<Client>) -> impl futures::Stream<Item = FsFeed> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let mut from = 0;
        let mut pause = FEED_RETRY_MS;
        loop {
            let mut watch = client.hook_watch(FS_CHANGED_SUBJECT, from);
            loop {
                let feed = match watch.next().await {
                    Ok(event) => {
                        pause = FEED_RETRY_MS;
                        match event.body {
                            EventBody::Coord(CoordEvent::FsChanged { inodes, entries }) => {
                                FsFeed::Changed { inodes, entries }
                            }
                            _ => continue,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the mount's change stream failed; dropping every cached inode");
                        if sender.send(FsFeed::Lost).await.is_err() {
                            return;
                        }
                        break;
                    }
                };
                if sender.send(feed).await.is_err() {
                    return;
                }
            }
            let next = watch.next_seq();
            from = if next > from { next } else { 0 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            pause = (pause * 2).min(FEED_RETRY_MAX_MS);
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|feed| (feed, receiver)) })
}

/// The `.pando/` view's sources through the client protocol (each request within the client's own deadline).
struct RemoteView(Arc<Client>);

impl ViewSource for RemoteView {
    fn members(&self, _timeout: Duration) -> Later<'_, ClusterStatus> {
        Box::pin(async move { self.0.cluster_status().await.map_err(wire) })
    }

    fn coord(&self, request: CoordRequest, _timeout: Duration) -> Later<'_, CoordResponse> {
        Box::pin(async move { self.0.coord(request).await.map_err(wire) })
    }

    fn job_stats(&self, _timeout: Duration) -> Later<'_, Vec<QueueStats>> {
        Box::pin(async move { self.0.job_stats().await.map_err(wire) })
    }

    fn plugins(&self, _timeout: Duration) -> Later<'_, Vec<PluginInfo>> {
        Box::pin(async move {
            match self.0.plugin(PluginRequest::List).await.map_err(wire)? {
                PluginResponse::List(plugins) => Ok(plugins),
                other => Err(WireError::internal(format!("a plugin listing answered {other:?}"))),
            }
        })
    }
}

/// Mounts, serves until a signal or an outside unmount, then unmounts.
pub async fn mount(args: MountArgs) -> anyhow::Result<()> {
    let path = pando_actors::fuse::check_mount_point(&args.path)?;
    let options = ClientOptions::new(Duration::from_millis(pando_actors::fuse::FUSE_OP_TIMEOUT_MS));
    let client = Client::new(&args.ticket, options).await?;
    let mut config = MountConfig::new(path);
    config.allow_other = args.allow_other;
    config.read_only = args.read_only;
    config.attr_ttl = Duration::from_millis(args.cache_ms);
    config.entry_ttl = config.attr_ttl;
    config.write_back = !args.write_through;
    config.ids = IdMap::parse(&args.uid_map, &args.gid_map)?;

    let client = Arc::new(client);
    // Fail now, with the node's reason, when the ticket's token may not use the file system.
    client.fs_free_bytes(Duration::from_secs(10)).await.context("the node refused the file system")?;
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let feed = hook_feed(client.clone());
    let backend: Arc<dyn FsBackend> = Arc::new(RemoteFs(client.clone()));
    let view: Arc<dyn ViewSource> = Arc::new(RemoteView(client.clone()));
    let mut mount = Mount::start(config, backend, Some(view), feed, move |outcome| {
        let _ = ended_tx.send(outcome);
    })
    .await?;
    eprintln!("mounted at {} (SIGINT or SIGTERM unmounts)", mount.path().display());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate.recv() => Ok(()),
        outcome = ended => Err(anyhow::anyhow!(
            "the mount at {} ended: {}",
            mount.path().display(),
            outcome.unwrap_or_else(|_| "its session is gone".into())
        )),
    };
    mount.stop().await;
    client.close().await;
    outcome
}
