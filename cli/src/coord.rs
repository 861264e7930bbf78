//! `pando lease|lock|rwlock|election|ratelimit|semaphore|counter|sequence|barrier|service`: the coordination
//! primitives (queues are in [`crate::queue`]).

use clap::Subcommand;
use pando_client::Client;
use pando_client::pando_protocol::coord::{
    BarrierInfo, CoordRequest, CoordResponse, CounterValue, ElectionInfo, Health, LeaseInfo, LockInfo, RwMode,
    ServiceInstance,
};
use pando_client::pando_protocol::error::{ErrorCode, WireError};
use pando_client::pando_protocol::kv::bytes;
use serde_json::json;

use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease; prints its id.
    Grant {
        /// Time to live: `10s`, `500ms`, `2m` (a bare number is seconds).
        #[arg(long, value_parser = parse_duration_ms)]
        ttl: u64,
        /// The part of the keyspace the lease belongs to: it holds only keys and names under it, and granting,
        /// keeping alive or revoking it needs write access there (default: all of it, an admin's lease).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Push the lease's deadline one TTL ahead.
    Keepalive {
        lease: u64,
        /// The prefix the lease belongs under (one your token may write; default: the whole keyspace).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Revoke the lease, releasing everything attached to it.
    Revoke {
        lease: u64,
        /// The prefix the lease belongs under (one your token may write; default: the whole keyspace).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// The lease's TTL, deadline and what it holds.
    Ttl {
        lease: u64,
        /// The prefix the lease belongs under (one your token may read; default: the whole keyspace).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// The leases under a prefix (their own prefix starts with it; default: every lease, which needs read access to
    /// the whole keyspace).
    List {
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Take the lock now or fail with CONFLICT naming the holder; prints the lease and the fencing token.
    Acquire {
        name: String,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Release the lock held by `--lease` with `--token`.
    Release {
        name: String,
        #[arg(long)]
        lease: u64,
        #[arg(long)]
        token: u64,
    },
    /// The holder and the last token.
    Status { name: String },
    /// The locks and read-write locks held now whose names start with `--prefix` (a line each).
    List {
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

/// Who holds what is acquired: an existing lease, or a new one of `--ttl` granted for it.
#[derive(Debug, clap::Args)]
pub struct HolderArgs {
    /// Hold it with this lease (kept alive by you).
    #[arg(long, conflicts_with = "ttl")]
    lease: Option<u64>,
    /// Hold it with a new lease of this TTL, granted for it (the lease belongs to the name, so a token that may write
    /// the name may keep it alive and revoke it with `--prefix NAME`).
    #[arg(long, value_parser = parse_duration_ms, default_value = "30s")]
    ttl: u64,
    /// Wait up to this long while it is taken (the node parks the request until a release; bounded by --timeout-ms).
    #[arg(long, value_parser = parse_duration_ms, default_value = "0")]
    wait: u64,
}

impl HolderArgs {
    fn wait_ms(&self) -> anyhow::Result<u32> {
        u32::try_from(self.wait).map_err(|_| anyhow::anyhow!("--wait is too long"))
    }
}

#[derive(Debug, Subcommand)]
pub enum RwLockCommand {
    /// Hold it shared; fails with CONFLICT while a writer holds it.
    Read {
        name: String,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Hold it exclusively; prints the lease and the fencing token.
    Write {
        name: String,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Turn a write hold into a read hold, atomically.
    Downgrade {
        name: String,
        #[arg(long)]
        lease: u64,
    },
    Release {
        name: String,
        #[arg(long)]
        lease: u64,
    },
    /// The writer, the readers and the last write token.
    Status { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ElectionCommand {
    /// Become the leader (proclaiming `--value`) or fail with CONFLICT naming the leader (`--wait` parks it).
    Campaign {
        name: String,
        #[arg(long, default_value = "")]
        value: String,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// The leader, its value and token.
    Leader { name: String },
    /// Step down.
    Resign {
        name: String,
        #[arg(long)]
        lease: u64,
    },
    /// Print the leader now and every time it changes (a line each), from one stream that moves to another member
    /// when its node is lost.
    Observe {
        name: String,
        /// Stop after this many lines (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BarrierCommand {
    /// Enter the barrier; it opens when --parties have entered (`--wait` parks until then).
    Enter {
        name: String,
        #[arg(long)]
        parties: u32,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Leave the barrier (once every party left an open barrier, it is ready for the next round).
    Leave {
        name: String,
        #[arg(long)]
        lease: u64,
    },
    /// Parties, round and members.
    Status { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Register (or update) an instance, passing, with a TTL it keeps by heartbeats.
    Register {
        service: String,
        #[arg(long)]
        instance: String,
        #[arg(long)]
        addr: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The instance turns critical if no heartbeat comes for this long.
        #[arg(long, value_parser = parse_duration_ms, default_value = "15s")]
        ttl: u64,
        /// A critical instance is removed after this long.
        #[arg(long, value_parser = parse_duration_ms, default_value = "1m")]
        deregister_after: u64,
        /// Tie the registration to this lease (it goes when the lease ends).
        #[arg(long)]
        lease: Option<u64>,
    },
    /// Restart the TTL; the instance is passing again.
    Heartbeat {
        service: String,
        #[arg(long)]
        instance: String,
    },
    /// Report the instance's health with --status (also restarts the TTL); without it, show its health.
    Health {
        service: String,
        #[arg(long)]
        instance: String,
        #[arg(long, value_parser = parse_health)]
        status: Option<Health>,
        #[arg(long, default_value = "", requires = "status")]
        note: String,
    },
    /// The service's instances.
    Discover {
        service: String,
        /// Only the passing ones.
        #[arg(long)]
        healthy: bool,
    },
    Deregister {
        service: String,
        #[arg(long)]
        instance: String,
    },
}

fn parse_health(text: &str) -> Result<Health, String> {
    match text {
        "passing" => Ok(Health::Passing),
        "warning" => Ok(Health::Warning),
        "critical" => Ok(Health::Critical),
        _ => Err("expected passing, warning or critical".into()),
    }
}

#[derive(Debug, Subcommand)]
pub enum RateLimitCommand {
    /// Take `--count` tokens or fail with CONFLICT saying when to retry.
    TryAcquire {
        name: String,
        /// Refill rate: `100/s` (or a bare number per second).
        #[arg(long, value_parser = parse_rate)]
        rate: u32,
        /// Most tokens the bucket holds.
        #[arg(long)]
        burst: u32,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Tokens available as of the last applied entry.
    Available { name: String },
    /// Forget the bucket (its next use starts full).
    Reset { name: String },
}

/// `100/s` or `100`: tokens per second.
pub fn parse_rate(text: &str) -> Result<u32, String> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    number.parse().map_err(|_| format!("`{text}` is not a rate such as 100/s"))
}

#[derive(Debug, Subcommand)]
pub enum SemaphoreCommand {
    /// Take `--permits` of the semaphore now, or fail with CONFLICT; prints the lease and the fencing token.
    Acquire {
        name: String,
        #[arg(long, default_value_t = 1)]
        permits: u32,
        /// The semaphore's size, fixed by its first acquisition.
        #[arg(long)]
        capacity: u32,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Return every permit `--lease` holds.
    Release {
        name: String,
        #[arg(long)]
        lease: u64,
    },
    /// Capacity, holders and permits in use.
    Status { name: String },
}

#[derive(Debug, Subcommand)]
pub enum CounterCommand {
    /// Add one.
    Incr {
        name: String,
        #[arg(long)]
        unsigned: bool,
    },
    Add {
        name: String,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
        #[arg(long)]
        unsigned: bool,
    },
    Sub {
        name: String,
        delta: i64,
        #[arg(long)]
        unsigned: bool,
    },
    Set {
        name: String,
        #[arg(allow_negative_numbers = true)]
        value: String,
        #[arg(long)]
        unsigned: bool,
    },
    /// Set `value` only if the counter is `expected`.
    Cas {
        name: String,
        #[arg(allow_negative_numbers = true)]
        expected: String,
        #[arg(allow_negative_numbers = true)]
        value: String,
        #[arg(long)]
        unsigned: bool,
    },
    Get {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SequenceCommand {
    /// The next number.
    Next { name: String },
    /// Reserve `--count` consecutive numbers; prints the first.
    Reserve {
        name: String,
        #[arg(long)]
        count: u32,
    },
}

/// `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds, in milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration such as 10s or 500ms"))?;
    let factor = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown duration unit `{other}`; use ms, s, m, h or d")),
    };
    number.checked_mul(factor).ok_or_else(|| format!("`{text}` is too long"))
}

fn counter_value(text: &str, unsigned: bool) -> anyhow::Result<CounterValue> {
    Ok(if unsigned {
        CounterValue::Unsigned(text.parse().map_err(|_| anyhow::anyhow!("`{text}` is not an unsigned 64-bit number"))?)
    } else {
        CounterValue::Signed(text.parse().map_err(|_| anyhow::anyhow!("`{text}` is not a signed 64-bit number"))?)
    })
}

fn kind(unsigned: bool) -> CounterValue {
    if unsigned { CounterValue::Unsigned(0) } else { CounterValue::Signed(0) }
}

fn lease_json(lease: &LeaseInfo) -> serde_json::Value {
    json!({
        "id": lease.id,
        "prefix": String::from_utf8_lossy(&lease.prefix),
        "ttl_ms": lease.ttl_ms,
        "deadline_ms": lease.deadline_ms,
        "locks": lease.locks.iter().map(|name| String::from_utf8_lossy(name).into_owned()).collect::<Vec<_>>(),
        "keys": lease.keys.iter().map(|key| String::from_utf8_lossy(key).into_owned()).collect::<Vec<_>>(),
        "semaphores": names(&lease.semaphores),
        "rwlocks": names(&lease.rwlocks),
        "elections": names(&lease.elections),
        "barriers": names(&lease.barriers),
        "services": lease.services.iter().map(|reference| json!({
            "service": String::from_utf8_lossy(&reference.service),
            "instance": String::from_utf8_lossy(&reference.instance),
        })).collect::<Vec<_>>(),
    })
}

fn names(names: &[pando_client::pando_protocol::kv::Bytes]) -> Vec<String> {
    names.iter().map(|name| String::from_utf8_lossy(name).into_owned()).collect()
}

fn lock_json(lock: &LockInfo) -> serde_json::Value {
    json!({
        "name": String::from_utf8_lossy(&lock.name),
        "holder": lock.holder.as_ref().map(|holder| json!({
            "lease": holder.lease, "token": holder.token, "acquired_ms": holder.acquired_ms,
        })),
        "last_token": lock.last_token,
    })
}

fn print_lease(lease: &LeaseInfo, json: bool) {
    if json {
        print_json(&lease_json(lease));
    } else {
        println!(
            "lease {}{} ttl {} ms, expires {}, {} locks, {} keys, {} other attachments",
            lease.id,
            if lease.prefix.is_empty() {
                String::new()
            } else {
                format!(" under {}", String::from_utf8_lossy(&lease.prefix))
            },
            lease.ttl_ms,
            crate::output::utc(lease.deadline_ms),
            lease.locks.len(),
            lease.keys.len(),
            lease.semaphores.len()
                + lease.rwlocks.len()
                + lease.elections.len()
                + lease.barriers.len()
                + lease.services.len()
        );
    }
}

pub(crate) fn unexpected(response: &CoordResponse) -> anyhow::Error {
    anyhow::anyhow!("unexpected response {response:?}")
}

pub async fn lease(client: &Client, command: LeaseCommand, json: bool) -> anyhow::Result<()> {
    let request = match command {
        LeaseCommand::Grant { ttl, prefix } => CoordRequest::LeaseGrant { ttl_ms: ttl, prefix: bytes(prefix) },
        LeaseCommand::Keepalive { lease, prefix } => CoordRequest::LeaseKeepAlive { lease, prefix: bytes(prefix) },
        LeaseCommand::Revoke { lease, prefix } => CoordRequest::LeaseRevoke { lease, prefix: bytes(prefix) },
        LeaseCommand::Ttl { lease, prefix } => CoordRequest::LeaseGet { lease, prefix: bytes(prefix) },
        LeaseCommand::List { prefix } => CoordRequest::LeaseList { prefix: bytes(prefix.as_str()) },
    };
    match client.coord(request).await? {
        CoordResponse::Lease { lease } => print_lease(&lease, json),
        CoordResponse::Leases { leases, truncated } => {
            if json {
                print_json(
                    &json!({"leases": leases.iter().map(lease_json).collect::<Vec<_>>(), "truncated": truncated}),
                );
            } else {
                leases.iter().for_each(|lease| print_lease(lease, false));
                if truncated {
                    eprintln!("(more leases not shown)");
                }
            }
        }
        CoordResponse::Revoked { released_locks, deleted_keys } => {
            let text = |names: &[pando_client::pando_protocol::kv::Bytes]| -> Vec<String> {
                names.iter().map(|name| String::from_utf8_lossy(name).into_owned()).collect()
            };
            let (locks, keys) = (text(&released_locks), text(&deleted_keys));
            if json {
                print_json(&json!({"released_locks": locks, "deleted_keys": keys}));
            } else {
                println!(
                    "OK revoked, released {} locks ({}), deleted {} keys ({})",
                    locks.len(),
                    crate::output::list(&locks),
                    keys.len(),
                    crate::output::list(&keys)
                );
            }
        }
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

pub async fn lock(client: &Client, command: LockCommand, json: bool) -> anyhow::Result<()> {
    let request = match command {
        LockCommand::Acquire { name, holder } => {
            let wait_ms = holder.wait_ms()?;
            let lease = lease_or_grant(client, holder, &name).await?;
            CoordRequest::LockAcquire { name: bytes(name), lease, wait_ms }
        }
        LockCommand::Release { name, lease, token } => CoordRequest::LockRelease { name: bytes(name), lease, token },
        LockCommand::Status { name } => CoordRequest::LockGet { name: bytes(name) },
        LockCommand::List { prefix } => CoordRequest::LockList { prefix: bytes(prefix) },
    };
    let acquiring = matches!(request, CoordRequest::LockAcquire { .. });
    match client.coord(request).await? {
        CoordResponse::Lock { lock } => {
            if json {
                print_json(&lock_json(&lock));
            } else {
                match (&lock.holder, acquiring) {
                    (Some(holder), true) => println!("lease {} token {}", holder.lease, holder.token),
                    (Some(holder), false) => println!(
                        "held by lease {} with token {} since {}; last token {}",
                        holder.lease,
                        holder.token,
                        crate::output::utc(holder.acquired_ms),
                        lock.last_token
                    ),
                    (None, _) => println!("free; last token {}", lock.last_token),
                }
            }
        }
        CoordResponse::Locks { locks, rwlocks, truncated } => {
            let name = |name: &[u8]| String::from_utf8_lossy(name).into_owned();
            if json {
                let rwlocks: Vec<_> = rwlocks
                    .iter()
                    .map(|rwlock| {
                        let writer = rwlock.writer.as_ref().map(|w| json!({"lease": w.lease, "token": w.token}));
                        json!({"name": name(&rwlock.name), "writer": writer, "readers": rwlock.readers})
                    })
                    .collect();
                let locks: Vec<_> = locks.iter().map(lock_json).collect();
                print_json(&json!({"locks": locks, "rwlocks": rwlocks, "truncated": truncated}));
            } else {
                for lock in &locks {
                    if let Some(holder) = &lock.holder {
                        println!("lock {} lease {} token {}", name(&lock.name), holder.lease, holder.token);
                    }
                }
                for rwlock in &rwlocks {
                    match &rwlock.writer {
                        Some(writer) => println!(
                            "rwlock {} written by lease {} token {}",
                            name(&rwlock.name),
                            writer.lease,
                            writer.token
                        ),
                        None => println!("rwlock {} read by {} leases", name(&rwlock.name), rwlock.readers.len()),
                    }
                }
                if truncated {
                    eprintln!("(more locks not shown)");
                }
            }
        }
        CoordResponse::Released => println!("OK released"),
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

async fn lease_or_grant(client: &Client, holder: HolderArgs, name: &str) -> anyhow::Result<u64> {
    match holder.lease {
        Some(lease) => Ok(lease),
        None => match client.coord(CoordRequest::LeaseGrant { ttl_ms: holder.ttl, prefix: bytes(name) }).await? {
            CoordResponse::Lease { lease } => Ok(lease.id),
            other => Err(unexpected(&other)),
        },
    }
}

pub async fn rwlock(client: &Client, command: RwLockCommand, json: bool) -> anyhow::Result<()> {
    let request = match command {
        RwLockCommand::Read { name, holder } => {
            let wait_ms = holder.wait_ms()?;
            let lease = lease_or_grant(client, holder, &name).await?;
            CoordRequest::RwLockAcquire { name: bytes(name), lease, mode: RwMode::Read, wait_ms }
        }
        RwLockCommand::Write { name, holder } => {
            let wait_ms = holder.wait_ms()?;
            let lease = lease_or_grant(client, holder, &name).await?;
            CoordRequest::RwLockAcquire { name: bytes(name), lease, mode: RwMode::Write, wait_ms }
        }
        RwLockCommand::Downgrade { name, lease } => CoordRequest::RwLockDowngrade { name: bytes(name), lease },
        RwLockCommand::Release { name, lease } => CoordRequest::RwLockRelease { name: bytes(name), lease },
        RwLockCommand::Status { name } => CoordRequest::RwLockGet { name: bytes(name) },
    };
    let lease = match &request {
        CoordRequest::RwLockAcquire { lease, .. } | CoordRequest::RwLockDowngrade { lease, .. } => Some(*lease),
        _ => None,
    };
    match client.coord(request).await? {
        CoordResponse::RwLock { rwlock } => {
            let writer = rwlock.writer.as_ref().map(|writer| json!({"lease": writer.lease, "token": writer.token}));
            if json {
                print_json(&json!({
                    "name": String::from_utf8_lossy(&rwlock.name),
                    "writer": writer,
                    "readers": rwlock.readers,
                    "last_token": rwlock.last_token,
                    "lease": lease,
                }));
            } else {
                match (&rwlock.writer, lease) {
                    (Some(writer), Some(lease)) if writer.lease == lease => {
                        println!("lease {lease} token {} (write)", writer.token)
                    }
                    (_, Some(lease)) => println!("lease {lease} (read, {} readers)", rwlock.readers.len()),
                    (Some(writer), None) => println!("written by lease {} with token {}", writer.lease, writer.token),
                    (None, None) => println!(
                        "{} readers (leases {}); last token {}",
                        rwlock.readers.len(),
                        crate::output::list(&rwlock.readers),
                        rwlock.last_token
                    ),
                }
            }
        }
        CoordResponse::Released => println!("OK released"),
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

pub async fn election(client: &Client, command: ElectionCommand, json: bool) -> anyhow::Result<()> {
    let request = match command {
        ElectionCommand::Campaign { name, value, holder } => {
            let wait_ms = holder.wait_ms()?;
            let lease = lease_or_grant(client, holder, &name).await?;
            CoordRequest::ElectionCampaign { name: bytes(name), lease, value: bytes(value), wait_ms }
        }
        ElectionCommand::Leader { name } => CoordRequest::ElectionGet { name: bytes(name) },
        ElectionCommand::Resign { name, lease } => CoordRequest::ElectionResign { name: bytes(name), lease },
        ElectionCommand::Observe { name, count } => return observe(client, name, count, json).await,
    };
    match client.coord(request).await? {
        CoordResponse::Election { election } => print_election(&election, json),
        CoordResponse::Released => println!("OK resigned"),
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

fn print_election(election: &ElectionInfo, json: bool) {
    if json {
        let leader = election.leader.as_ref().map(|leader| {
            json!({
                "lease": leader.lease,
                "token": leader.token,
                "value": String::from_utf8_lossy(&leader.value),
                "since_ms": leader.since_ms,
            })
        });
        print_json(&json!({"name": String::from_utf8_lossy(&election.name), "leader": leader}));
    } else {
        match &election.leader {
            Some(leader) => {
                println!(
                    "lease {} token {} value {}",
                    leader.lease,
                    leader.token,
                    String::from_utf8_lossy(&leader.value)
                )
            }
            None => println!("no leader; last token {}", election.last_token),
        }
    }
}

/// Prints the election, then each change, from one observation stream (it moves to another member when its own is
/// lost, and never goes back to a state it printed before).
async fn observe(client: &Client, name: String, count: Option<u64>, json: bool) -> anyhow::Result<()> {
    let mut observation = client.observe_election(name.as_bytes());
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        print_election(&observation.next().await?, json);
        printed += 1;
    }
    observation.cancel().await;
    Ok(())
}

pub async fn barrier(client: &Client, command: BarrierCommand, json: bool) -> anyhow::Result<()> {
    let mut waited_ms = 0;
    let (request, lease) = match command {
        BarrierCommand::Enter { name, parties, holder } => {
            waited_ms = holder.wait_ms()?;
            let lease = lease_or_grant(client, holder, &name).await?;
            (CoordRequest::BarrierEnter { name: bytes(name), lease, parties, wait_ms: waited_ms }, Some(lease))
        }
        BarrierCommand::Leave { name, lease } => (CoordRequest::BarrierLeave { name: bytes(name), lease }, None),
        BarrierCommand::Status { name } => (CoordRequest::BarrierGet { name: bytes(name) }, None),
    };
    let CoordResponse::Barrier { barrier } = client.coord(request).await? else {
        anyhow::bail!("unexpected response to a barrier request");
    };
    print_barrier(&barrier, lease, json);
    if waited_ms > 0 && !barrier.open {
        // Waited and it did not open: a failure for scripts, though the party stays entered.
        return Err(pando_client::ClientError::Timeout(format!(
            "the barrier did not open within {waited_ms} ms; lease {} is still entered (`pando barrier leave`)",
            lease.unwrap_or_default()
        ))
        .into());
    }
    Ok(())
}

fn print_barrier(barrier: &BarrierInfo, lease: Option<u64>, json: bool) {
    if json {
        print_json(&json!({
            "name": String::from_utf8_lossy(&barrier.name),
            "parties": barrier.parties,
            "generation": barrier.generation,
            "open": barrier.open,
            "members": barrier.members,
            "lease": lease,
        }));
        return;
    }
    let who = lease.map(|lease| format!("lease {lease}: ")).unwrap_or_default();
    if barrier.open {
        println!(
            "{who}open (round {}); {} of {} parties yet to leave",
            barrier.generation,
            barrier.members.len(),
            barrier.parties
        );
    } else if barrier.parties == 0 {
        println!("{who}closed, nobody waiting; {} rounds so far", barrier.generation);
    } else {
        println!("{who}waiting: {} of {} parties entered", barrier.members.len(), barrier.parties);
    }
}

pub async fn service(client: &Client, command: ServiceCommand, json: bool) -> anyhow::Result<()> {
    let request = match command {
        ServiceCommand::Register { service, instance, addr, tags, ttl, deregister_after, lease } => {
            CoordRequest::ServiceRegister {
                service: bytes(service),
                instance: bytes(instance),
                address: addr,
                tags,
                ttl_ms: ttl,
                deregister_after_ms: deregister_after,
                lease,
            }
        }
        ServiceCommand::Heartbeat { service, instance } => {
            CoordRequest::ServiceHeartbeat { service: bytes(service), instance: bytes(instance) }
        }
        ServiceCommand::Health { service, instance, status: Some(health), note } => {
            CoordRequest::ServiceHealth { service: bytes(service), instance: bytes(instance), health, note }
        }
        ServiceCommand::Health { service, instance, status: None, .. } => {
            let request = CoordRequest::ServiceDiscover { service: bytes(service.clone()), passing_only: false };
            let CoordResponse::Services { instances } = client.coord(request).await? else {
                anyhow::bail!("unexpected response to a discovery");
            };
            let Some(found) = instances.iter().find(|found| found.instance.as_slice() == instance.as_bytes()) else {
                return Err(pando_client::ClientError::Wire(WireError::new(
                    ErrorCode::NotFound,
                    format!("instance {instance} of service {service} is not registered"),
                ))
                .into());
            };
            if json {
                print_json(&instance_json(found));
            } else {
                print_instance(found);
            }
            return Ok(());
        }
        ServiceCommand::Discover { service, healthy } => {
            CoordRequest::ServiceDiscover { service: bytes(service), passing_only: healthy }
        }
        ServiceCommand::Deregister { service, instance } => {
            CoordRequest::ServiceDeregister { service: bytes(service), instance: bytes(instance) }
        }
    };
    let deregistering = matches!(request, CoordRequest::ServiceDeregister { .. });
    match client.coord(request).await? {
        CoordResponse::Service { instance } if deregistering => {
            if json {
                print_json(&json!({"deregistered": instance_json(&instance)}));
            } else {
                println!("OK deregistered");
            }
        }
        CoordResponse::Service { instance } => {
            if json {
                print_json(&instance_json(&instance));
            } else {
                print_instance(&instance);
            }
        }
        CoordResponse::Services { instances } => {
            if json {
                print_json(&json!({"instances": instances.iter().map(instance_json).collect::<Vec<_>>()}));
            } else {
                instances.iter().for_each(print_instance);
            }
        }
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

fn instance_json(instance: &ServiceInstance) -> serde_json::Value {
    json!({
        "service": String::from_utf8_lossy(&instance.service),
        "instance": String::from_utf8_lossy(&instance.instance),
        "address": instance.address,
        "tags": instance.tags,
        "health": instance.health.as_str(),
        "note": instance.note,
        "ttl_ms": instance.ttl_ms,
        "deregister_after_ms": instance.deregister_after_ms,
        "lease": instance.lease,
        "deadline_ms": instance.deadline_ms,
    })
}

fn print_instance(instance: &ServiceInstance) {
    let note = if instance.note.is_empty() { String::new() } else { format!(" ({})", instance.note) };
    println!(
        "{} {} {}{note} tags {}",
        String::from_utf8_lossy(&instance.instance),
        instance.address,
        instance.health.as_str(),
        crate::output::list(&instance.tags)
    );
}

pub async fn ratelimit(client: &Client, command: RateLimitCommand, json: bool) -> anyhow::Result<()> {
    let request = match command {
        RateLimitCommand::TryAcquire { name, rate, burst, count } => {
            CoordRequest::RateLimitAcquire { name: bytes(name), rate_per_s: rate, burst, count }
        }
        RateLimitCommand::Available { name } => CoordRequest::RateLimitGet { name: bytes(name) },
        RateLimitCommand::Reset { name } => CoordRequest::RateLimitReset { name: bytes(name) },
    };
    match client.coord(request).await? {
        CoordResponse::RateLimit { limit } => {
            if json {
                print_json(&json!({
                    "name": String::from_utf8_lossy(&limit.name),
                    "rate_per_s": limit.rate_per_s,
                    "burst": limit.burst,
                    "available": limit.available,
                    "as_of_ms": limit.as_of_ms,
                }));
            } else {
                println!("{} of {} tokens available ({}/s)", limit.available, limit.burst, limit.rate_per_s);
            }
        }
        CoordResponse::Released => println!("OK reset"),
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

pub async fn semaphore(client: &Client, command: SemaphoreCommand, json: bool) -> anyhow::Result<()> {
    let request = match command {
        SemaphoreCommand::Acquire { name, permits, capacity, holder } => {
            let wait_ms = holder.wait_ms()?;
            let lease = lease_or_grant(client, holder, &name).await?;
            CoordRequest::SemaphoreAcquire { name: bytes(name), lease, permits, capacity, wait_ms }
        }
        SemaphoreCommand::Release { name, lease } => CoordRequest::SemaphoreRelease { name: bytes(name), lease },
        SemaphoreCommand::Status { name } => CoordRequest::SemaphoreGet { name: bytes(name) },
    };
    let acquired_by = match &request {
        CoordRequest::SemaphoreAcquire { lease, .. } => Some(*lease),
        _ => None,
    };
    match client.coord(request).await? {
        CoordResponse::Semaphore { semaphore } => {
            let holders: Vec<_> = semaphore
                .holders
                .iter()
                .map(|holder| json!({"lease": holder.lease, "permits": holder.permits, "token": holder.token}))
                .collect();
            if json {
                print_json(&json!({
                    "name": String::from_utf8_lossy(&semaphore.name),
                    "capacity": semaphore.capacity,
                    "used": semaphore.used(),
                    "holders": holders,
                    "last_token": semaphore.last_token,
                }));
            } else if let Some(holder) =
                acquired_by.and_then(|lease| semaphore.holders.iter().find(|holder| holder.lease == lease))
            {
                println!(
                    "lease {} token {} ({} of {} permits in use)",
                    holder.lease,
                    holder.token,
                    semaphore.used(),
                    semaphore.capacity
                );
            } else {
                println!("{} of {} permits in use by {} holders", semaphore.used(), semaphore.capacity, holders.len());
            }
        }
        CoordResponse::Released => println!("OK released"),
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

pub async fn counter(client: &Client, command: CounterCommand, json: bool) -> anyhow::Result<()> {
    let request = match command {
        CounterCommand::Incr { name, unsigned } => {
            CoordRequest::CounterAdd { name: bytes(name), delta: 1, initial: kind(unsigned) }
        }
        CounterCommand::Add { name, delta, unsigned } => {
            CoordRequest::CounterAdd { name: bytes(name), delta, initial: kind(unsigned) }
        }
        CounterCommand::Sub { name, delta, unsigned } => CoordRequest::CounterAdd {
            name: bytes(name),
            delta: delta.checked_neg().ok_or_else(|| anyhow::anyhow!("cannot subtract {delta}"))?,
            initial: kind(unsigned),
        },
        CounterCommand::Set { name, value, unsigned } => {
            CoordRequest::CounterSet { name: bytes(name), value: counter_value(&value, unsigned)? }
        }
        CounterCommand::Cas { name, expected, value, unsigned } => CoordRequest::CounterCas {
            name: bytes(name),
            expected: counter_value(&expected, unsigned)?,
            value: counter_value(&value, unsigned)?,
        },
        CounterCommand::Get { name } => CoordRequest::CounterGet { name: bytes(name) },
    };
    match client.coord(request).await? {
        CoordResponse::Counter { value } => {
            let text = value.map_or_else(|| "0".to_string(), |value| value.to_string());
            if json {
                print_json(&json!({"value": text, "exists": value.is_some()}));
            } else {
                println!("{text}");
            }
        }
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

pub async fn sequence(client: &Client, command: SequenceCommand, json: bool) -> anyhow::Result<()> {
    let (name, count) = match command {
        SequenceCommand::Next { name } => (name, 1),
        SequenceCommand::Reserve { name, count } => (name, count),
    };
    match client.coord(CoordRequest::SequenceNext { name: bytes(name), count }).await? {
        CoordResponse::Sequence { first, count } => {
            if json {
                print_json(&json!({"first": first, "count": count}));
            } else {
                println!("{first}");
            }
        }
        other => return Err(unexpected(&other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("3"), Ok(3_000));
        assert!(parse_duration_ms("ten").is_err());
        assert_eq!(parse_duration_ms("5d"), Ok(5 * 86_400_000));
        assert!(parse_duration_ms("5w").is_err());
        assert!(parse_duration_ms("99999999999999999999h").is_err());
    }
}
