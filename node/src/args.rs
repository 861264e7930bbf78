//! `pando-node`'s flags, and where they come from: the command line, then the environment, then the settings file
//! named by `--config` (TOML whose keys are the long flags; see `pando_client::settings`), then the defaults.
//! `--version` names the protocol version this build speaks.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Serialize;

#[derive(Debug, Parser, Serialize)]
#[command(name = "pando-node", about = "Run a Pando node")]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// Read settings from this TOML file: its keys are these long flags (`snapshot-every = 5000`); a flag on the
    /// command line or its environment variable takes precedence over the file.
    #[arg(long, env = "PANDO_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the settings in effect (the file, the environment and the flags merged) as TOML, then exit; the join
    /// ticket is left out.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Directory holding the node's identity, database and ticket.
    #[arg(long, env = "PANDO_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Socket address to listen on (UDP, QUIC). Remembered in the data directory; later starts reuse it.
    #[arg(long, env = "PANDO_BIND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    /// Join the cluster of this join ticket (from `pando cluster join-token create`) on first start.
    #[arg(long, env = "PANDO_JOIN", hide_env_values = true)]
    #[serde(skip)]
    pub join: Option<String>,
    /// Lifetime of the admin token the founding node mints on its first start, in seconds (0: never expires).
    #[arg(long, default_value_t = 30 * 86_400)]
    pub admin_token_ttl_secs: u64,
    /// Raft snapshot after this many log entries since the last one.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Serve `pando cluster inject-panic` (for supervision tests). Never in production.
    #[arg(long)]
    pub enable_fault_injection: bool,
    /// Log entries kept behind the latest snapshot (so slightly lagging members catch up without one).
    #[arg(long, default_value_t = 1_000)]
    pub snapshot_keep_log: u64,
    /// Copies of each blob the cluster keeps when an add does not say (this node's adds).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub blob_replicas: u8,
    /// Seconds an unreferenced blob survives before it is collected (blobs this node adds).
    #[arg(long, default_value_t = 3600)]
    pub blob_gc_grace_secs: u64,
    /// Seconds between runs of the blob store's collector (deletes data no longer kept).
    #[arg(long, default_value_t = 60)]
    pub blob_store_gc_secs: u64,
    /// Milliseconds between blob repair rounds when nothing wakes the worker.
    #[arg(long, default_value_t = 2_000)]
    pub blob_repair_interval_ms: u64,
    /// KV values larger than this many bytes are stored as blobs (at most 1 MiB, the inline limit).
    #[arg(long, default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1..=1024 * 1024))]
    pub blob_threshold: u64,
    /// Largest blob a client may add through this node, in MiB.
    #[arg(long, default_value_t = 64 * 1024)]
    pub blob_max_mib: u64,
    /// Plugin instances replaced within --plugin-restart-period-secs before the plugin is quarantined on this node.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub plugin_restart_intensity: u32,
    #[arg(long, default_value_t = 60)]
    pub plugin_restart_period_secs: u64,
    /// Revisions of KV change history kept for watches (0: no limit by count); the leader compacts the rest.
    #[arg(long, default_value_t = pando_actors::retention::HISTORY_KEEP_REVISIONS_DEFAULT)]
    pub history_keep_revisions: u64,
    /// Seconds of KV change history kept for watches (0: no limit by age); a revision goes once either limit says so.
    #[arg(long, default_value_t = 0)]
    pub history_keep_secs: u64,
    /// Shell hooks this node runs at once (0: none; its deliveries then fail and another node's claim runs them).
    #[arg(long, default_value_t = pando_protocol::limits::HOOK_EXEC_CONCURRENCY_DEFAULT as u64,
          value_parser = clap::value_parser!(u64).range(0..=pando_protocol::limits::HOOK_EXEC_CONCURRENCY_MAX as u64))]
    pub shell_hooks: u64,
    /// Job workers this node runs (0: none; it still serves job requests).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=pando_actors::jobs::JOB_WORKERS_MAX as u64))]
    pub job_workers: u64,
    /// Queues this node's workers claim from, in order (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "default")]
    pub job_queues: Vec<String>,
    /// Seconds a job's claim lasts without a heartbeat (its worker renews it every third of that): after this node
    /// dies, its jobs run elsewhere within this plus one tick.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub job_lease_secs: u64,
    /// Rotate this node's key, then exit: writes a new key into the data directory (mode 0600). The running node
    /// registers it with the cluster within a second and restarts itself with it (same process); a stopped node does
    /// so on its next start. The old key is refused from then on.
    #[arg(long)]
    #[serde(skip)]
    pub rotate_key: bool,
    /// Mount the cluster's file system at this directory (a FUSE mount, unmounted when the node stops; a mount a
    /// crashed node left there is cleared first).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<PathBuf>,
    /// Let other users use the mount (FUSE's allow_other: root, or user_allow_other in /etc/fuse.conf).
    #[arg(long, requires = "mount")]
    pub mount_allow_other: bool,
    /// Mount read-only.
    #[arg(long, requires = "mount")]
    pub mount_read_only: bool,
    /// Milliseconds the kernel trusts a file's attributes and a name's lookup (changes anywhere drop them sooner).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub mount_cache_ms: u64,
    /// Commit every write before it returns, instead of buffering writes until close, fsync or 8 MiB.
    #[arg(long, requires = "mount")]
    pub mount_write_through: bool,
    /// Map a local uid to the uid the file system stores, LOCAL:STORED (repeatable).
    #[arg(long = "mount-uid-map", value_name = "LOCAL:STORED", requires = "mount")]
    pub mount_uid_map: Vec<String>,
    /// Map a local gid to the gid the file system stores, LOCAL:STORED (repeatable).
    #[arg(long = "mount-gid-map", value_name = "LOCAL:STORED", requires = "mount")]
    pub mount_gid_map: Vec<String>,
}

