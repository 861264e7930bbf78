//! `pando`: the command line client. Every command exits non-zero on any failure, printing the stable error code and
//! message on stderr; `--json` prints machine-readable output on stdout.

mod actors;
mod bench;
mod bench_blob;
mod bench_hook;
mod bench_job;
mod bench_plugin;
mod bench_watch;
mod blob;
mod cluster;
mod coord;
mod hook;
mod job;
mod output;
mod plugin;
mod queue;
mod secrets;
mod secrets_transit;
mod token;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use pando_client::pando_protocol::blob::{BlobAttach, BlobRequest, BlobResponse};
use pando_client::pando_protocol::error::{ErrorCode, ErrorDetail, WireError};
use pando_client::pando_protocol::kv::{
    Compare, CompareOp, CompareTarget, Consistency, FenceKind, KvEntry, TxnOp, WriteOp,
};
use pando_client::pando_protocol::limits::VALUE_SIZE_BYTES_MAX;
use pando_client::pando_protocol::watch::{EventKind, WatchEvent, WatchRange, WatchRequest};
use pando_client::{Client, ClientError, ClientOptions, WatchItem};
use serde_json::json;

use crate::output::{entry_json, hex, print_json};

#[derive(Debug, Parser)]
#[command(name = "pando", about = "Talk to a Pando cluster")]
struct Cli {
    /// Cluster ticket (written by pando-node to <data-dir>/ticket).
    #[arg(long, env = "PANDO_TICKET", global = true, hide_env_values = true)]
    ticket: Option<String>,
    /// Read the ticket from this file (when --ticket and PANDO_TICKET are not given).
    #[arg(long, env = "PANDO_TICKET_FILE", global = true, value_name = "FILE", hide_env_values = true)]
    ticket_file: Option<PathBuf>,
    /// Take defaults from this profile of the profile file (its [profile.NAME] table over its top-level keys); the
    /// file is $PANDO_CLI_CONFIG, else ~/.config/pando/config.toml. Its keys are these global flags.
    #[arg(long, env = "PANDO_PROFILE", global = true, hide_env_values = true)]
    profile: Option<String>,
    /// Print JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of each request in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Fail a request that reached no node of the ticket within this many milliseconds, naming the addresses dialled
    /// (at most --timeout-ms).
    #[arg(long, global = true, default_value_t = 3_000)]
    connect_timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Key-value operations.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Cluster operations.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// The node's supervision tree: per actor its mailbox (queued, handled, time in the current message), restarts and
    /// last failure, and a plugin instance's or job worker's current call; --watch refreshes it in place.
    Actors(actors::ActorsArgs),
    /// Load generator: throughput and latency percentiles.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Leases: TTLs kept alive by their holder; everything attached is released when one lapses.
    #[command(subcommand)]
    Lease(coord::LeaseCommand),
    /// Locks with fencing tokens, held by a lease.
    #[command(subcommand)]
    Lock(coord::LockCommand),
    /// Read-write locks held by leases: many readers or one writer (with a fencing token).
    #[command(subcommand)]
    Rwlock(coord::RwLockCommand),
    /// Leader elections held by leases: campaign, leader, resign.
    #[command(subcommand)]
    Election(coord::ElectionCommand),
    /// Token-bucket rate limits shared by every client of the cluster.
    #[command(subcommand)]
    Ratelimit(coord::RateLimitCommand),
    /// Counting semaphores whose permits are held by leases.
    #[command(subcommand)]
    Semaphore(coord::SemaphoreCommand),
    /// Signed or unsigned counters; overflow and underflow are refused.
    #[command(subcommand)]
    Counter(coord::CounterCommand),
    /// Gap-free sequences starting at 1.
    #[command(subcommand)]
    Sequence(coord::SequenceCommand),
    /// Work queues: visibility timeouts, delivery tokens, dead letters, deduplication, FIFO groups.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Double barriers: open when every party entered, ready again when every party left.
    #[command(subcommand)]
    Barrier(coord::BarrierCommand),
    /// Service registry with TTL health checks.
    #[command(subcommand)]
    Service(coord::ServiceCommand),
    /// Content-addressed blobs (BLAKE3), replicated across the cluster.
    #[command(subcommand)]
    Blob(blob::BlobCommand),
    /// WASM plugins: install, upgrade, enable, disable, remove, call.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// The shipped secrets engine (a plugin): enable it, then Vault's KV v2 commands under `kv`.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Scoped tokens: create, list, show, revoke.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Events by subject: live streams, user events, durable hooks with retries and dead letters.
    #[command(subcommand)]
    Hook(hook::HookCommand),
    /// Durable jobs: shell commands and plugin functions run by the nodes' workers, with retries, dependencies,
    /// dead letters and cron.
    #[command(subcommand)]
    Job(job::JobCommandArgs),
    /// Mount the cluster's file system at PATH through a node (FUSE), until SIGINT or SIGTERM; the ticket's token
    /// needs the fs capability (`pando token create --fs read|write`). Runs `pando-node mount` (the mount is the
    /// node's code); `pando mount --help` lists its options.
    #[command(disable_help_flag = true)]
    Mount(MountArgs),
    /// Print a shell completion script: `pando completions bash > /etc/bash_completion.d/pando`, or for zsh into a
    /// directory of $fpath as `_pando`, or for fish into ~/.config/fish/completions/pando.fish.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// This client's version and protocol, and the node's when a ticket is at hand.
    Version,
}

