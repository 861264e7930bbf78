//! A pool: N identical workers under one generic supervisor. Each worker is the child `"0"` … `"N-1"`, built by one
//! function from its index; a worker that fails is replaced alone (one_for_one), counted against the pool's restart
//! intensity, and past it the pool fails, so its owner learns that the workers as a whole are unhealthy (a plugin is
//! quarantined; a job queue can stop taking work). The pool stops by itself once every worker ended for good (a
//! transient worker that finished normally, as plugin instances do when their generation's queue closes).
//!
//! Used by the plugins (one pool per running generation, a worker per extism instance) and, next, by job workers.

use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorRef, SpawnErr};

use super::intensity::Intensity;
use super::spec::{ChildSpec, Restart, Strategy, SupervisorOptions};
use super::supervisor::{ChildError, Supervisor, SupervisorArgs, SupervisorMsg, SupervisorStatus};

/// How long a pool may take to list its workers.
const POOL_STATUS_TIMEOUT_MS: u64 = 2_000;

/// Builds the worker with a given index.
pub type WorkerFn = Arc<dyn Fn(usize) -> ChildSpec + Send + Sync>;

/// The description of a pool: its name, its size, the intensity its workers' restarts are held to, and its workers.
#[derive(Clone)]
pub struct Pool {
    name: String,
    size: usize,
    intensity: Intensity,
    worker: WorkerFn,
}

impl Pool {
    pub fn new(
        name: impl Into<String>,
        size: usize,
        intensity: Intensity,
        worker: impl Fn(usize) -> ChildSpec + Send + Sync + 'static,
    ) -> Pool {
        Pool { name: name.into(), size, intensity, worker: Arc::new(worker) }
    }

    /// The supervisor that runs the pool.
    pub fn supervisor_args(&self) -> SupervisorArgs {
        SupervisorArgs {
            name: self.name.clone(),
            options: SupervisorOptions::new(Strategy::OneForOne, self.intensity.restarts_max, self.intensity.period)
                .with_auto_shutdown(),
            children: (0..self.size).map(|index| self.worker_spec(index)).collect(),
        }
    }

    /// The pool as a child of another supervisor.
    pub fn child_spec(&self, id: impl Into<String>, restart: Restart) -> ChildSpec {
        ChildSpec::new(id, restart, Supervisor, self.supervisor_args())
    }

    /// Starts the pool linked to `parent`, which receives its exit: a normal one once every worker ended, a failure
    /// past the intensity. Fails when a worker does not start (the others are stopped first).
    pub async fn spawn_linked(&self, parent: ActorCell) -> Result<ActorRef<SupervisorMsg>, SpawnErr> {
        let (pool, _) = Actor::spawn_linked(None, Supervisor, self.supervisor_args(), parent).await?;
        Ok(pool)
    }

    /// Grows or shrinks the running `pool` to `size` workers: missing indices below `size` are started, workers at
    /// or past it stopped (highest first).
    pub async fn resize(&self, pool: &ActorRef<SupervisorMsg>, size: usize) -> Result<(), PoolError> {
        let status = status(pool).await.ok_or(PoolError::Unavailable)?;
        let mut present: Vec<usize> = status.children.iter().filter_map(|child| child.id.parse().ok()).collect();
        present.sort_unstable();
        for index in present.iter().rev().filter(|index| **index >= size) {
            ractor::call!(pool, SupervisorMsg::StopChild, index.to_string())
                .map_err(|_| PoolError::Unavailable)?
                .map_err(PoolError::Child)?;
        }
        for index in (0..size).filter(|index| !present.contains(index)) {
            ractor::call!(pool, SupervisorMsg::StartChild, self.worker_spec(index))
                .map_err(|_| PoolError::Unavailable)?
                .map_err(PoolError::Child)?;
        }
        Ok(())
    }

    fn worker_spec(&self, index: usize) -> ChildSpec {
        let mut spec = (self.worker)(index);
        spec.id = index.to_string();
        spec
    }
}

/// Why a pool could not be resized.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the pool is not running")]
    Unavailable,
    #[error(transparent)]
    Child(ChildError),
}

/// The running pool's workers, restarts and last failure (`None`: it is gone or did not answer in time).
pub async fn status(pool: &ActorRef<SupervisorMsg>) -> Option<SupervisorStatus> {
    ractor::call_t!(pool, SupervisorMsg::Status, POOL_STATUS_TIMEOUT_MS).ok()
}
