//! Read-index rounds shared by every linearizable read waiting at once.
//!
//! A linearizable read needs the leader to confirm, with a quorum, that it still leads, and then to apply everything
//! committed before the read arrived (openraft's `ensure_linearizable`: one heartbeat round to every follower). One
//! round per read made 64 concurrent readers cost 64 rounds; here one task per Raft core runs one round at a time, for
//! every reader that was waiting when it began, as etcd's `linearizableReadLoop` does.
//!
//! **Invariant:** a reader is answered only by a round that began after the reader arrived, so the round's read
//! index covers every write acknowledged before the read (a round already under way when it arrived may have read
//! the commit index before that write committed).

use tokio::sync::{mpsc, oneshot};

use super::type_config::{LogId, NodeId, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use pando_protocol::cluster::MemberNode;
use pando_protocol::error::{ErrorCode, WireError};

/// Readers waiting for the next round; more are answered `BUSY`.
pub const READ_ROUND_WAITERS_MAX: usize = 16 * 1024;
/// Longest one round may take before its readers are answered `TIMEOUT` and the next round begins, so a round stuck
/// in openraft holds up no reader that came after it.
pub const READ_ROUND_TIMEOUT_MS: u64 = 5_000;

/// What a round answers: openraft's `ensure_linearizable` outcome (the read log id, applied on this node).
pub type RoundOutcome = Result<Option<LogId>, RaftError<NodeId, CheckIsLeaderError<NodeId, MemberNode>>>;

/// Where readers queue for the next round of one Raft core. The round task ends with the last clone.
#[derive(Clone)]
pub struct ReadRounds {
    intake: mpsc::Sender<oneshot::Sender<Answer>>,
}

/// A round's outcome as each reader gets it.
type Answer = Result<RoundOutcome, WireError>;

impl ReadRounds {
    /// Starts the round task of `raft`.
    pub fn start(raft: Raft) -> ReadRounds {
        ReadRounds::with_round(move || {
            let raft = raft.clone();
            async move { raft.ensure_linearizable().await }
        })
    }

    /// Starts a round task that runs `round` for each round (openraft's `ensure_linearizable`, or a test's stand-in).
    fn with_round<F, R>(round: F) -> ReadRounds
    where
        F: Fn() -> R + Send + 'static,
        R: std::future::Future<Output = RoundOutcome> + Send + 'static,
    {
        let (intake, waiting) = mpsc::channel(READ_ROUND_WAITERS_MAX);
        tokio::spawn(run_rounds(round, waiting));
        ReadRounds { intake }
    }

    /// Waits for a round that begins after this call, and answers its outcome. `BUSY` when too many wait,
    /// `UNAVAILABLE` once Raft stopped.
    pub async fn confirm(&self) -> Result<RoundOutcome, WireError> {
        let (answer, answered) = oneshot::channel();
        self.intake.try_send(answer).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                WireError::new(ErrorCode::Busy, "too many linearizable reads waiting, retry later")
            }
            mpsc::error::TrySendError::Closed(_) => WireError::new(ErrorCode::Unavailable, "raft stopped"),
        })?;
        answered.await.map_err(|_| WireError::new(ErrorCode::Unavailable, "raft stopped"))?
    }
}

/// One round at a time: takes every reader queued so far, runs one round, answers them all.
async fn run_rounds<F, R>(round: F, mut waiting: mpsc::Receiver<oneshot::Sender<Answer>>)
where
    F: Fn() -> R,
    R: std::future::Future<Output = RoundOutcome>,
{
    let mut readers = Vec::new();
    let timeout = std::time::Duration::from_millis(READ_ROUND_TIMEOUT_MS);
    while waiting.recv_many(&mut readers, READ_ROUND_WAITERS_MAX).await > 0 {
        let outcome = tokio::time::timeout(timeout, round())
            .await
            .map_err(|_| WireError::new(ErrorCode::Timeout, "no read-index round completed in time"));
        for reader in readers.drain(..) {
            let _ = reader.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A stand-in round: numbered from 1, each answering its number as the read index, held until `release` lets it
    /// finish (one permit per round).
    fn counted_rounds(release: Arc<tokio::sync::Semaphore>) -> (ReadRounds, Arc<AtomicU64>) {
        let started = Arc::new(AtomicU64::new(0));
        let counter = started.clone();
        let rounds = ReadRounds::with_round(move || {
            let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let release = release.clone();
            async move {
                release.acquire().await.expect("open").forget();
                Ok(Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), number)))
            }
        });
        (rounds, started)
    }

    fn index(answer: Result<RoundOutcome, WireError>) -> u64 {
        answer.expect("answered").expect("leader").expect("read index").index
    }

    // On a paused clock: the sleeps below only let the other tasks run, they wait for no wall-clock time.
    #[tokio::test(start_paused = true)]
    async fn readers_arriving_during_a_round_share_the_next_one_and_never_take_the_running_ones_answer() {
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (rounds, started) = counted_rounds(release.clone());
        let first = tokio::spawn({
            let rounds = rounds.clone();
            async move { rounds.confirm().await }
        });
        // Round 1 is under way (it holds the reader that came first) before the others arrive.
        while started.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let later: Vec<_> = (0..50)
            .map(|_| {
                let rounds = rounds.clone();
                tokio::spawn(async move { rounds.confirm().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "no second round while the first runs");
        release.add_permits(2);
        assert_eq!(index(first.await.unwrap()), 1);
        for reader in later {
            assert_eq!(index(reader.await.unwrap()), 2, "a reader that came during round 1 is answered by round 2");
        }
        assert_eq!(started.load(Ordering::SeqCst), 2, "fifty readers cost one round");
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_that_never_ends_answers_timeout_and_the_next_round_serves_later_readers() {
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (rounds, started) = counted_rounds(release.clone());
        let stuck = rounds.confirm().await;
        assert_eq!(stuck.map(|_| ()).map_err(|error| error.code), Err(ErrorCode::Timeout));
        release.add_permits(1);
        assert_eq!(index(rounds.confirm().await), 2);
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn readers_beyond_the_bound_are_told_busy() {
        let (rounds, _) = counted_rounds(Arc::new(tokio::sync::Semaphore::new(0)));
        // On this one-thread runtime the round task has not run yet: each poll queues one reader.
        let mut queued = Vec::new();
        for _ in 0..READ_ROUND_WAITERS_MAX {
            let mut reader = Box::pin(rounds.confirm());
            assert!(futures::poll!(reader.as_mut()).is_pending());
            queued.push(reader);
        }
        let refused = rounds.confirm().await;
        assert_eq!(refused.map(|_| ()).map_err(|error| error.code), Err(ErrorCode::Busy));
    }
}
