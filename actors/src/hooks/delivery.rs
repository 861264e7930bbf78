//! Durable hook delivery on one node: a manager that claims the hooks nobody delivers, and one worker per claimed
//! hook that begins, runs and answers its deliveries.
//!
//! Every voter runs a manager. Every [`MANAGER_TICK_MS`] it reads the hooks; one that is unclaimed, or whose claim
//! lapsed by this node's clock, gets a worker, which claims it through the log (the state machine lets one node win;
//! the others' workers end at once). The worker renews its claim every third of [`HOOK_CLAIM_TTL_MS`]; a claim it
//! cannot renew in time, or that another node took, ends the worker, and dropping the worker kills every command it
//! runs. A worker begins deliveries when a matching event commits (the router wakes it), when an attempt finishes,
//! and when the state machine says a retry or an ack wait is due; each delivery runs on the [`Runner`] (commands and
//! plugins in production, a seeded stand-in in the simulator) and is answered with its fence and attempt, so an answer
//! that comes after the hook moved on is refused by the state machine, never counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::hook::durable::{Delivery, HookCommand, HookResponse, HookTarget};
use pando_protocol::limits::{HOOK_BEGIN_COUNT_MAX, HOOK_CLAIM_TTL_MS, HOOKS_COUNT_MAX};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::HookRouterArgs;
use super::exec::{self, ExecConfig, Outcome};
use crate::clock::Clock;
use crate::mesh::Proposer;
use crate::plugins::PluginsHandle;

/// How often the manager looks for hooks to claim.
pub const MANAGER_TICK_MS: u64 = 500;
/// Events that may pile up after an idle hook's position before it moves past them at once.
const IDLE_LAG_EVENTS_MAX: u64 = 1_000;
/// How often an idle hook moves its position past events that match nothing.
const IDLE_BEGIN_EVERY: Duration = Duration::from_secs(5);
/// The least pause after a Begin that found nothing due, before the next.
const EMPTY_BEGIN_PAUSE_MS: u64 = 200;
/// Pause before the next Begin after one that took nothing but says the log holds more (it skipped a scan's worth of
/// events that match nothing): at most 100 such Begins a second, each skipping up to `HOOK_SCAN_ROWS_MAX` events.
const MORE_EMPTY_BEGIN_PAUSE_MS: u64 = 10;
/// Of an attempt's ack wait, what is kept for its answer to reach the log.
const ANSWER_MARGIN_MS: u64 = 50;
/// How long one proposal of a worker may take.
const PROPOSE_TIMEOUT_MS: u64 = 5_000;
/// How long a stopping node gives its workers to release their claims.
const RELEASE_WAIT_MS: u64 = 1_000;

/// Runs one delivery attempt and says how it ended.
pub trait Runner: Send + Sync + 'static {
    fn run(&self, target: &HookTarget, delivery: &Delivery, limit: Duration) -> BoxFuture<'static, Outcome>;

    /// An attempt the worker failed without running it: its Begin was answered too late to run within its ack wait.
    fn unrun(&self, _delivery: &Delivery) {}
}

/// Commands on this machine, plugins of this node, and actors in process groups across the mesh.
pub struct NodeRunner {
    pub exec: ExecConfig,
    pub plugins: Option<PluginsHandle>,
    pub mesh: crate::mesh::MeshHandle,
}

impl Runner for NodeRunner {
    fn run(&self, target: &HookTarget, delivery: &Delivery, limit: Duration) -> BoxFuture<'static, Outcome> {
        let (target, delivery, exec, plugins) =
            (target.clone(), delivery.clone(), self.exec.clone(), self.plugins.clone());
        let mesh = self.mesh.clone();
        Box::pin(async move {
            match target {
                HookTarget::Exec { argv, shell, timeout_ms } => {
                    exec::run(&exec, &argv, shell, &delivery, limit.min(Duration::from_millis(timeout_ms))).await
                }
                HookTarget::Plugin { plugin, function } => {
                    let Some(plugins) = plugins else { return Outcome::Nack("this node runs no plugins".into()) };
                    let input = pando_protocol::hook::json::to_json_line(&delivery.event);
                    match plugins.routes().call(&plugin, &function, input, limit, None).await {
                        Ok(_) => Outcome::Ack,
                        Err(error) => Outcome::Nack(error.to_string()),
                    }
                }
                HookTarget::Group { group } => match mesh.scope() {
                    Ok(scope) => super::group::deliver(&scope, &group, &delivery, limit).await,
                    Err(unavailable) => Outcome::Nack(unavailable.to_string()),
                },
            }
        })
    }
}

/// What the workers share.
struct Context {
    node_id: u64,
    proposer: Proposer,
    clock: Clock,
    runner: Arc<dyn Runner>,
    hooks: super::HooksHandle,
    storage: crate::storage_actor::StorageHandle,
    /// Per hook this node delivers: a line for `pando actors`.
    status: Mutex<BTreeMap<String, String>>,
}