#[derive(Debug, clap::Args)]
struct MountArgs {
    /// PATH and the options, passed to `pando-node mount`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "PATH [OPTIONS]")]
    args: Vec<std::ffi::OsString>,
}

/// `pando mount`: becomes `pando-node mount` (found beside this binary, else on `PATH`) with the same arguments and
/// the ticket in its environment. Returns only when that cannot start.
fn mount(ticket: Option<&str>, args: &[std::ffi::OsString]) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("pando-node")));
    let program = beside.filter(|path| path.is_file()).unwrap_or_else(|| PathBuf::from("pando-node"));
    let mut command = std::process::Command::new(&program);
    command.arg("mount").args(args);
    if let Some(ticket) = ticket {
        command.env("PANDO_TICKET", ticket);
    }
    let error = command.exec();
    anyhow::anyhow!(
        "cannot run {} for the mount: {error} (pando mount needs pando-node beside pando or on PATH)",
        program.display()
    )
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FilterArg {
    Put,
    Delete,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ConsistencyArg {
    Linearizable,
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(value: ConsistencyArg) -> Self {
        match value {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print a key's value (raw bytes) on stdout.
    Get {
        key: String,
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
    },
    /// Set a key from an argument, a file (--file) or stdin (neither).
    Set {
        key: String,
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Write only while TOKEN is still current: `NAME=TOKEN` for a lock (from `pando lock acquire`), or
        /// `rwlock:NAME=TOKEN` (the write hold), `semaphore:NAME=TOKEN`, `election:NAME=TOKEN`, `queue:NAME#ID=TOKEN`
        /// (a delivery of message ID).
        #[arg(long, value_parser = parse_fence, conflicts_with = "lease")]
        fence: Option<Fence>,
        /// Tie the key to a lease (`pando lease grant`): it is deleted when the lease ends.
        #[arg(long)]
        lease: Option<u64>,
    },
    /// Delete a key.
    Delete {
        key: String,
        /// Delete only while TOKEN is still current (as for `kv set --fence`).
        #[arg(long, value_parser = parse_fence)]
        fence: Option<Fence>,
    },
    /// Compare-and-swap: set --value only if the current value is --expect (or the key is absent with --expect-absent).
    Cas {
        key: String,
        #[arg(long, required_unless_present = "expect_absent")]
        expect: Option<String>,
        #[arg(long, conflicts_with = "expect")]
        expect_absent: bool,
        #[arg(long, required_unless_present = "file")]
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Compare-and-delete: delete only if the current value is --expect.
    Cad {
        key: String,
        #[arg(long)]
        expect: String,
    },
    /// Drop the change history below REVISION on every member (watches from an older revision get COMPACTED).
    /// Needs write access to the whole keyspace.
    Compact { revision: u64 },
    /// Print each change of KEY (or of every key under it, with --prefix) as it commits: revision, PUT or DELETE,
    /// key, value. Resumes on another member, without a gap or a repeat, if its member is lost.
    Watch {
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long, conflicts_with = "range_end")]
        prefix: bool,
        /// Watch the keys from KEY (included) to this key (excluded); an empty one: every key from KEY on.
        #[arg(long)]
        range_end: Option<String>,
        /// Start at this revision (its history must not be compacted); default: the next change.
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        /// Print each key's previous value too.
        #[arg(long)]
        prev_kv: bool,
        /// Only changes of this kind.
        #[arg(long, value_enum)]
        filter: Option<FilterArg>,
        /// Print a progress line (the revision everything before was delivered) after this many ms without events.
        #[arg(long, default_value_t = 0)]
        progress_ms: u32,
        /// Stop after this many revisions with events.
        #[arg(long)]
        count: Option<u64>,
        /// When the history the watch needs was compacted, print every watched key as it is now ("REREAD" lines,
        /// then "REREAD-END REVISION") and go on with the changes after that read, instead of failing COMPACTED.
        #[arg(long)]
        reread_on_compacted: bool,
    },
    /// List keys starting with a prefix, one page at a time.
    Scan {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continuation token printed by the previous page.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
    },
    /// Read several keys at once.
    BatchGet {
        #[arg(required = true)]
        keys: Vec<String>,
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
    },
    /// Apply puts (`--put k=v`) and deletes (`--delete k`) atomically.
    BatchWrite {
        #[arg(long = "put", value_name = "KEY=VALUE")]
        puts: Vec<String>,
        #[arg(long = "delete", value_name = "KEY")]
        deletes: Vec<String>,
    },
    /// Run a transaction described as JSON (from --file or stdin); see the README for the format.
    Txn {
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// A fencing condition: `token` must still be current at resource `name` of `kind`.
#[derive(Clone, Debug)]
struct Fence {
    name: String,
    kind: FenceKind,
    token: u64,
}

impl Fence {
    /// The resource as people name it: `lock jobs`, `queue message emails#7`.
    fn resource(&self) -> String {
        match self.kind {
            FenceKind::Lock => format!("lock `{}`", self.name),
            FenceKind::RwLock => format!("read-write lock `{}`", self.name),
            FenceKind::Semaphore => format!("semaphore `{}`", self.name),
            FenceKind::Election => format!("election `{}`", self.name),
            FenceKind::QueueMessage(id) => format!("queue message `{}#{id}`", self.name),
        }
    }
}

/// `[KIND:]NAME=TOKEN` (KIND: lock, the default, rwlock, semaphore, election, queue with NAME `QUEUE#ID`).
fn parse_fence(text: &str) -> Result<Fence, String> {
    let (resource, token) = text.rsplit_once('=').ok_or_else(|| format!("`{text}` is not [KIND:]NAME=TOKEN"))?;
    let token = token.parse().map_err(|_| format!("`{token}` is not a fencing token"))?;
    let (kind, name) = match resource.split_once(':') {
        Some(("lock", name)) => (FenceKind::Lock, name),
        Some(("rwlock", name)) => (FenceKind::RwLock, name),
        Some(("semaphore", name)) => (FenceKind::Semaphore, name),
        Some(("election", name)) => (FenceKind::Election, name),
        Some(("queue", message)) => {
            let (queue, id) = message.rsplit_once('#').ok_or_else(|| format!("`{message}` is not QUEUE#ID"))?;
            let id = id.parse().map_err(|_| format!("`{id}` is not a message id"))?;
            (FenceKind::QueueMessage(id), queue)
        }
        _ => (FenceKind::Lock, resource),
    };
    if name.is_empty() {
        return Err("the fencing resource's name is empty".into());
    }
    Ok(Fence { name: name.to_string(), kind, token })
}

/// Runs `op` only while the fence's token is current: a one-compare transaction. A lost hold is a `CONFLICT`.
async fn fenced(client: &Client, fence: Fence, op: TxnOp) -> anyhow::Result<u64> {
    let compare = Compare {
        key: fence.name.clone().into_bytes().into(),
        op: CompareOp::Equal,
        target: CompareTarget::Fence { kind: fence.kind, token: fence.token },
    };
    let (succeeded, revision, _) = client.txn(vec![compare], vec![op], Vec::new()).await?;
    if !succeeded {
        return Err(ClientError::Wire(WireError::new(
            ErrorCode::Conflict,
            format!("fencing token {} is no longer current for {}; nothing was written", fence.token, fence.resource()),
        ))
        .into());
    }
    Ok(revision)
}

/// Exit status of a program killed by SIGPIPE, as a shell reports it (128 + 13).
const BROKEN_PIPE_EXIT: i32 = 141;

/// A reader that went away (`pando kv scan | head -1`, `pando completions bash | head`) ends the program quietly, as
/// it ends `cat`, instead of a panic and a backtrace: Rust ignores SIGPIPE, so printing to a closed pipe fails, and
/// `println!` (and clap_complete's writer) panic on that. Restoring SIGPIPE itself would need `unsafe`.
fn quiet_on_broken_pipe() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // Only the printing macros' and the completion writer's own panics: any other stays a panic.
        let printing =
            message.starts_with("failed printing to std") || message.starts_with("failed to write completion");
        if printing && (message.contains("Broken pipe") || message.contains("BrokenPipe")) {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default_hook(info);
    }));
}

fn main() {
    quiet_on_broken_pipe();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("error: INVALID_ARGUMENT: {error:#}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start runtime: {error}");
            std::process::exit(1);
        }
    };
    let json_output = cli.json;
    let code = runtime.block_on(async move {
        match run(cli).await {
            Ok(()) => 0,
            Err(error) => {
                report(&error, json_output);
                1
            }
        }
    });
    std::process::exit(code);
}

