//! Shell hooks: one process per delivery attempt, run by the node that delivers the hook.
//!
//! The command is `argv` as given (no shell parsing), or `sh -c <line>` when the hook asked for a shell. The event is
//! one line of JSON on stdin and in the environment (`PANDO_HOOK`, `PANDO_SUBJECT`, `PANDO_SEQ`, `PANDO_ATTEMPT`,
//! `PANDO_FENCE`, `PANDO_REVISION`, `PANDO_TIME_MS`). Exit status 0 acks; [`EXIT_TERM`] terminates the event (it goes
//! to the dead-letter list at once: the command says it can never succeed); any other status, a signal, or a run
//! past the hook's timeout (or the attempt's ack wait, whichever comes first) nacks, with the tail of stderr as the
//! error. The command runs in a process group of its own, and the whole group is killed when it overruns or the node
//! gives the delivery up, so a hook's children never outlive it; the node's [`Reaper`] kills it if the node dies
//! first (`kill -9` included), so a command never runs on beside the attempt another node takes over. At most
//! [`ExecConfig::concurrency`] commands run at once per node; the rest wait their turn within their ack wait.

use std::sync::Arc;
use std::time::Duration;

use pando_protocol::hook::durable::Delivery;
use pando_protocol::limits::{HOOK_EXEC_CONCURRENCY_DEFAULT, HOOK_EXEC_STDERR_BYTES_MAX};
use tokio::sync::Semaphore;

use crate::process::{self, Ended, Reaper, Spawn};

/// The exit status with which a command terminates its event (like sysexits' `EX_DATAERR`, 65).
pub const EXIT_TERM: i32 = 65;

/// How shell hooks run on this node.
#[derive(Clone)]
pub struct ExecConfig {
    /// Whether this node runs commands at all (a node may refuse: its deliveries then nack, and another voter whose
    /// claim comes next runs them).
    pub enabled: bool,
    pub concurrency: Arc<Semaphore>,
    /// Ends the commands still running when the node dies.
    pub reaper: Reaper,
}

impl ExecConfig {
    /// Runs at most `concurrency` commands at once (0: none at all).
    pub fn new(concurrency: usize, reaper: Reaper) -> ExecConfig {
        ExecConfig { enabled: concurrency > 0, concurrency: Arc::new(Semaphore::new(concurrency)), reaper }
    }
}

