//! The Raft network between members.
//!
//! A single-node cluster never sends Raft RPCs. Until the iroh transport (ALPN `pando/raft/1`) lands with membership
//! changes, every peer is reported unreachable, which openraft treats as a transient failure it retries.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use pando_protocol::cluster::MemberNode;

use super::type_config::{NodeId, TypeConfig};

#[derive(Clone, Debug, Default)]
pub struct PeerNetwork;

#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is unreachable: this build has no Raft transport between nodes yet")]
struct NoTransport(NodeId);

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &MemberNode) -> PeerClient {
        PeerClient { target }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoTransport(self.target))))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoTransport(self.target))))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(RPCError::Unreachable(Unreachable::new(&NoTransport(self.target))))
    }
}