/// Prints an error on stderr: its stable code, message, and what the detail says.
fn report(error: &anyhow::Error, json_output: bool) {
    let client_error = error.downcast_ref::<ClientError>();
    let code = client_error.map(|error| error.code().as_str()).unwrap_or("INVALID_ARGUMENT");
    if json_output {
        let detail = match client_error {
            Some(ClientError::Wire(wire)) => match &wire.detail {
                Some(ErrorDetail::Current { entry }) => json!({ "current": entry.as_ref().map(entry_json) }),
                Some(ErrorDetail::Leader { node_id, addrs, .. }) => json!({ "leader": node_id, "addrs": addrs }),
                Some(ErrorDetail::Compacted { compacted, current }) => {
                    json!({ "compacted": compacted, "current": current })
                }
                Some(ErrorDetail::Errno { errno }) => json!({ "errno": errno }),
                None => serde_json::Value::Null,
            },
            _ => serde_json::Value::Null,
        };
        let message = match client_error {
            Some(ClientError::Wire(wire)) => wire.message.clone(),
            _ => format!("{error:#}"),
        };
        eprintln!("{}", json!({ "error": { "code": code, "message": message, "detail": detail } }));
        return;
    }
    match client_error {
        Some(ClientError::Wire(wire)) => {
            eprintln!("error: {}: {}", wire.code, wire.message);
            if let Some(ErrorDetail::Current { entry }) = &wire.detail {
                match entry {
                    Some(entry) => eprintln!("current value: {}", String::from_utf8_lossy(&entry.value)),
                    None => eprintln!("current value: (key does not exist)"),
                }
            }
        }
        Some(other) => eprintln!("error: {other}"),
        None => eprintln!("error: {code}: {error:#}"),
    }
}

