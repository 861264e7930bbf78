//! `pando token …` and `pando cluster join-token create`: mint scoped tokens (printed inside a ticket, the only time
//! the secret is shown), list them by accessor id, show and revoke one.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use pando_client::pando_protocol::kv::Bytes;
use pando_client::pando_protocol::token::{Capability, TokenInfo, hex, parse_accessor};
use pando_client::{Client, MintedToken};
use serde_json::{Value, json};

use crate::coord::parse_duration_ms;
use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token and print a ticket that carries it (its secret is shown only now).
    Create(CreateArgs),
    /// Every token: accessor id, name, scope, expiry (never a secret).
    List,
    /// One token by accessor id.
    Show { accessor: String },
    /// Revoke a token: refused by every node within a second.
    Revoke { accessor: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Key prefix the token may use (repeatable; with --read-only or --read-write). Locks, leases, queues and other
    /// coordination resources named under it come with it.
    #[arg(long = "prefix")]
    prefixes: Vec<String>,
    /// The prefixes are readable only.
    #[arg(long, conflicts_with = "read_write")]
    read_only: bool,
    /// The prefixes are readable and writable.
    #[arg(long)]
    read_write: bool,
    /// Plugin the token may call (repeatable); `*` for any.
    #[arg(long = "plugin-call")]
    plugin_calls: Vec<String>,
    /// Queue the token may submit plugin jobs to and read jobs of (repeatable); `*` for any.
    #[arg(long = "jobs")]
    jobs: Vec<String>,
    /// Read blobs that keys under the token's prefixes refer to.
    #[arg(long, conflicts_with = "blob_write")]
    blob_read: bool,
    /// Add blobs and re-replicate those behind keys the token may write.
    #[arg(long)]
    blob_write: bool,
    /// Read cluster status and metrics.
    #[arg(long)]
    cluster_read: bool,
    /// Use the file system through `pando mount`: `read` (and take file locks) or `write`. The holder names the
    /// uid each request runs as, so it is trusted with every file.
    #[arg(long, value_enum)]
    fs: Option<FsAccess>,
    /// Run every file-system request of the token as this uid and gid (NFS's all_squash), whoever the mount says
    /// the caller is: a mount on a machine the cluster does not trust with root.
    #[arg(long, value_name = "UID:GID", requires = "fs", value_parser = parse_ids)]
    fs_as: Option<(u32, u32)>,
    /// Everything: cluster administration and minting tokens included.
    #[arg(
        long,
        conflicts_with_all = ["prefixes", "plugin_calls", "jobs", "blob_read", "blob_write", "cluster_read", "fs"]
    )]
    admin: bool,
    /// Lifetime such as 1h, 30d; 0 for no expiry (default 30 days).
    #[arg(long)]
    ttl: Option<String>,
    /// A name for lists and audit logs.
    #[arg(long, default_value = "")]
    name: String,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Lifetime such as 10m or 1h (default 1h).
    #[arg(long)]
    ttl: Option<String>,
    /// How many nodes may join with it.
    #[arg(long, default_value_t = 1)]
    uses: u32,
    /// What a node that joins becomes once caught up: a learner (an admin promotes it) or a voter.
    #[arg(long = "as", value_enum, default_value = "learner")]
    role: JoinRole,
    #[arg(long, default_value = "join")]
    name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FsAccess {
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum JoinRole {
    Learner,
    Voter,
}

fn capabilities(args: &CreateArgs) -> anyhow::Result<Vec<Capability>> {
    if args.admin {
        return Ok(vec![Capability::All]);
    }
    let mut capabilities = Vec::new();
    match (args.prefixes.is_empty(), args.read_only, args.read_write) {
        (true, false, false) => {}
        (true, _, _) => anyhow::bail!("--read-only and --read-write apply to a --prefix; name one"),
        (false, false, false) => anyhow::bail!("say whether the prefixes are --read-only or --read-write"),
        (false, read_only, _) => {
            for prefix in &args.prefixes {
                let prefix = Bytes::from(prefix.as_bytes().to_vec());
                capabilities.push(if read_only {
                    Capability::KvRead { prefix }
                } else {
                    Capability::KvWrite { prefix }
                });
            }
        }
    }
    for plugin in &args.plugin_calls {
        capabilities.push(Capability::PluginCall { plugin: (plugin != "*").then(|| plugin.clone()) });
    }
    for queue in &args.jobs {
        capabilities.push(Capability::Jobs { queue: (queue != "*").then(|| queue.clone()) });
    }
    if args.blob_read {
        capabilities.push(Capability::BlobRead);
    }
    if args.blob_write {
        capabilities.push(Capability::BlobWrite);
    }
    if args.cluster_read {
        capabilities.push(Capability::ClusterRead);
    }
    if let Some(access) = args.fs {
        capabilities.push(Capability::Fs { write: access == FsAccess::Write, as_ids: args.fs_as });
    }
    anyhow::ensure!(
        !capabilities.is_empty(),
        "a token needs a scope: --prefix, --plugin-call, --jobs, --blob-*, --cluster-read, --fs or --admin"
    );
    Ok(capabilities)
}

/// `UID:GID`.
fn parse_ids(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not UID:GID (two numeric ids)");
    let (uid, gid) = text.split_once(':').ok_or_else(bad)?;
    Ok((uid.trim().parse().map_err(|_| bad())?, gid.trim().parse().map_err(|_| bad())?))
}

fn ttl_ms(ttl: &Option<String>) -> anyhow::Result<Option<u64>> {
    ttl.as_deref().map(|text| parse_duration_ms(text).map_err(anyhow::Error::msg)).transpose()
}

pub async fn token(client: &Client, command: TokenCommand, json_output: bool) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => {
            let minted = client.create_token(&args.name, capabilities(&args)?, ttl_ms(&args.ttl)?).await?;
            print_minted(&minted, json_output);
        }
        TokenCommand::List => {
            let mut after = None;
            let mut all = Vec::new();
            loop {
                let page = client.list_tokens(after).await?;
                all.extend(page.tokens);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            if json_output {
                print_json(&Value::Array(all.iter().map(info_json).collect()));
            } else if all.is_empty() {
                println!("no tokens");
            } else {
                for info in &all {
                    println!("{}", info_line(info));
                }
            }
        }
        TokenCommand::Show { accessor } => {
            let info = client.token_info(parse_accessor(&accessor)?).await?;
            if json_output {
                print_json(&info_json(&info));
            } else {
                println!("{}", info_line(&info));
            }
        }
        TokenCommand::Revoke { accessor } => {
            let existed = client.revoke_token(parse_accessor(&accessor)?).await?;
            if json_output {
                print_json(&json!({ "revoked": existed }));
            } else if existed {
                println!("OK revoked {}", accessor.trim());
            } else {
                println!("no token {} (already revoked or expired and purged)", accessor.trim());
            }
        }
    }
    Ok(())
}