/// The manager and its workers.
pub struct Deliveries {
    manager: tokio::task::JoinHandle<()>,
    shutdown: watch::Sender<bool>,
    context: Arc<Context>,
}

/// A router that panicked (or was killed) never runs `post_stop`: dropping its state ends the manager, and with it
/// every worker and the commands they run.
impl Drop for Deliveries {
    fn drop(&mut self) {
        self.manager.abort();
    }
}

impl Deliveries {
    pub fn start(args: &HookRouterArgs) -> Deliveries {
        let context = Arc::new(Context {
            node_id: args.node_id,
            proposer: args.proposer.clone(),
            clock: args.clock,
            runner: args.runner.clone(),
            hooks: args.handle.clone(),
            storage: args.storage.clone(),
            status: Mutex::new(BTreeMap::new()),
        });
        let (shutdown, stopping) = watch::channel(false);
        let manager = tokio::spawn(manage(context.clone(), args.raft.clone(), args.followers_deliver, stopping));
        Deliveries { manager, shutdown, context }
    }

    /// Asks the workers to give their claims back (so another node takes over at once), then stops everything.
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_millis(RELEASE_WAIT_MS + 500), &mut self.manager).await;
        self.manager.abort();
    }

    /// One line per hook this node delivers.
    pub fn describe(&self) -> String {
        let status = self.context.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if status.is_empty() {
            return "none".into();
        }
        status.iter().map(|(name, line)| format!("{name} ({line})")).collect::<Vec<_>>().join(", ")
    }
}

impl Context {
    fn set_status(&self, name: &str, line: Option<String>) {
        let mut status = self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match line {
            Some(line) => status.insert(name.to_string(), line),
            None => status.remove(name),
        };
    }

    async fn propose(&self, command: HookCommand) -> Result<HookResponse, WireError> {
        match self.proposer.propose_anywhere(Command::Hook(command), Duration::from_millis(PROPOSE_TIMEOUT_MS)).await? {
            CommandOutput::Hook(response) => Ok(response),
            other => Err(WireError::internal(format!("a hook command answered {other:?}"))),
        }
    }
}

async fn manage(
    context: Arc<Context>,
    raft: crate::raft::RaftHandle,
    followers_deliver: bool,
    mut stopping: watch::Receiver<bool>,
) {
    let mut workers: BTreeMap<String, tokio::task::AbortHandle> = BTreeMap::new();
    let mut running: JoinSet<String> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(MANAGER_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stopping.changed() => break,
            Some(ended) = running.join_next() => {
                if let Ok(name) = ended {
                    workers.remove(&name);
                    context.set_status(&name, None);
                }
            }
            _ = tick.tick() => {
                // Learners deliver nothing (like etcd's, they serve no writes).
                if !raft.is_voter(context.node_id) {
                    for (name, worker) in std::mem::take(&mut workers) {
                        worker.abort();
                        context.set_status(&name, None);
                    }
                    continue;
                }
                // In the simulator only the leader takes hooks on (`followers_deliver`: see `HookRouterArgs`).
                if !followers_deliver && !raft.leads() {
                    continue;
                }
                let Ok(reader) = context.storage.reader() else { continue };
                let Ok((hooks, _)) = reader.hooks(None, HOOKS_COUNT_MAX) else { continue };
                let now = context.clock.now_ms();
                let names: std::collections::BTreeSet<&str> = hooks.iter().map(|hook| hook.name.as_str()).collect();
                workers.retain(|name, worker| {
                    let keep = names.contains(name.as_str());
                    if !keep {
                        worker.abort();
                    }
                    keep
                });
                for hook in hooks {
                    if workers.contains_key(&hook.name) || hook.paused.is_some() {
                        continue;
                    }
                    let claimable = match hook.claim {
                        None => true,
                        Some(claim) => claim.node == context.node_id || claim.until_ms <= now,
                    };
                    if claimable {
                        let worker = running.spawn(work(context.clone(), hook.name.clone(), stopping.clone()));
                        workers.insert(hook.name, worker);
                    }
                }
            }
        }
    }
    // Stopping: the workers release their claims, briefly; whatever is left is aborted with the set.
    let _ = tokio::time::timeout(Duration::from_millis(RELEASE_WAIT_MS), async {
        while running.join_next().await.is_some() {}
    })
    .await;
}

/// Delivers hook `name` while this node holds its claim; answers the name when it ends.
async fn work(context: Arc<Context>, name: String, mut stopping: watch::Receiver<bool>) -> String {
    let ended = deliver_while_claimed(&context, &name, &mut stopping).await;
    match ended {
        Ok(()) => {}
        Err(why) => tracing::debug!(hook = %name, %why, "stopped delivering a hook"),
    }
    name
}