/// The version line: the package's version and the wire protocol's.
fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| pando_client::settings::version_line(env!("CARGO_PKG_VERSION")))
}

/// Parses the command line with the profile file's settings under it (flags, then environment, then the profile).
fn parse_cli() -> anyhow::Result<Cli> {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command().version(version_line());
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(path) = profile_file()? {
        let file = pando_client::settings::read(&path)?;
        let chosen = profile_name(&args);
        let settings = pando_client::settings::profile(&file, chosen.as_deref(), &path)?;
        args = pando_client::settings::apply(&command, args, &settings, &path, &[&["ticket", "ticket-file"]])?;
    } else if let Some(name) = profile_name(&args) {
        anyhow::bail!(
            "no profile file for --profile {name}: write ~/.config/pando/config.toml or set PANDO_CLI_CONFIG"
        );
    }
    let matches = command.try_get_matches_from(args).unwrap_or_else(|error| error.exit());
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The profile file: `PANDO_CLI_CONFIG` (which must exist), else `~/.config/pando/config.toml` when it exists.
fn profile_file() -> anyhow::Result<Option<PathBuf>> {
    if let Some(path) = std::env::var_os("PANDO_CLI_CONFIG").filter(|path| !path.is_empty()) {
        return Ok(Some(PathBuf::from(path)));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")));
    Ok(base.map(|base| base.join("pando").join("config.toml")).filter(|path| path.is_file()))
}

/// The profile named by `--profile NAME`, `--profile=NAME` or `PANDO_PROFILE`.
fn profile_name(args: &[std::ffi::OsString]) -> Option<String> {
    pando_client::settings::flag_value(args, "profile", "PANDO_PROFILE").map(|name| name.to_string_lossy().into_owned())
}

/// The ticket: `--ticket` or `PANDO_TICKET`, else the contents of `--ticket-file`.
fn ticket_of(cli: &Cli) -> anyhow::Result<Option<String>> {
    if let Some(ticket) = &cli.ticket {
        return Ok(Some(ticket.clone()));
    }
    let Some(path) = &cli.ticket_file else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("cannot read the ticket file {}: {error}", path.display()))?;
    Ok(Some(text.trim().to_string()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ticket = ticket_of(&cli)?;
    match &cli.command {
        Command::Mount(args) => return Err(mount(ticket.as_deref(), &args.args)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "pando", &mut std::io::stdout());
            return Ok(());
        }
        Command::Version => {
            let timeout = Duration::from_millis(cli.timeout_ms);
            return cluster::version(ticket.as_deref(), timeout, cli.json, version_line()).await;
        }
        _ => {}
    }
    let ticket = ticket.ok_or_else(|| {
        anyhow::anyhow!(
            "no ticket: pass --ticket or --ticket-file, set PANDO_TICKET, or name one in a profile (pando-node \
             writes it to <data-dir>/ticket)"
        )
    })?;
    let options = ClientOptions::new(Duration::from_millis(cli.timeout_ms))
        .with_connect_timeout(Duration::from_millis(cli.connect_timeout_ms.min(cli.timeout_ms)));
    let client = Client::new(&ticket, options.clone()).await?;
    let result = match cli.command {
        Command::Kv(command) => kv(&client, command, cli.json).await,
        Command::Lease(command) => coord::lease(&client, command, cli.json).await,
        Command::Lock(command) => coord::lock(&client, command, cli.json).await,
        Command::Counter(command) => coord::counter(&client, command, cli.json).await,
        Command::Semaphore(command) => coord::semaphore(&client, command, cli.json).await,
        Command::Rwlock(command) => coord::rwlock(&client, command, cli.json).await,
        Command::Ratelimit(command) => coord::ratelimit(&client, command, cli.json).await,
        Command::Election(command) => coord::election(&client, command, cli.json).await,
        Command::Sequence(command) => coord::sequence(&client, command, cli.json).await,
        Command::Queue(command) => queue::queue(&client, command, cli.json).await,
        Command::Barrier(command) => coord::barrier(&client, command, cli.json).await,
        Command::Service(command) => coord::service(&client, command, cli.json).await,
        Command::Blob(command) => blob::blob(&client, command, cli.json).await,
        Command::Plugin(command) => plugin::plugin(&client, command, cli.json).await,
        Command::Secrets(command) => secrets::secrets(&client, command, cli.json).await,
        Command::Token(command) => token::token(&client, command, cli.json).await,
        Command::Hook(command) => hook::hook(&client, command, cli.json).await,
        Command::Job(command) => job::job(&client, command, cli.json).await,
        Command::Mount(_) | Command::Completions { .. } | Command::Version => {
            Err(anyhow::anyhow!("this command runs without a client, above"))
        }
        Command::Cluster(command) => cluster::cluster(&client, command, cli.json).await,
        Command::Actors(args) => actors::run(&client, args, cli.json).await,
        Command::Bench(command) => bench::run(&ticket, options, command, cli.json).await,
    };
    client.close().await;
    result
}

fn read_value(value: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    match (value, file) {
        (Some(value), _) => Ok(value.into_bytes()),
        (None, Some(path)) => {
            std::fs::read(&path).map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))
        }
        (None, None) => {
            let mut buffer = Vec::new();
            std::io::stdin().read_to_end(&mut buffer)?;
            Ok(buffer)
        }
    }
}

