//! Jobs from the client's side: typed calls for submits, reads and the admin's commands.

use pando_protocol::envelope::{Request, Response};
use pando_protocol::job::{
    CronRecord, Job, JobCommand, JobQuery, JobQueryResponse, JobReply, JobRequest, JobResponse, JobSpec, Missed,
    QueueStats, StateName, WorkerPool,
};

use crate::client::{Client, unexpected};
use crate::error::ClientError;

/// What a submit answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub id: u64,
    /// A job holding the spec's unique key answered instead of a new one.
    pub duplicate: bool,
    pub state: StateName,
}

impl Client {
    async fn job_command(&self, command: JobCommand) -> Result<JobResponse, ClientError> {
        match self.request(Request::Job(JobRequest::Command(command))).await? {
            Response::Job(JobReply::Command(response)) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    async fn job_query(&self, query: JobQuery) -> Result<JobQueryResponse, ClientError> {
        match self.request(Request::Job(JobRequest::Query(query))).await? {
            Response::Job(JobReply::Query(response)) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn job_submit(&self, spec: JobSpec) -> Result<Submitted, ClientError> {
        match self.job_command(JobCommand::Submit { spec }).await? {
            JobResponse::Submitted { id, duplicate, state } => Ok(Submitted { id, duplicate, state }),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn job(&self, id: u64) -> Result<Job, ClientError> {
        match self.job_query(JobQuery::Get { id }).await? {
            JobQueryResponse::Job(job) => Ok(*job),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of jobs by id after `after`, in `state` and `queue` when given (payloads and outputs left out);
    /// answers whether more are left.
    pub async fn job_list(
        &self,
        state: Option<StateName>,
        queue: Option<String>,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<Job>, bool), ClientError> {
        match self.job_query(JobQuery::List { state, queue, after, limit }).await? {
            JobQueryResponse::List { jobs, more } => Ok((jobs, more)),
            other => Err(unexpected(&other)),
        }
    }

    /// Every node's worker pool as the node last reported it.
    pub async fn job_pools(&self) -> Result<Vec<WorkerPool>, ClientError> {
        match self.job_query(JobQuery::Pools).await? {
            JobQueryResponse::Pools(pools) => Ok(pools),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn job_stats(&self) -> Result<Vec<QueueStats>, ClientError> {
        match self.job_query(JobQuery::Stats).await? {
            JobQueryResponse::Stats(stats) => Ok(stats),
            other => Err(unexpected(&other)),
        }
    }

    /// Cancels (`JobCommand::Cancel`) or retries (`JobCommand::Retry`) one job; answers it as it is now.
    pub async fn job_change(&self, command: JobCommand) -> Result<Job, ClientError> {
        match self.job_command(command).await? {
            JobResponse::Job(job) => Ok(*job),
            other => Err(unexpected(&other)),
        }
    }

    /// A redrive or purge: how many jobs it took, and whether more are left.
    pub async fn job_sweep(&self, command: JobCommand) -> Result<(u64, bool), ClientError> {
        match self.job_command(command).await? {
            JobResponse::Count { count, more } => Ok((count, more)),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn cron_create(
        &self,
        name: &str,
        schedule: &str,
        missed: Missed,
        spec: JobSpec,
    ) -> Result<CronRecord, ClientError> {
        let command = JobCommand::CronCreate { name: name.into(), schedule: schedule.into(), missed, spec };
        match self.job_command(command).await? {
            JobResponse::Cron(record) => Ok(*record),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn cron_delete(&self, name: &str) -> Result<(), ClientError> {
        self.job_command(JobCommand::CronDelete { name: name.into() }).await.map(|_| ())
    }

    pub async fn cron_list(&self) -> Result<Vec<CronRecord>, ClientError> {
        match self.job_query(JobQuery::CronList).await? {
            JobQueryResponse::Crons(crons) => Ok(crons),
            other => Err(unexpected(&other)),
        }
    }
}