impl Default for ExecConfig {
    fn default() -> ExecConfig {
        ExecConfig::new(HOOK_EXEC_CONCURRENCY_DEFAULT, Reaper::none())
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
    let argv = if shell { vec!["/bin/sh".into(), "-c".into(), argv[0].clone()] } else { argv.to_vec() };
    let event = &delivery.event;
    let env = [
        ("PANDO_HOOK", delivery.hook.clone()),
        ("PANDO_SUBJECT", event.subject.clone()),
        ("PANDO_SEQ", event.seq.to_string()),
        ("PANDO_ATTEMPT", delivery.attempt.to_string()),
        ("PANDO_FENCE", delivery.fence.to_string()),
        ("PANDO_REVISION", event.revision.to_string()),
        ("PANDO_TIME_MS", event.time_ms.to_string()),
    ];
    let spawn = Spawn {
        argv,
        env: env.into_iter().map(|(name, value)| (name.to_string(), value)).collect(),
        cwd: None,
        stdin: pando_protocol::hook::json::to_json_line(event),
        capture_stdout: false,
        tail_max: HOOK_EXEC_STDERR_BYTES_MAX,
        keep_max: 0,
    };
    // The attempt's time is up when the limit passes: no grace, the group is killed at once.
    let ran = process::run(spawn, &config.reaper, limit, Duration::ZERO, std::future::pending()).await;
    let stderr = String::from_utf8_lossy(&ran.tail).trim().to_string();
    let said = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
    match ran.ended {
        Ended::Exited(0) => Outcome::Ack,
        Ended::Exited(EXIT_TERM) => Outcome::Term(format!("exit status {EXIT_TERM} (terminate){said}")),
        Ended::Exited(code) => Outcome::Nack(format!("exit status {code}{said}")),
        Ended::Signalled => Outcome::Nack(format!("killed by a signal{said}")),
        Ended::Overran | Ended::Stopped => {
            Outcome::Nack(format!("ran past {} ms; its process group was killed", limit.as_millis()))
        }
        Ended::CannotStart(error) => Outcome::Nack(error),
        Ended::CannotWait(error) => Outcome::Nack(format!("cannot wait for the command: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use pando_protocol::hook::{EventBody, HookEvent};

    use super::*;

    fn delivery(data: &[u8]) -> Delivery {
        Delivery {
            hook: "audit".into(),
            attempt: 2,
            fence: 7,
            ack_by_ms: 0,
            event: HookEvent {
                seq: 42,
                subject: "deploy.started".into(),
                time_ms: 1,
                revision: 3,
                body: EventBody::User { data: data.to_vec().into() },
            },
        }
    }

    async fn sh(line: &str, limit_ms: u64) -> (Outcome, Duration) {
        let started = tokio::time::Instant::now();
        let outcome =
            run(&ExecConfig::default(), &[line.to_string()], true, &delivery(b"{}"), Duration::from_millis(limit_ms))
                .await;
        (outcome, started.elapsed())
    }

    #[tokio::test]
    async fn the_event_arrives_on_stdin_and_in_the_environment_and_the_exit_status_decides() {
        let check = r#"read line; case "$line" in *'"seq":42'*'"type":"user"'*) ;; *) exit 9;; esac; [ "$PANDO_SEQ" = 42 ] && [ "$PANDO_ATTEMPT" = 2 ] && [ "$PANDO_FENCE" = 7 ] && [ "$PANDO_HOOK" = audit ] && [ "$PANDO_SUBJECT" = deploy.started ]"#;
        assert_eq!(sh(check, 5_000).await.0, Outcome::Ack);
        assert_eq!(sh("echo why >&2; exit 3", 5_000).await.0, Outcome::Nack("exit status 3: why".into()));
        assert!(matches!(sh("exit 65", 5_000).await.0, Outcome::Term(_)));
        let missing =
            run(&ExecConfig::default(), &["/nonexistent/hook".into()], false, &delivery(b"{}"), Duration::from_secs(5))
                .await;
        assert!(matches!(missing, Outcome::Nack(error) if error.contains("cannot start")));
    }

    #[tokio::test]
    async fn an_overrunning_command_has_its_process_group_killed() {
        let marker = tempfile::NamedTempFile::new().unwrap();
        let path = marker.path().display().to_string();
        let line = format!("(sleep 1; echo child-outlived >> {path}) & sleep 30");
        let (outcome, took) = sh(&line, 300).await;
        assert!(matches!(outcome, Outcome::Nack(error) if error.contains("killed")), "took {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(std::fs::read_to_string(marker.path()).unwrap(), "", "the background child was killed too");
    }

    #[tokio::test]
    async fn a_command_that_leaves_stderr_open_or_floods_it_before_reading_is_judged_by_its_exit() {
        // A child keeps stderr open after the command exits 0.
        let (outcome, took) = sh("sleep 5 >&2 & exit 0", 3_000).await;
        assert_eq!(outcome, Outcome::Ack);
        assert!(took < Duration::from_secs(2), "{took:?}");
        // 200 KiB of stderr before the input is read: no deadlock, and only the tail is kept.
        let big = vec![b'x'; 100 * 1024];
        let line = "head -c 204800 /dev/zero | tr '\\0' e >&2; cat > /dev/null; exit 1";
        let outcome =
            run(&ExecConfig::default(), &[line.to_string()], true, &delivery(&big), Duration::from_secs(10)).await;
        let Outcome::Nack(error) = outcome else { panic!("{outcome:?}") };
        assert!(error.len() <= HOOK_EXEC_STDERR_BYTES_MAX + 64, "{} bytes", error.len());
    }
}
