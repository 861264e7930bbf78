//! Child processes a node starts for users (shell hooks now, shell jobs next) and what keeps them from outliving it.
//!
//! Each command runs in a process group of its own; a [`GroupGuard`] kills the whole group when the run ends, overruns
//! or is given up, so a command's children never outlive it while the node lives. A node that dies with `kill -9`
//! runs no destructor, so a second process watches for it: the [`Reaper`], this node's own binary started with
//! [`REAPER_ARG`] in a process group of its own (a terminal's Ctrl-C does not reach it), reading which groups are live
//! from a pipe whose write end only the node holds. When the node dies, for any reason, the kernel closes that pipe;
//! the reaper sends `SIGTERM` to every group still registered, `SIGKILL` to those left after a grace, and exits.
//! This is the `heart` of Erlang/OTP in miniature, and why a hook or job command never runs on after its node died
//! (another node's rescued attempt may already be running it).
//!
//! The one window it cannot close is a node killed between starting a command and registering its group (a few
//! microseconds): that command runs to its own end.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The first argument that makes a node binary serve as the reaper of its parent.
pub const REAPER_ARG: &str = "--pando-reaper";

/// How long groups get between `SIGTERM` and `SIGKILL` once the node died.
pub const REAPER_GRACE: Duration = Duration::from_secs(1);

/// The node's side of the reaper: registers and releases process groups. Cloning shares one reaper.
#[derive(Clone, Default)]
pub struct Reaper {
    pipe: Arc<Mutex<Option<std::process::ChildStdin>>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(if self.is_running() { "Reaper(running)" } else { "Reaper(none)" })
    }
}

impl Reaper {
    /// No reaper: commands may outlive a crashed node (tests in one process, where there is no node binary).
    pub fn none() -> Reaper {
        Reaper::default()
    }

    /// Starts `program REAPER_ARG` (the node's own binary) as the reaper of this process.
    pub fn start(program: &std::path::Path) -> std::io::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(program)
            .arg(REAPER_ARG)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Reaper { pipe: Arc::new(Mutex::new(child.stdin.take())) })
    }

    /// Starts this process's own binary as its reaper (`/proc/self/exe`, which works even after an upgrade replaced
    /// the file).
    pub fn start_own() -> std::io::Result<Reaper> {
        let own = std::path::Path::new("/proc/self/exe");
        if own.exists() { Reaper::start(own) } else { Reaper::start(&std::env::current_exe()?) }
    }

    pub fn is_running(&self) -> bool {
        self.pipe.lock().is_ok_and(|pipe| pipe.is_some())
    }

    fn send(&self, line: String) {
        let Ok(mut pipe) = self.pipe.lock() else { return };
        if let Some(writer) = pipe.as_mut()
            && let Err(error) = writer.write_all(line.as_bytes())
        {
            tracing::warn!(%error, "the process reaper is gone: commands may now outlive a crash of this node");
            *pipe = None;
        }
    }

    /// Registers process group `group` until the guard is dropped; dropping it kills the group.
    pub fn guard(&self, group: u32) -> GroupGuard {
        self.send(format!("+{group}\n"));
        GroupGuard { group, reaper: self.clone() }
    }
}

/// A running command's process group: killed (`SIGKILL`) and released from the reaper when dropped.
pub struct GroupGuard {
    group: u32,
    reaper: Reaper,
}

impl GroupGuard {
    /// Sends `signal` to the whole group (it may be gone already).
    pub fn signal(&self, signal: Signal) {
        signal_group(self.group, signal);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
        self.reaper.send(format!("-{}\n", self.group));
    }
}

