//! `pando-node`: the composition root. Reads the configuration and data directory, loads or creates the identity,
//! binds the iroh endpoint, starts the supervision tree, writes the ticket (on the founder's first start with an admin
//! token, printed that once), and shuts down in order on SIGINT/SIGTERM.

mod args;
mod identity;
mod membership;
mod mount;
mod rotation;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use iroh::endpoint::presets;
use iroh::{Endpoint, SecretKey};
use pando_actors::clock::Clock;
use pando_actors::raft::RaftHandle;
use pando_actors::raft::transport::IrohNetwork;
use pando_actors::supervision::{ChildSpec, Restart, Supervisor, SupervisorMsg};
use pando_actors::tree::{self, ClusterKeys, Handles};
use pando_protocol::alpn;
use pando_protocol::cluster::MemberNode;
use pando_protocol::kv::Bytes;
use ractor::Actor;
use tracing_subscriber::EnvFilter;

use crate::args::Args;
use crate::identity::NodeRecord;

/// How long a starting node waits to learn a leader before it reports ready anyway.
const LEADER_WAIT_MS_MAX: u64 = 10_000;
/// How long the tree may take to start a child added at run time.
const CHILD_START_TIMEOUT_MS: u64 = 10_000;
/// How long an orderly shutdown may take before the process exits anyway.
const SHUTDOWN_TIMEOUT_MS: u64 = 20_000;
// The mount's stop (write-backs, unmount, revoke) runs inside the node's.
const _: () = assert!(pando_actors::fuse::FUSE_STOP_MS < SHUTDOWN_TIMEOUT_MS);
/// Log filter when `PANDO_LOG` is unset: openraft narrates every election at info level.
const LOG_FILTER_DEFAULT: &str = "info,openraft=warn";
/// Address used on first start when `--bind` is not given.
const BIND_DEFAULT: &str = "127.0.0.1:0";

/// The `--mount` configuration, checked before the node starts (a clear error when FUSE or the mount point is not
/// usable, rather than a child that fails after the node came up).
fn mount_config(args: &Args) -> anyhow::Result<Option<pando_actors::fuse::MountConfig>> {
    use pando_actors::fuse::{IdMap, MountConfig};
    let Some(path) = &args.mount else { return Ok(None) };
    let path = pando_actors::fuse::check_mount_point(path).context("--mount")?;
    let mut config = MountConfig::new(path);
    config.allow_other = args.mount_allow_other;
    config.read_only = args.mount_read_only;
    config.attr_ttl = Duration::from_millis(args.mount_cache_ms);
    config.entry_ttl = config.attr_ttl;
    config.write_back = !args.mount_write_through;
    config.ids = IdMap::parse(&args.mount_uid_map, &args.mount_gid_map)?;
    Ok(Some(config))
}

/// How `run` ended.
enum Outcome {
    /// Exit with this code.
    Exit(i32),
    /// The cluster registered this node's new key: restart in place with it.
    Restart,
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|arg| arg == pando_actors::process::REAPER_ARG) {
        // The reaper of a node that started this binary (see `pando_actors::process`).
        pando_actors::process::serve(std::io::stdin().lock(), pando_actors::process::REAPER_GRACE);
        return Ok(());
    }
    if std::env::args_os().nth(1).is_some_and(|arg| arg == mount::MOUNT_ARG) {
        let args = <mount::MountArgs as Parser>::parse_from(std::env::args_os().skip(1));
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(EnvFilter::try_from_env("PANDO_LOG").unwrap_or_else(|_| EnvFilter::new("warn")))
            .init();
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let mounted = runtime.block_on(mount::mount(args));
        runtime.shutdown_timeout(Duration::from_millis(SHUTDOWN_TIMEOUT_MS));
        return mounted;
    }
    let args = args::parse()?;
    if args.print_config {
        print!("{}", args::effective_settings(&args)?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_env("PANDO_LOG").unwrap_or_else(|_| EnvFilter::new(LOG_FILTER_DEFAULT)))
        .init();
    if args.rotate_key {
        return begin_rotation(&args.data_dir);
    }
    let data_dir = args.data_dir.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = runtime.block_on(run(args))?;
    runtime.shutdown_timeout(Duration::from_millis(SHUTDOWN_TIMEOUT_MS));
    match outcome {
        Outcome::Exit(code) => std::process::exit(code),
        Outcome::Restart => restart_with_new_key(&data_dir),
    }
}