/// A value to write: small enough for one request, or a stream to store as a blob.
enum ValueInput {
    Small(Vec<u8>),
    Large(Box<dyn tokio::io::AsyncRead + Unpin + Send>),
}

/// Reads a value from the argument, a file (`-`: stdin) or stdin, stopping after the inline limit: beyond it, what
/// was read and the rest of the input become one stream.
async fn value_input(value: Option<String>, file: Option<PathBuf>) -> anyhow::Result<ValueInput> {
    use tokio::io::AsyncReadExt;
    if let Some(value) = value {
        return Ok(ValueInput::Small(value.into_bytes()));
    }
    let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match file {
        Some(path) if path != std::path::Path::new("-") => Box::new(
            tokio::fs::File::open(&path)
                .await
                .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?,
        ),
        _ => Box::new(tokio::io::stdin()),
    };
    let mut head = Vec::new();
    (&mut input).take(VALUE_SIZE_BYTES_MAX as u64 + 1).read_to_end(&mut head).await?;
    if head.len() <= VALUE_SIZE_BYTES_MAX {
        return Ok(ValueInput::Small(head));
    }
    Ok(ValueInput::Large(Box::new(AsyncReadExt::chain(std::io::Cursor::new(head), input))))
}

async fn kv(client: &Client, command: KvCommand, json_output: bool) -> anyhow::Result<()> {
    match command {
        KvCommand::Get { key, consistency } => {
            let entry = client.get(key.as_bytes(), consistency.into()).await?;
            let Some(entry) = entry else {
                return Err(ClientError::Wire(pando_client::pando_protocol::WireError::new(
                    pando_client::pando_protocol::ErrorCode::NotFound,
                    format!("key `{key}` does not exist"),
                ))
                .into());
            };
            if json_output {
                print_json(&entry_json(&entry));
            } else if let Some(stored) = entry.blob {
                // A value stored as a blob streams from the cluster, verified against its hash.
                blob::download(client, stored.hash, Some(entry.key.clone()), None).await?;
            } else {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&entry.value)?;
                if std::io::IsTerminal::is_terminal(&stdout) {
                    stdout.write_all(b"\n")?;
                }
            }
        }
        KvCommand::Delete { key, fence: Some(fence) } => {
            let revision = fenced(client, fence, TxnOp::Delete { key: key.into_bytes().into() }).await?;
            if json_output {
                print_json(&json!({ "revision": revision }));
            } else {
                println!("deleted at revision {revision}");
            }
        }
        KvCommand::Set { key, value, file, fence, lease } => {
            let value = match value_input(value, file).await? {
                ValueInput::Small(value) => value,
                ValueInput::Large(reader) => {
                    // Too large for one request: streamed in as a blob, which the node attaches to the key.
                    if fence.is_some() {
                        anyhow::bail!(
                            "a fenced write takes values up to {VALUE_SIZE_BYTES_MAX} bytes; store the value with \
                             `pando blob add` and write a smaller reference"
                        );
                    }
                    let attach = Some(BlobAttach { key: key.into_bytes().into(), lease });
                    let request =
                        BlobRequest::Add { replicas: None, pin: false, expected: None, attach, ack_copies: None };
                    let bar = blob::progress_bar(None);
                    let response = client
                        .blob_add(reader, request, |sent| bar.iter().for_each(|bar| bar.set_position(sent)))
                        .await;
                    bar.iter().for_each(|bar| bar.finish_and_clear());
                    match response? {
                        BlobResponse::Added { revision: Some(revision), .. } => written(json_output, revision),
                        other => anyhow::bail!("unexpected response {other:?}"),
                    }
                    return Ok(());
                }
            };
            let revision = match (fence, lease) {
                (Some(fence), _) => {
                    fenced(client, fence, TxnOp::Put { key: key.into_bytes().into(), value: value.into() }).await?
                }
                (None, Some(lease)) => client.put_leased(key.as_bytes(), &value, lease).await?,
                (None, None) => client.put(key.as_bytes(), &value).await?,
            };
            written(json_output, revision);
        }
        KvCommand::Delete { key, fence: None } => {
            let (revision, existed) = client.delete(key.as_bytes()).await?;
            if json_output {
                print_json(&json!({ "revision": revision, "existed": existed }));
            } else if existed {
                println!("deleted at revision {revision}");
            } else {
                println!("key did not exist (revision {revision})");
            }
        }
        KvCommand::Cas { key, expect, expect_absent: _, value, file } => {
            let value = read_value(value, file)?;
            let revision = client.cas(key.as_bytes(), expect.as_deref().map(str::as_bytes), &value).await?;
            written(json_output, revision);
        }
        KvCommand::Watch {
            key,
            prefix,
            range_end,
            from_revision,
            prev_kv,
            filter,
            progress_ms,
            count,
            reread_on_compacted,
        } => {
            let range = match (prefix, range_end) {
                (true, _) => WatchRange::Prefix(key.into_bytes().into()),
                (false, Some(end)) => {
                    WatchRange::Range { start: key.into_bytes().into(), end: end.into_bytes().into() }
                }
                (false, None) => WatchRange::Key(key.into_bytes().into()),
            };
            let only = filter.map(|filter| match filter {
                FilterArg::Put => EventKind::Put,
                FilterArg::Delete => EventKind::Delete,
            });
            let request = WatchRequest { range, start_revision: from_revision, prev_kv, only, progress_ms };
            let mut watch = client.watch(request).reread_on_compacted(reread_on_compacted);
            let mut revisions = 0;
            while count.is_none_or(|count| revisions < count) {
                match watch.next().await? {
                    WatchItem::Events { revision, events } => {
                        revisions += 1;
                        print_watch_events(json_output, revision, &events)?;
                    }
                    WatchItem::Progress { next_revision } if json_output => {
                        print_json(&json!({ "progress": next_revision }));
                    }
                    WatchItem::Progress { next_revision } => println!("progress {next_revision}"),
                    WatchItem::Reread { revision, entries, last } => {
                        print_reread(json_output, revision, &entries, last)?
                    }
                }
            }
            watch.cancel().await;
        }
        KvCommand::Compact { revision } => {
            let (compacted, current) = client.compact(revision).await?;
            if json_output {
                print_json(&json!({ "compacted": compacted, "revision": current }));
            } else {
                println!("history starts at revision {compacted} (current revision {current})");
            }
        }
        KvCommand::Cad { key, expect } => {
            let revision = client.cad(key.as_bytes(), expect.as_bytes()).await?;
            if json_output {
                print_json(&json!({ "revision": revision, "existed": true }));
            } else {
                println!("deleted at revision {revision}");
            }
        }
        KvCommand::Scan { prefix, limit, after, consistency } => {
            let after =
                after.map(|token| data_encoding::HEXLOWER.decode(token.as_bytes())).transpose().map_err(|_| {
                    anyhow::anyhow!("--after takes the hex continuation token printed by the previous page")
                })?;
            let page = client.scan(prefix.as_bytes(), limit, after.as_deref(), consistency.into()).await?;
            let (entries, next) = (page.entries, page.next);
            if json_output {
                print_json(&json!({
                    "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
                    "next": next.as_deref().map(hex),
                    "revision": page.revision,
                }));
            } else {
                let mut stdout = std::io::stdout().lock();
                for entry in &entries {
                    writeln!(
                        stdout,
                        "{}\t{}",
                        String::from_utf8_lossy(&entry.key),
                        String::from_utf8_lossy(&entry.value)
                    )?;
                }
                if let Some(next) = next {
                    eprintln!("more keys follow: pando kv scan '{prefix}' --limit {limit} --after {}", hex(&next));
                }
            }
        }
        KvCommand::BatchGet { keys, consistency } => {
            let keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
            let entries = client.batch_get(&keys, consistency.into()).await?;
            if json_output {
                print_json(&json!(entries.iter().map(|entry| entry.as_ref().map(entry_json)).collect::<Vec<_>>()));
            } else {
                for (key, entry) in keys.iter().zip(&entries) {
                    match entry {
                        Some(entry) => {
                            println!("{}\t{}", String::from_utf8_lossy(key), String::from_utf8_lossy(&entry.value))
                        }
                        None => println!("{}\t(absent)", String::from_utf8_lossy(key)),
                    }
                }
            }
        }
        KvCommand::BatchWrite { puts, deletes } => {
            let mut ops = Vec::new();
            for put in puts {
                let (key, value) =
                    put.split_once('=').ok_or_else(|| anyhow::anyhow!("--put takes KEY=VALUE, got `{put}`"))?;
                ops.push(WriteOp::Put { key: key.as_bytes().to_vec().into(), value: value.as_bytes().to_vec().into() });
            }
            for key in deletes {
                ops.push(WriteOp::Delete { key: key.into_bytes().into() });
            }
            let revision = client.batch_write(ops).await?;
            written(json_output, revision);
        }
        KvCommand::Txn { file } => {
            let text = read_value(None, file)?;
            let (compares, success, failure) = output::parse_txn(&text)?;
            let (succeeded, revision, results) = client.txn(compares, success, failure).await?;
            let results: Vec<_> = results.iter().map(output::txn_result_json).collect();
            if json_output {
                print_json(&json!({ "succeeded": succeeded, "revision": revision, "results": results }));
            } else {
                println!("{} at revision {revision}", if succeeded { "succeeded" } else { "failed" });
                for result in results {
                    println!("{result}");
                }
            }
        }
    }
    Ok(())
}