fn signal_group(group: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(group).ok().and_then(Pid::from_raw) {
        // The group may be gone already; nothing else to do then.
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

fn group_alive(group: u32) -> bool {
    i32::try_from(group)
        .ok()
        .and_then(Pid::from_raw)
        .is_some_and(|pid| rustix::process::test_kill_process_group(pid).is_ok())
}

/// The reaper's loop: reads `+group` and `-group` lines until the input ends (the node died or stopped), then ends
/// every group still registered. Lines it cannot read are skipped: only the node writes to this pipe.
pub fn serve(input: impl BufRead, grace: Duration) -> BTreeSet<u32> {
    let mut groups = BTreeSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (sign, number) = line.split_at(line.len().min(1));
        match (sign, number.parse::<u32>()) {
            ("+", Ok(group)) if group > 1 => {
                groups.insert(group);
            }
            ("-", Ok(group)) => {
                groups.remove(&group);
            }
            _ => {}
        }
    }
    for &group in &groups {
        signal_group(group, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while groups.iter().any(|&group| group_alive(group)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &group in &groups {
        signal_group(group, Signal::KILL);
    }
    groups
}

/// How long output pipes may stay open after the command exited (a child it left behind may hold them).
const OUTPUT_GRACE_MS: u64 = 100;

/// A command to run: `argv[0]` with the rest as arguments (no shell), `env` added to the node's environment.
#[derive(Clone, Debug, Default)]
pub struct Spawn {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<std::path::PathBuf>,
    /// Written to stdin (a command that does not read it is fine).
    pub stdin: Vec<u8>,
    /// Whether stdout is kept with stderr (else it goes nowhere).
    pub capture_stdout: bool,
    /// The last bytes of output kept.
    pub tail_max: usize,
    /// The first bytes of output kept whole (0: none).
    pub keep_max: usize,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    /// Killed by a signal it did not get from us.
    Signalled,
    /// It ran past its limit: `SIGTERM`, then `SIGKILL` after the grace, to its whole group.
    Overran,
    /// The caller gave it up (a cancelled job): ended like an overrun.
    Stopped,
    CannotStart(String),
    CannotWait(String),
}

/// What a run left.
#[derive(Clone, Debug)]
pub struct Ran {
    pub ended: Ended,
    /// The last [`Spawn::tail_max`] bytes of its output, as they came.
    pub tail: Vec<u8>,
    /// Bytes of output in all.
    pub output_bytes: u64,
    /// The first [`Spawn::keep_max`] bytes of its output.
    pub kept: Vec<u8>,
}

/// Runs `spawn` in a process group of its own registered with `reaper`, feeding stdin, keeping the tail of its
/// output and waiting for its exit at once (a command that writes much before it reads cannot block on us). Past
/// `limit`, or once `stop` resolves, the group gets `SIGTERM` and, `grace` later, `SIGKILL`; the group is killed
/// when the run ends in any case, so nothing it started outlives it.
pub async fn run(
    spawn: Spawn,
    reaper: &Reaper,
    limit: Duration,
    grace: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Ran {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(program) = spawn.argv.first() else {
        return Ran {
            ended: Ended::CannotStart("no command".into()),
            tail: Vec::new(),
            output_bytes: 0,
            kept: Vec::new(),
        };
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(&spawn.argv[1..])
        .envs(spawn.env.iter().map(|(name, value)| (name, value)))
        .stdin(std::process::Stdio::piped())
        .stdout(if spawn.capture_stdout { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spawn.cwd {
        command.current_dir(cwd);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let ended = Ended::CannotStart(format!("cannot start {program:?}: {error}"));
            return Ran { ended, tail: Vec::new(), output_bytes: 0, kept: Vec::new() };
        }
    };
    let guard = child.id().map(|group| reaper.guard(group));
    let output = Arc::new(Mutex::new((Vec::<u8>::new(), 0u64, Vec::<u8>::new())));
    let drain = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        let output = output.clone();
        let (tail_max, keep_max) = (spawn.tail_max, spawn.keep_max);
        tokio::spawn(async move {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 8192];
            while let Ok(read) = pipe.read(&mut chunk).await {
                if read == 0 {
                    break;
                }
                let Ok(mut output) = output.lock() else { break };
                output.0.extend_from_slice(&chunk[..read]);
                output.1 += read as u64;
                let room = keep_max.saturating_sub(output.2.len()).min(read);
                output.2.extend_from_slice(&chunk[..room]);
                if output.0.len() > tail_max {
                    let excess = output.0.len() - tail_max;
                    output.0.drain(..excess);
                }
            }
        })
    };
    let readers = [
        drain(child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
        drain(child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
    ];
    let stdin = child.stdin.take();
    let input = spawn.stdin;
    let feed = async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&input).await;
        }
    };
    let waited = async { tokio::join!(feed, child.wait()).1 };
    tokio::pin!(waited);
    enum Wake {
        Exit(std::io::Result<std::process::ExitStatus>),
        Overrun,
        Stop,
    }
    let wake = tokio::select! {
        biased; // an exit that came with the deadline counts as an exit; and replayable from a seed
        status = &mut waited => Wake::Exit(status),
        () = tokio::time::sleep(limit) => Wake::Overrun,
        () = stop => Wake::Stop,
    };
    let ended = match wake {
        Wake::Exit(Ok(status)) => status.code().map_or(Ended::Signalled, Ended::Exited),
        Wake::Exit(Err(error)) => Ended::CannotWait(error.to_string()),
        Wake::Overrun | Wake::Stop => {
            // Ask the whole group to stop, then wait out the grace before the guard kills it.
            if let Some(guard) = &guard {
                guard.signal(Signal::TERM);
            }
            let _ = tokio::time::timeout(grace, &mut waited).await;
            if matches!(wake, Wake::Stop) { Ended::Stopped } else { Ended::Overran }
        }
    };
    drop(guard);
    for mut reader in readers {
        if tokio::time::timeout(Duration::from_millis(OUTPUT_GRACE_MS), &mut reader).await.is_err() {
            reader.abort();
        }
    }
    let (tail, output_bytes, kept) = output.lock().map(|output| output.clone()).unwrap_or_default();
    Ran { ended, tail, output_bytes, kept }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep").arg("600").process_group(0).spawn().expect("sleep starts")
    }

    #[test]
    fn the_reaper_ends_the_groups_still_registered_when_its_input_ends() {
        let (mut kept, mut released) = (sleeper(), sleeper());
        let input = format!("+{}\n+{}\nnonsense\n+1\n-{}\n", kept.id(), released.id(), released.id());
        let ended = serve(std::io::Cursor::new(input), Duration::from_millis(500));
        assert_eq!(ended, BTreeSet::from([kept.id()]), "init's group and released groups are never signalled");
        let status = kept.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(Signal::TERM.as_raw()));
        assert!(released.try_wait().unwrap().is_none(), "a released group is left alone");
        released.kill().unwrap();
        released.wait().unwrap();
    }

    #[test]
    fn a_group_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut stubborn = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 600 & wait; sleep 600"])
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        serve(std::io::Cursor::new(format!("+{}\n", stubborn.id())), Duration::from_millis(300));
        let status = stubborn.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(Signal::KILL.as_raw()));
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn a_guard_kills_its_group_when_dropped() {
        let mut child = sleeper();
        drop(Reaper::none().guard(child.id()));
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(Signal::KILL.as_raw()));
    }
}
