//! The job service: job commands through the log, job reads from the applied state after a read index. Clients reach
//! it through the RPC layer; the node's job workers claim, heartbeat and finish through it too.

use std::time::Duration;

use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::WireError;
use pando_protocol::job::{JobCommand, JobQuery, JobQueryResponse, JobReply, JobRequest, JobResponse};

use crate::mesh::Proposer;
use crate::raft::RaftHandle;
use crate::storage_actor::StorageHandle;

#[derive(Clone)]
pub struct JobService {
    raft: RaftHandle,
    storage: StorageHandle,
    /// For this node's workers: their commands reach the leader from any member.
    proposer: Proposer,
}

impl JobService {
    pub fn new(raft: RaftHandle, storage: StorageHandle, proposer: Proposer) -> JobService {
        JobService { raft, storage, proposer }
    }

    /// Serves one request (already authorised).
    pub async fn execute(&self, request: JobRequest, timeout: Duration) -> Result<JobReply, WireError> {
        request.validate()?;
        match request {
            JobRequest::Command(command) => self.command(command, timeout).await.map(JobReply::Command),
            JobRequest::Query(query) => self.query(query, timeout).await.map(JobReply::Query),
        }
    }

    /// Proposes one job command and answers its result.
    pub async fn command(&self, command: JobCommand, timeout: Duration) -> Result<JobResponse, WireError> {
        command.validate()?;
        match self.raft.propose(Command::Job(command), timeout).await? {
            CommandOutput::Job(response) => Ok(response),
            other => Err(WireError::internal(format!("a job command answered {other:?}"))),
        }
    }

    /// Proposes one command of this node's workers: here when this node leads, else forwarded to the leader over the
    /// actor mesh as the node's own (`forward`), or answered `NOT_LEADER`.
    pub async fn worker_command(
        &self,
        command: JobCommand,
        forward: bool,
        timeout: Duration,
    ) -> Result<JobResponse, WireError> {
        command.validate()?;
        let command = Command::Job(command);
        let output = if forward {
            self.proposer.propose_anywhere(command, timeout).await?
        } else {
            self.raft.propose(command, timeout).await?
        };
        match output {
            CommandOutput::Job(response) => Ok(response),
            other => Err(WireError::internal(format!("a job command answered {other:?}"))),
        }
    }

    /// A linearizable read of the jobs.
    pub async fn query(&self, query: JobQuery, timeout: Duration) -> Result<JobQueryResponse, WireError> {
        query.validate()?;
        self.raft.linearize(timeout).await?;
        self.storage.read(timeout, move |reader| reader.jobs(&query)).await?
    }
}

/// The job service as this node's workers reach the log.
pub struct WorkerLog {
    pub service: JobService,
    /// Whether a follower's workers forward to the leader (not in the simulator: see `JobsConfig::followers_claim`).
    pub forward: bool,
}

impl crate::jobs::JobLog for WorkerLog {
    fn propose(
        &self,
        command: JobCommand,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<JobResponse, WireError>> {
        let (service, forward) = (self.service.clone(), self.forward);
        Box::pin(async move { service.worker_command(command, forward, timeout).await })
    }
}

/// Job outputs larger than their tail, as blobs added by this node (unpinned: the state machine protects one once its
/// result is recorded, so the output of a refused result is collected after the grace).
pub struct BlobOutputs {
    pub blobs: super::BlobService,
    pub timeout: Duration,
}

impl crate::jobs::OutputStore for BlobOutputs {
    fn put(
        &self,
        bytes: Vec<u8>,
    ) -> futures::future::BoxFuture<'static, Result<pando_protocol::blob::BlobHash, WireError>> {
        let (blobs, timeout) = (self.blobs.clone(), self.timeout);
        Box::pin(async move { blobs.add_bytes_with(bytes, false, timeout).await })
    }
}