/// Flags that do something once instead of configuring the node: a settings file naming one would do it on every
/// start (rotate the key and exit, say), so it is refused.
const ACTIONS: [&str; 3] = ["config", "print-config", "rotate-key"];

/// The version line: the package's version and the wire protocol's.
pub fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| pando_client::settings::version_line(env!("CARGO_PKG_VERSION")))
}

/// Parses the process's arguments with the settings file (from `--config` or `PANDO_CONFIG`) merged under them.
pub fn parse() -> anyhow::Result<Args> {
    parse_from(std::env::args_os().collect())
}

/// [`parse`] over `args` (the program's name first). Prints help, version or a usage error and exits, as clap does.
pub fn parse_from(args: Vec<OsString>) -> anyhow::Result<Args> {
    let command = Args::command().version(version_line());
    let args = match config_path(&args) {
        Some(path) => {
            let settings = pando_client::settings::read(&path)?;
            for action in ACTIONS {
                if settings.contains_key(action) || settings.contains_key(&action.replace('-', "_")) {
                    anyhow::bail!("{}: `{action}` is not a setting; give it on the command line", path.display());
                }
            }
            pando_client::settings::apply(&command, args, &settings, &path, &[])?
        }
        None => args,
    };
    let matches = command.try_get_matches_from(args).unwrap_or_else(|error| error.exit());
    Args::from_arg_matches(&matches).context("reading the flags")
}

/// The settings file: `--config FILE`, `--config=FILE`, else `PANDO_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    pando_client::settings::flag_value(args, "config", "PANDO_CONFIG").map(PathBuf::from)
}

/// The settings in effect as a settings file would say them (every flag but the join ticket, the settings file and
/// the one-shot actions).
pub fn effective_settings(args: &Args) -> anyhow::Result<String> {
    toml::to_string(args).context("printing the settings")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(config: &str, flags: &[&str]) -> Args {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).unwrap();
        let args: Vec<OsString> =
            ["pando-node", "--config", path.to_str().unwrap()].iter().chain(flags).map(OsString::from).collect();
        parse_from(args).unwrap()
    }

    #[test]
    fn every_flag_can_come_from_the_settings_file_and_flags_win() {
        let args = parse(
            "data-dir = \"/var/lib/pando\"\nsnapshot-every = 5\njob-queues = [\"a\", \"b\"]\njob-workers = 2",
            &["--job-workers", "3"],
        );
        assert_eq!(args.data_dir, PathBuf::from("/var/lib/pando"));
        assert_eq!(args.snapshot_every, 5);
        assert_eq!(args.job_queues, ["a", "b"]);
        assert_eq!(args.job_workers, 3);
    }

    #[test]
    fn the_printed_settings_read_back_as_the_same_settings() {
        let args = parse("data-dir = \"/d\"\nblob-replicas = 2\nmount-cache-ms = 10", &[]);
        let printed = effective_settings(&args).unwrap();
        let again = parse(&printed, &[]);
        assert_eq!(effective_settings(&again).unwrap(), printed);
        assert!(printed.contains("blob-replicas = 2"), "{printed}");
    }

    #[test]
    fn a_bad_settings_file_is_refused_with_its_name_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "data-dir = \"/d\"\nsnapshot-evry = 5").unwrap();
        let args = ["pando-node", "--config", path.to_str().unwrap()].iter().map(OsString::from).collect();
        let error = parse_from(args).unwrap_err().to_string();
        assert!(error.contains("node.toml") && error.contains("snapshot-evry"), "{error}");
        std::fs::write(&path, "data-dir = \"/d\"\nrotate-key = true").unwrap();
        let args = ["pando-node", "--config", path.to_str().unwrap()].iter().map(OsString::from).collect();
        let error = parse_from(args).unwrap_err().to_string();
        assert!(error.contains("`rotate-key` is not a setting"), "{error}");
    }
}