async fn deliver_while_claimed(
    context: &Arc<Context>,
    name: &str,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let claim = HookCommand::Claim { name: name.to_string(), node: context.node_id, fence: 0 };
    // The log's claim runs from when the leader stamped it, no earlier than it was sent: this node counts from the
    // sending, so it never believes in a claim the log has already let go (a late answer would otherwise stretch it).
    let claim_sent = Instant::now();
    let fence = match context.propose(claim).await {
        Ok(HookResponse::Claimed { fence, .. }) => fence,
        Ok(other) => return Err(format!("claim answered {other:?}")),
        Err(error) => return Err(format!("claim refused: {error}")),
    };
    let reader = context.storage.reader().map_err(|error| error.to_string())?;
    let Some(detail) = reader.hook(name, 0).map_err(|fault| fault.to_string())? else {
        return Err("deleted".into());
    };
    let spec = detail.record.spec;
    let waker = context.hooks.wake_on(&spec.pattern);
    let renew_every = Duration::from_millis(HOOK_CLAIM_TTL_MS / 3);
    let mut renew_at = Instant::now() + renew_every;
    let mut claimed_until = claim_sent + Duration::from_millis(HOOK_CLAIM_TTL_MS);
    let mut begin_at = Instant::now();
    let mut running: JoinSet<()> = JoinSet::new();
    let (mut delivered, mut answered) = (0u64, 0u64);
    let far = Duration::from_secs(3_600);
    // Commands that give the hook work without committing an event (resume, redrive) wake nobody: while nothing is
    // scheduled, the worker looks at the applied record now and then (a local read, no proposal).
    let mut look_at = Instant::now() + Duration::from_millis(MANAGER_TICK_MS);
    let mut last_begin = Instant::now();
    loop {
        context.set_status(
            name,
            Some(format!("fence {fence}, {} running, {delivered} begun, {answered} answered", running.len())),
        );
        tokio::select! {
            biased;
            _ = stopping.changed() => {
                running.abort_all();
                let release = HookCommand::Release { name: name.to_string(), fence };
                let _ = tokio::time::timeout(Duration::from_millis(RELEASE_WAIT_MS), context.propose(release)).await;
                return Ok(());
            }
            // Attempts never run past the claim: once it lapses, a new claimant begins their events again at once.
            // Returning drops `running`, which aborts them.
            () = tokio::time::sleep_until(claimed_until) => return Err("the claim lapsed before it was renewed".into()),
            () = tokio::time::sleep_until(renew_at) => {
                let renew = HookCommand::Claim { name: name.to_string(), node: context.node_id, fence };
                let sent = Instant::now();
                let Ok(renewed) = tokio::time::timeout_at(claimed_until, context.propose(renew)).await else {
                    return Err("could not renew the claim before it lapsed".into());
                };
                match renewed {
                    Ok(HookResponse::Claimed { fence: renewed, .. }) if renewed == fence => {
                        renew_at = Instant::now() + renew_every;
                        claimed_until = sent + Duration::from_millis(HOOK_CLAIM_TTL_MS);
                    }
                    Ok(other) => return Err(format!("the claim moved on: {other:?}")),
                    Err(error) if matches!(error.code, ErrorCode::Busy | ErrorCode::NotFound | ErrorCode::Conflict) => {
                        return Err(format!("lost the claim: {error}"));
                    }
                    Err(error) => {
                        if Instant::now() >= claimed_until {
                            return Err(format!("could not renew the claim in time: {error}"));
                        }
                        renew_at = Instant::now() + Duration::from_millis(200);
                    }
                }
            }
            Some(_) = running.join_next() => {
                answered += 1;
                begin_at = Instant::now();
            }
            () = waker.notify.notified() => begin_at = Instant::now(),
            () = tokio::time::sleep_until(look_at) => {
                look_at = Instant::now() + Duration::from_millis(MANAGER_TICK_MS);
                // Only while nothing is scheduled: a retry waiting out its backoff has its Begin set already.
                if begin_at > Instant::now() + far / 2
                    && let Ok(reader) = context.storage.reader()
                    && let Ok(Some(detail)) = reader.hook(name, 0)
                {
                    let record = detail.record;
                    if record.fence != fence {
                        return Err("the hook was replayed or claimed elsewhere".into());
                    }
                    // Events after the position that match nothing still hold the log back (it is trimmed only past
                    // every hook's position): a Begin moves past them, at most every few seconds unless many piled up.
                    let next = reader.hook_log(u64::MAX, 0).map(|log| log.next).unwrap_or(0);
                    let lag = next.saturating_sub(record.position + 1);
                    let stale = lag >= IDLE_LAG_EVENTS_MAX || (lag > 0 && last_begin.elapsed() >= IDLE_BEGIN_EVERY);
                    let waiting = record.pending as usize > running.len() || stale;
                    if record.paused.is_none() && waiting {
                        begin_at = Instant::now();
                    }
                }
            }
            () = tokio::time::sleep_until(begin_at) => {
                let room = spec.max_in_flight.saturating_sub(running.len() as u32).min(HOOK_BEGIN_COUNT_MAX);
                if room == 0 {
                    begin_at = Instant::now() + far;
                    continue;
                }
                let begin = HookCommand::Begin { name: name.to_string(), fence, most: room };
                last_begin = Instant::now();
                let Ok(begun) = tokio::time::timeout_at(claimed_until, context.propose(begin)).await else {
                    return Err("the claim lapsed while a Begin was in flight".into());
                };
                match begun {
                    Ok(HookResponse::Deliveries { deliveries, next_due_ms, more }) => {
                        // An attempt may run for the ack wait from the Begin's sending (the log's window opened no
                        // earlier), by this node's clock (the log's times are the leader's, and clocks differ), and
                        // is aborted if the claim lapses first (above). Counting the window and the claim from the
                        // answers instead let a late answer start an attempt after the next claimant's attempt of
                        // the same event (simulator seed 8, once the lease and read-write lock workloads joined).
                        let until = last_begin + Duration::from_millis(spec.ack_wait_ms);
                        let began = deliveries.len();
                        for delivery in deliveries {
                            delivered += 1;
                            running.spawn(attempt(context.clone(), spec.target.clone(), delivery, until));
                        }
                        begin_at = if more && began > 0 {
                            Instant::now()
                        } else if more {
                            // Skipped events that match nothing: go on, but never back to back with Begins that
                            // take nothing (each is a log entry).
                            Instant::now() + Duration::from_millis(MORE_EMPTY_BEGIN_PAUSE_MS)
                        } else if let Some(due) = next_due_ms {
                            // A retry's delay or an ack wait, by the log's clock; a little late beats a Begin too
                            // early that finds nothing due. A Begin that found nothing waits a while whatever the
                            // clocks say (this node's may run ahead of the leader's).
                            let wait = due.saturating_sub(context.clock.now_ms()) + 20;
                            let floor = if began == 0 { EMPTY_BEGIN_PAUSE_MS } else { 0 };
                            Instant::now() + Duration::from_millis(wait.max(floor))
                        } else {
                            Instant::now() + far
                        };
                    }
                    Ok(other) => return Err(format!("begin answered {other:?}")),
                    Err(error) if matches!(error.code, ErrorCode::Conflict | ErrorCode::NotFound) => {
                        return Err(format!("begin refused: {error}"));
                    }
                    Err(_) => begin_at = Instant::now() + Duration::from_millis(500),
                }
            }
        }
    }
}

