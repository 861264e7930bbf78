//! Two mesh members in one process for tests: node servers with their own process-group scopes, joined by an
//! in-memory pipe labelled as the mesh labels an authenticated member's stream (the same session code the node runs
//! over QUIC).

use super::{agent, session_label};

/// A session stream over an in-memory pipe, labelled as the mesh labels an authenticated member's stream.
pub(crate) struct Pipe {
    pub stream: tokio::io::DuplexStream,
    pub peer: u64,
    pub me: u64,
}

impl ractor_cluster::ClusterBidiStream for Pipe {
    fn split(self: Box<Self>) -> (ractor_cluster::BoxRead, ractor_cluster::BoxWrite) {
        let (reader, writer) = tokio::io::split(self.stream);
        (Box::new(reader), Box::new(writer))
    }

    fn peer_label(&self) -> Option<String> {
        Some(session_label(self.peer))
    }

    fn local_label(&self) -> Option<String> {
        Some(session_label(self.me))
    }
}

pub(crate) async fn node_server(node_id: u64, scope: &str) -> ractor::ActorRef<ractor_cluster::NodeServerMessage> {
    let server = ractor_cluster::NodeServer::new(
        0,
        "cookie".into(),
        session_label(node_id),
        "pando".into(),
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into())
    .with_scope(scope.to_string())
    .with_remote_group_filter(agent::peer_may_join);
    ractor::Actor::spawn(None, server, ()).await.expect("a node server starts").0
}

/// The remote members of `group` as the node of `scope` sees them.
pub(crate) fn remote_members(scope: &str, group: &str) -> usize {
    ractor::pg::get_scoped_members(&scope.to_string(), &group.to_string())
        .iter()
        .filter(|cell| !cell.get_id().is_local())
        .count()
}

/// Node servers for members 1 and 2 in `scopes`, connected to each other.
pub(crate) async fn connected_pair(scopes: (&str, &str)) -> [ractor::ActorRef<ractor_cluster::NodeServerMessage>; 2] {
    use ractor_cluster::NodeServerMessage::ConnectionOpenedExternal;
    let (server_1, server_2) = (node_server(1, scopes.0).await, node_server(2, scopes.1).await);
    let (one, two) = tokio::io::duplex(64 * 1024);
    server_1
        .cast(ConnectionOpenedExternal { stream: Box::new(Pipe { stream: one, peer: 2, me: 1 }), is_server: true })
        .unwrap();
    server_2
        .cast(ConnectionOpenedExternal { stream: Box::new(Pipe { stream: two, peer: 1, me: 2 }), is_server: false })
        .unwrap();
    [server_1, server_2]
}