/// `--rotate-key`: writes the new key (or reports the pending one) and says what happens next.
fn begin_rotation(data_dir: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        data_dir.join("node.json").exists(),
        "{} holds no node that belongs to a cluster: there is no key to rotate",
        data_dir.display()
    );
    let (key, fresh) = identity::begin_key_rotation(data_dir)?;
    let public = SecretKey::from_bytes(&key).public();
    if fresh {
        println!("OK new node key {public}: the running node registers it and restarts with it within seconds");
    } else {
        println!("OK a rotation to key {public} is already pending; the node finishes it while it runs");
    }
    Ok(())
}

/// Makes the registered key the node's own and replaces this process with a fresh start of the same command line.
fn restart_with_new_key(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    identity::finish_key_rotation(data_dir)?;
    tracing::info!("node key rotated; restarting with the new key");
    let executable = std::env::current_exe().context("cannot find this executable to restart it")?;
    let error = std::process::Command::new(executable).args(std::env::args_os().skip(1)).exec();
    Err(anyhow::anyhow!("cannot restart with the new key: {error}"))
}

async fn run(args: Args) -> anyhow::Result<Outcome> {
    identity::prepare_data_dir(&args.data_dir)?;
    if args.enable_fault_injection {
        tracing::warn!(
            "fault injection is ON: any admin client can make this node's actors panic; never use in production"
        );
    }
    let identity = identity::load_or_create(&args.data_dir)?;
    let bind = match (args.bind, &identity.record) {
        (Some(bind), _) => bind,
        (None, Some(record)) => record.bind,
        (None, None) => BIND_DEFAULT.parse().expect("default bind address parses"),
    };
    if !bind.ip().is_loopback() {
        tracing::warn!(%bind, "listening beyond loopback: clients need a token, keep tickets that carry one secret");
    }
    if args.admin_token_ttl_secs == 0 && identity.record.is_none() && args.join.is_none() {
        tracing::warn!(
            "the admin token will never expire (--admin-token-ttl-secs 0); revoke it with `pando token revoke`"
        );
    }

    let secret = SecretKey::from_bytes(&identity.node_key);
    let endpoint = Endpoint::builder(presets::Minimal)
        .secret_key(secret.clone())
        .alpns(vec![alpn::RPC.to_vec(), alpn::RAFT.to_vec(), alpn::ACTORS.to_vec(), alpn::BLOBS.to_vec()])
        .transport_config(pando_client::node_quic_transport_config())
        .clear_ip_transports()
        .bind_addr(bind)
        .with_context(|| format!("invalid bind address {bind}"))?
        .bind()
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let bound = *endpoint.bound_sockets().first().context("endpoint has no bound socket")?;
    let me = MemberNode { public_key: Bytes::from(secret.public().as_bytes().to_vec()), addrs: vec![bound] };

    let (mut record, member_secret) = match (identity.record, &args.join) {
        (Some(record), join) => {
            if join.is_some() {
                tracing::warn!("--join ignored: this node already belongs to a cluster");
            }
            (NodeRecord { bind: bound, ..record }, identity.cluster_key)
        }
        (None, Some(join_ticket)) => {
            let joined = membership::join(join_ticket, me.clone(), identity.node_key).await?;
            identity::write_private(&identity::cluster_key_path(&args.data_dir), &joined.member_secret)?;
            let seeds =
                joined.members.iter().filter_map(|member| member.node.public_key.as_slice().try_into().ok()).collect();
            tracing::info!(node_id = joined.node_id, "joined the cluster as a learner");
            let record = NodeRecord {
                node_id: joined.node_id,
                cluster_id: joined.cluster_id,
                bind: bound,
                founder: false,
                seeds,
                admin_minted: false,
            };
            (record, joined.member_secret)
        }
        (None, None) => {
            let record = NodeRecord {
                node_id: 1,
                cluster_id: identity::new_cluster_id(),
                bind: bound,
                founder: true,
                seeds: Vec::new(),
                admin_minted: false,
            };
            (record, identity.cluster_key)
        }
    };
    // Persist the actual port, so a restart listens where clients and peers already look.
    identity::save_record(&args.data_dir, &record)?;

    let handles = Handles::new(record.node_id, record.seeds.iter().copied());
    for queue in &args.job_queues {
        pando_protocol::job::validate_name("queue", queue)
            .map_err(|error| anyhow::anyhow!("--job-queues: {}", error.message))?;
    }
    let reaper = match args.shell_hooks + args.job_workers {
        0 => pando_actors::process::Reaper::none(),
        _ => pando_actors::process::Reaper::start_own().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot start the process reaper: commands may outlive a crash of this node");
            pando_actors::process::Reaper::none()
        }),
    };
    let mount = mount_config(&args)?;
    let mut raft_config = pando_actors::raft::default_config();
    raft_config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(args.snapshot_every);
    raft_config.max_in_snapshot_log_to_keep = args.snapshot_keep_log;
    let raft_config = Arc::new(raft_config.validate().context("invalid raft configuration")?);
    let tree = tree::root(tree::TreeConfig {
        data_dir: args.data_dir.clone(),
        node_id: record.node_id,
        raft_config,
        // The founder always offers the bootstrap: openraft refuses (and the RaftActor ignores) initialisation once the
        // log holds a membership, so a crash before the first membership entry cannot leave it uninitialised.
        bootstrap: record.founder.then(|| BTreeMap::from([(record.node_id, me.clone())])),
        network: IrohNetwork::new(endpoint.clone(), handles.raft.peer_health()).into(),
        keys: ClusterKeys { cluster_id: record.cluster_id.clone(), member_secret },
        fault_injection: args.enable_fault_injection,
        clock: Clock::Wall,
        handles: handles.clone(),
        retention: pando_actors::retention::RetentionConfig {
            keep_revisions: args.history_keep_revisions,
            keep_age: (args.history_keep_secs > 0).then(|| Duration::from_secs(args.history_keep_secs)),
        },
        world: tree::World::Iroh {
            endpoint: endpoint.clone(),
            blobs: pando_actors::blobs::BlobConfig {
                dir: args.data_dir.join("blobs"),
                default_replicas: args.blob_replicas,
                gc_grace: Duration::from_secs(args.blob_gc_grace_secs),
                store_gc_interval: Duration::from_secs(args.blob_store_gc_secs.max(1)),
                repair_interval: Duration::from_millis(args.blob_repair_interval_ms.max(50)),
                kv_inline_max_bytes: args.blob_threshold as usize,
                max_blob_bytes: args.blob_max_mib.saturating_mul(1 << 20),
            },
            plugins: pando_actors::plugins::PluginConfig {
                restart_intensity: args.plugin_restart_intensity,
                restart_period: Duration::from_secs(args.plugin_restart_period_secs.max(1)),
                ..pando_actors::plugins::PluginConfig::default()
            },
            exec: pando_actors::hooks::exec::ExecConfig::new(args.shell_hooks as usize, reaper),
            jobs: pando_actors::jobs::JobsConfig {
                workers: args.job_workers as usize,
                queues: args.job_queues.clone(),
                lease_ms: (args.job_lease_secs * 1000).max(pando_protocol::limits::JOB_LEASE_MS_MIN),
                followers_claim: true,
            },
            mount,
        },
    });
    let (root, root_handle) =
        Actor::spawn(None, Supervisor, tree).await.context("cannot start the supervision tree")?;
    handles.tree.set_root(root.clone());

    if !wait_for_leader(&handles.raft).await {
        tracing::warn!("no leader known after {LEADER_WAIT_MS_MAX} ms; serving anyway (a quorum may be down)");
    }
    let cluster_identity = membership::ClusterIdentity {
        node_id: record.node_id,
        cluster_id: record.cluster_id.clone(),
        me,
        node_key: identity.node_key,
    };
    let mut rotation =
        tokio::spawn(rotation::register_pending(args.data_dir.clone(), cluster_identity.clone(), handles.raft.clone()));
    // The founder's first start (or its first since token records): mint the admin token, write it into the ticket
    // file (mode 0600) and print that ticket this once. Every later start prints the address book only. The founder's
    // first ticket file already carries the token (a script waiting for the file never reads one without it).
    let printed = if record.founder && !record.admin_minted {
        let ttl_ms = match args.admin_token_ttl_secs {
            0 => Some(0),
            secs => Some(secs.saturating_mul(1_000)),
        };
        let admin = mint_admin(&handles, ttl_ms).await?;
        let address_book = membership::address_book(&cluster_identity, &handles.raft);
        let ticket = pando_protocol::ticket::Ticket { token: Some(admin), ..address_book };
        identity::write_private(&identity::ticket_path(&args.data_dir), ticket.encode().as_bytes())?;
        record.admin_minted = true;
        identity::save_record(&args.data_dir, &record)?;
        ticket
    } else {
        membership::write_tickets(&args.data_dir, &cluster_identity, &handles.raft)?
    };
    // Under the tree, started now that the tickets exist: a child added at run time, restarted like the others.
    let duties = membership::DutiesArgs {
        data_dir: args.data_dir.clone(),
        identity: cluster_identity,
        raft: handles.raft.clone(),
        wants_promotion: !record.founder,
    };
    let spec = ChildSpec::new("membership", Restart::Permanent, membership::DutiesActor, duties);
    match ractor::call_t!(root, SupervisorMsg::StartChild, CHILD_START_TIMEOUT_MS, spec) {
        Ok(Ok(())) => {}
        Ok(Err(error)) => anyhow::bail!("cannot start the membership duties: {error}"),
        Err(error) => anyhow::bail!("the supervision tree did not start the membership duties: {error}"),
    }
    tracing::info!(node_id = record.node_id, addr = %bound, ticket = %identity::ticket_path(&args.data_dir).display(), "node ready");
    // A launcher that read the first line and closed the pipe (or a restart with a new key, which prints again) must
    // not take the node down: a failed print is ignored.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{}", printed.encode());
    }

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT received, shutting down"); Outcome::Exit(0) }
        _ = terminate.recv() => { tracing::info!("SIGTERM received, shutting down"); Outcome::Exit(0) }
        Ok(()) = &mut rotation => { tracing::info!("the cluster registered this node's new key; stopping to restart"); Outcome::Restart }
        result = root_handle => {
            // The root only exits by itself when a restart storm escalated past it.
            tracing::error!(?result, "supervision tree gave up");
            Outcome::Exit(1)
        }
    };
    rotation.abort();
    if !matches!(outcome, Outcome::Exit(1)) {
        let stop = root.stop_and_wait(Some("shutdown".into()), Some(Duration::from_millis(SHUTDOWN_TIMEOUT_MS)));
        if stop.await.is_err() {
            tracing::warn!("supervision tree did not stop within {SHUTDOWN_TIMEOUT_MS} ms");
        }
    }
    endpoint.close().await;
    tracing::info!("stopped");
    Ok(outcome)
}