pub async fn join_token(client: &Client, args: JoinTokenArgs, json_output: bool) -> anyhow::Result<()> {
    let voter = matches!(args.role, JoinRole::Voter);
    let minted = client.create_join_token(&args.name, args.uses, voter, ttl_ms(&args.ttl)?).await?;
    print_minted(&minted, json_output);
    Ok(())
}

/// The ticket alone on stdout (so `$(pando token create …)` captures it), what it is on stderr.
fn print_minted(minted: &MintedToken, json_output: bool) {
    let ticket = minted.ticket.encode();
    if json_output {
        let mut value = info_json(&minted.info);
        value["ticket"] = json!(ticket);
        print_json(&value);
    } else {
        eprintln!("{}", info_line(&minted.info));
        println!("{ticket}");
    }
}

fn describe(capability: &Capability) -> String {
    let text = |prefix: &Bytes| String::from_utf8_lossy(prefix).into_owned();
    match capability {
        Capability::All => "admin".into(),
        Capability::KvRead { prefix } => format!("read:{}", text(prefix)),
        Capability::KvWrite { prefix } => format!("write:{}", text(prefix)),
        Capability::ClusterRead => "cluster-read".into(),
        Capability::ClusterJoin => "join".into(),
        Capability::BlobRead => "blob-read".into(),
        Capability::BlobWrite => "blob-write".into(),
        Capability::PluginCall { plugin: Some(plugin) } => format!("plugin-call:{plugin}"),
        Capability::PluginCall { plugin: None } => "plugin-call:*".into(),
        Capability::Node { node_id, .. } => format!("node:{node_id}"),
        Capability::Jobs { queue: Some(queue) } => format!("jobs:{queue}"),
        Capability::Jobs { queue: None } => "jobs:*".into(),
        Capability::Fs { write, as_ids } => {
            let access = if *write { "fs-write" } else { "fs-read" };
            match as_ids {
                Some((uid, gid)) => format!("{access} as {uid}:{gid}"),
                None => access.into(),
            }
        }
    }
}

fn expiry(info: &TokenInfo) -> String {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0);
    match info.expires_ms {
        None => "never expires".into(),
        Some(at) if at <= now_ms => "expired".into(),
        Some(at) => {
            let left = (at - now_ms) / 1_000;
            match left {
                0..120 => format!("expires in {left}s"),
                120..7_200 => format!("expires in {}m", left / 60),
                7_200..172_800 => format!("expires in {}h", left / 3_600),
                _ => format!("expires in {}d", left / 86_400),
            }
        }
    }
}

fn info_line(info: &TokenInfo) -> String {
    let scope: Vec<String> = info.capabilities.iter().map(describe).collect();
    let name = if info.name.is_empty() { "-" } else { info.name.as_str() };
    let mut line = format!("{}  {name}  {}  {}", hex(&info.accessor), scope.join(","), expiry(info));
    if let Some(join) = &info.join {
        let role = if join.voter { "voter" } else { "learner" };
        line.push_str(&format!(
            "  joins left {} as {role}, admitted {}",
            join.uses_left,
            crate::output::list(&join.admitted)
        ));
    }
    line
}

fn info_json(info: &TokenInfo) -> Value {
    json!({
        "accessor": hex(&info.accessor),
        "name": info.name,
        "capabilities": info.capabilities.iter().map(describe).collect::<Vec<_>>(),
        "created_ms": info.created_ms,
        "expires_ms": info.expires_ms,
        "join": info.join.as_ref().map(|join| json!({
            "uses_left": join.uses_left, "voter": join.voter, "admitted": join.admitted,
        })),
    })
}