fn written(json_output: bool, revision: u64) {
    if json_output {
        print_json(&json!({ "revision": revision }));
    } else {
        println!("OK revision {revision}");
    }
}

/// One revision of a watch: a line per event (`REVISION PUT|DELETE KEY VALUE`, then `  was PREVIOUS` with
/// --prev-kv), or with --json an object per event.
/// One page of a watch's re-read after `COMPACTED`: the watched keys as they are.
fn print_reread(json_output: bool, revision: u64, entries: &[KvEntry], last: bool) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for entry in entries {
        if json_output {
            writeln!(stdout, "{}", json!({ "reread": revision, "entry": entry_json(entry) }))?;
        } else {
            writeln!(
                stdout,
                "REREAD {} {} {}",
                entry.mod_revision,
                String::from_utf8_lossy(&entry.key),
                String::from_utf8_lossy(&entry.value)
            )?;
        }
    }
    if last {
        if json_output {
            writeln!(stdout, "{}", json!({ "reread_end": revision }))?;
        } else {
            writeln!(stdout, "REREAD-END {revision}")?;
        }
    }
    Ok(())
}

fn print_watch_events(json_output: bool, revision: u64, events: &[WatchEvent]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for watched in events {
        let event = &watched.event;
        if json_output {
            let mut line = json!({ "revision": revision, "type": event.kind.as_str(), "kv": entry_json(&event.entry) });
            if let Some(prev) = &watched.prev {
                line["prev_kv"] = entry_json(prev);
            }
            writeln!(stdout, "{line}")?;
            continue;
        }
        let key = String::from_utf8_lossy(event.key());
        match event.kind {
            EventKind::Put => writeln!(stdout, "{revision} PUT {key} {}", String::from_utf8_lossy(&event.entry.value))?,
            EventKind::Delete => writeln!(stdout, "{revision} DELETE {key}")?,
        }
        if let Some(prev) = &watched.prev {
            writeln!(stdout, "  was {}", String::from_utf8_lossy(&prev.value))?;
        }
    }
    stdout.flush()?;
    Ok(())
}
