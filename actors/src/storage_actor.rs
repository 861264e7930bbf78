//! The StorageActor: owns the node's redb database for its lifetime and publishes the stores to the directory.
//!
//! It is the first child of the node's root supervisor (rest_for_one): if it restarts, everything that used the old
//! database handle restarts after it.

use std::path::PathBuf;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::directory::Directory;
use crate::storage;

#[derive(Clone, Copy, Debug, Default)]
pub struct StorageActor;

#[derive(Clone)]
pub struct StorageArgs {
    pub dir: PathBuf,
    pub directory: Directory,
    /// The simulator's disk, instead of the file system (snapshot files still go under `dir`).
    pub disk: Option<storage::SimDisk>,
}

pub enum StorageMsg {
    Status(RpcReplyPort<StorageStatus>),
    /// Fault injection: the actor panics; its supervisor restarts it and everything started after it.
    InjectPanic,
}

impl ractor::Message for StorageMsg {}

#[derive(Clone, Debug, Serialize)]
pub struct StorageStatus {
    pub dir: PathBuf,
    pub database_bytes: u64,
}

impl Actor for StorageActor {
    type Msg = StorageMsg;
    type State = StorageArgs;
    type Arguments = StorageArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<StorageMsg>,
        args: StorageArgs,
    ) -> Result<StorageArgs, ActorProcessingErr> {
        let dir = args.dir.clone();
        let stores = match args.disk.clone() {
            Some(disk) => storage::open_simulated(&dir, disk)?,
            None => tokio::task::spawn_blocking(move || storage::open(&dir)).await??,
        };
        args.directory.set_stores(stores);
        tracing::info!(dir = %args.dir.display(), "storage open");
        Ok(args)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<StorageMsg>,
        state: &mut StorageArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.directory.clear_stores();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<StorageMsg>,
        message: StorageMsg,
        state: &mut StorageArgs,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            StorageMsg::InjectPanic => panic!("fault injection: storage actor panics on request"),
            StorageMsg::Status(reply) => {
                let database_bytes =
                    std::fs::metadata(state.dir.join("pando.redb")).map(|meta| meta.len()).unwrap_or(0);
                let _ = reply.send(StorageStatus { dir: state.dir.clone(), database_bytes });
            }
        }
        Ok(())
    }
}