/// How long the founder's first start may take to record its admin token.
const ADMIN_MINT_WAIT_MS_MAX: u64 = 60_000;

/// Records a fresh admin token (every capability) through the log and answers it.
async fn mint_admin(handles: &Handles, ttl_ms: Option<u64>) -> anyhow::Result<pando_protocol::token::CapabilityToken> {
    use pando_actors::services::tokens::{create_command, fresh_token};
    use pando_protocol::command::Command;
    use pando_protocol::token::Capability;
    let admin = fresh_token();
    let command = Command::Token(create_command(&admin, "admin".into(), vec![Capability::All], ttl_ms, None));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ADMIN_MINT_WAIT_MS_MAX);
    loop {
        // On the founder's first start it leads alone; token commands never travel over the actor mesh.
        match handles.raft.propose(command.clone(), Duration::from_secs(5)).await {
            Ok(_) => return Ok(admin),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("cannot record the admin token: {error}")
            }
            Err(error) => {
                tracing::debug!(%error, "admin token not recorded yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Waits (bounded) until this node knows a leader; says whether it does.
async fn wait_for_leader(raft: &RaftHandle) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(LEADER_WAIT_MS_MAX);
    while tokio::time::Instant::now() < deadline {
        if let Ok(core) = raft.core() {
            let mut metrics = core.raft.metrics();
            if metrics.borrow().current_leader.is_some() {
                return true;
            }
            let _ = tokio::time::timeout_at(deadline, metrics.changed()).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    false
}
