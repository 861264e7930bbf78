//! Shell hooks: one process per delivery attempt, run by the node that delivers the hook.
//!
//! The command is `argv` as given (no shell parsing), or `sh -c <line>` when the hook asked for a shell. The event is
//! one line of JSON on stdin and in the environment (`PANDO_HOOK`, `PANDO_SUBJECT`, `PANDO_SEQ`, `PANDO_ATTEMPT`,
//! `PANDO_FENCE`, `PANDO_REVISION`, `PANDO_TIME_MS`). Exit status 0 acks; [`EXIT_TERM`] terminates the event (it goes
//! to the dead-letter list at once: the command says it can never succeed); any other status, a signal, or a run
//! past the hook's timeout (or the attempt's ack wait, whichever comes first) nacks, with the tail of stderr as the
//! error. The command runs in a process group of its own, and the whole group is killed when it overruns or the node
//! gives the delivery up, so a hook's children never outlive it. At most
//! [`ExecConfig::concurrency`] commands run at once per node; the rest wait their turn within their ack wait.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::hook::durable::Delivery;
use pando_protocol::limits::{HOOK_EXEC_CONCURRENCY_DEFAULT, HOOK_EXEC_STDERR_BYTES_MAX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// The exit status with which a command terminates its event (like sysexits' `EX_DATAERR`, 65).
pub const EXIT_TERM: i32 = 65;

/// How shell hooks run on this node.
#[derive(Clone)]
pub struct ExecConfig {
    /// Whether this node runs commands at all (a node may refuse: its deliveries then nack, and another voter whose
    /// claim comes next runs them).
    pub enabled: bool,
    pub concurrency: Arc<Semaphore>,
}

impl Default for ExecConfig {
    fn default() -> ExecConfig {
        ExecConfig { enabled: true, concurrency: Arc::new(Semaphore::new(HOOK_EXEC_CONCURRENCY_DEFAULT)) }
    }
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Nack(String),
    Term(String),
}

/// Runs `argv` for `delivery` within `limit`.
pub async fn run(config: &ExecConfig, argv: &[String], shell: bool, delivery: &Delivery, limit: Duration) -> Outcome {
    if !config.enabled {
        return Outcome::Nack("this node runs no shell hooks".into());
    }
    let started = tokio::time::Instant::now();
    let Ok(_permit) = tokio::time::timeout(limit, config.concurrency.clone().acquire_owned()).await else {
        return Outcome::Nack(format!("no shell slot on this node within {} ms", limit.as_millis()));
    };
    let Ok(_permit) = _permit else { return Outcome::Nack("the node is stopping".into()) };
    let limit = limit.saturating_sub(started.elapsed());
    let mut command = if shell {
        let mut command = tokio::process::Command::new("/bin/sh");
        command.arg("-c").arg(&argv[0]);
        command
    } else {
        let mut command = tokio::process::Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
    };
    let event = &delivery.event;
    command
        .env("PANDO_HOOK", &delivery.hook)
        .env("PANDO_SUBJECT", &event.subject)
        .env("PANDO_SEQ", event.seq.to_string())
        .env("PANDO_ATTEMPT", delivery.attempt.to_string())
        .env("PANDO_FENCE", delivery.fence.to_string())
        .env("PANDO_REVISION", event.revision.to_string())
        .env("PANDO_TIME_MS", event.time_ms.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return Outcome::Nack(format!("cannot start {:?}: {error}", argv[0])),
    };
    let group = child.id();
    let guard = GroupGuard(group);
    let input = pando_protocol::hook::json::to_json_line(event);
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let run = async {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its input is fine.
            let _ = stdin.write_all(&input).await;
        }
        drop(stdin.take());
        let mut tail = Vec::new();
        if let Some(stderr) = stderr.as_mut() {
            let mut chunk = [0u8; 4096];
            while let Ok(read) = stderr.read(&mut chunk).await {
                if read == 0 {
                    break;
                }
                tail.extend_from_slice(&chunk[..read]);
                if tail.len() > HOOK_EXEC_STDERR_BYTES_MAX {
                    tail.drain(..tail.len() - HOOK_EXEC_STDERR_BYTES_MAX);
                }
            }
        }
        (child.wait().await, tail)
    };
    let outcome = match tokio::time::timeout(limit, run).await {
        Ok((Ok(status), tail)) => {
            let stderr = String::from_utf8_lossy(&tail).trim().to_string();
            let said = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
            match status.code() {
                Some(0) => Outcome::Ack,
                Some(EXIT_TERM) => Outcome::Term(format!("exit status {EXIT_TERM} (terminate){said}")),
                Some(code) => Outcome::Nack(format!("exit status {code}{said}")),
                None => Outcome::Nack(format!("killed by a signal{said}")),
            }
        }
        Ok((Err(error), _)) => Outcome::Nack(format!("cannot wait for the command: {error}")),
        Err(_) => Outcome::Nack(format!("ran past {} ms; its process group was killed", limit.as_millis())),
    };
    drop(guard);
    outcome
}

/// Kills a command's process group when dropped (it ended, overran, or the delivery was given up).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
            // The group may be gone already; nothing else to do then.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}