/// Runs one attempt and answers it (a few tries while the log is unreachable, never past its ack wait: an answer
/// after that is refused anyway, and the attempt counts as failed).
async fn attempt(context: Arc<Context>, target: HookTarget, delivery: Delivery, until: Instant) {
    // A little of the ack wait is kept for the answer to reach the log.
    let limit = until.saturating_duration_since(Instant::now()).saturating_sub(Duration::from_millis(ANSWER_MARGIN_MS));
    let mut outcome = if limit.is_zero() {
        // The answer to the Begin came too late to run it at all: the attempt fails without running.
        context.runner.unrun(&delivery);
        Outcome::Nack("no time left in the attempt's ack wait (the Begin's answer came late)".into())
    } else {
        context.runner.run(&target, &delivery, limit).await
    };
    if crate::sim::planted_bug(crate::sim::PlantedBug::HookAckIgnoresOutcome) {
        outcome = Outcome::Ack;
    }
    let (name, seq, attempt, fence) = (delivery.hook.clone(), delivery.event.seq, delivery.attempt, delivery.fence);
    let command = match outcome {
        Outcome::Ack => HookCommand::Ack { name, seq, attempt, fence },
        Outcome::Nack(error) => HookCommand::Nack { name, seq, attempt, fence, error: bounded(error) },
        Outcome::Term(error) => HookCommand::Term { name, seq, attempt, fence, error: bounded(error) },
    };
    for _ in 0..5 {
        match context.propose(command.clone()).await {
            Ok(_) => return,
            Err(error) if error.code == ErrorCode::Conflict => {
                tracing::debug!(hook = %delivery.hook, seq, attempt, %error, "an answer came too late");
                return;
            }
            Err(_) if Instant::now() >= until => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn bounded(mut error: String) -> String {
    let limit = pando_protocol::limits::HOOK_ERROR_BYTES_MAX;
    if error.len() > limit {
        let mut cut = limit;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    error
}
