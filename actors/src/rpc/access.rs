//! One table from a request to what it requires: the checks a request passes before any service sees it. Every kind
//! of request is here, so a new request cannot slip through unauthorised (the match is exhaustive).

use pando_protocol::blob::BlobRequest;
use pando_protocol::cluster::ClusterRequest;
use pando_protocol::coord::CoordRequest;
use pando_protocol::envelope::Request;
use pando_protocol::error::WireError;
use pando_protocol::kv::KvRequest;
use pando_protocol::observe::ObserveRequest;
use pando_protocol::plugin::PluginRequest;
use pando_protocol::token::Access;

/// The input checks of a request: a caller's mistake is answered before authorisation and changes nothing.
pub(crate) fn validate(request: &Request) -> Result<(), WireError> {
    match request {
        Request::Kv(request) => request.validate(),
        Request::Blob(BlobRequest::Get { .. }) => Ok(()),
        Request::Blob(request) => request.validate(),
        Request::Plugin(request) => request.validate(),
        Request::Coord(CoordRequest::Tick) => Err(WireError::invalid("ticks are proposed by the leader only")),
        Request::Coord(request) => request.validate(),
        Request::Cluster(_) => Ok(()),
        Request::Watch(request) => request.validate(),
        Request::Observe(request) => request.validate(),
        Request::Token(request) => request.validate(),
        Request::Hook(request) => request.validate(),
        Request::HookWatch(request) => request.validate(),
        Request::Job(request) => request.validate(),
        Request::Fs(request) => request.validate(),
    }
}

/// Everything `request` needs its token to allow.
pub(crate) fn required(request: &Request) -> Vec<Access<'_>> {
    match request {
        Request::Kv(request) => {
            let write = request.is_write();
            let mut needs: Vec<Access<'_>> = request
                .keys()
                .into_iter()
                .map(|key| if write { Access::KvWrite(key) } else { Access::KvRead(key) })
                .collect();
            // A request naming no key (an empty transaction) still reads the store's revision: it needs read access
            // to the whole keyspace, never nothing at all.
            if needs.is_empty() {
                needs.push(if write { Access::KvWrite(b"") } else { Access::KvRead(b"") });
            }
            // Pointing a key at a blob reads the blob through the key later: it needs the blob capability too.
            if matches!(request, KvRequest::PutBlob { .. }) {
                needs.push(Access::BlobWrite);
            }
            needs
        }
        Request::Blob(BlobRequest::Add { attach, .. }) => {
            let mut needs = vec![Access::BlobWrite];
            needs.extend(attach.as_ref().map(|attach| Access::KvWrite(&attach.key)));
            needs
        }
        // Reading a KV value stored as a blob needs the key, not the blob capability.
        Request::Blob(BlobRequest::Get { key: Some(key), .. }) => vec![Access::KvRead(key)],
        Request::Blob(request) => vec![if request.is_write() { Access::BlobWrite } else { Access::BlobRead }],
        // A watch sees every key under its key or prefix: it needs read access to all of them.
        Request::Watch(request) => vec![Access::KvRead(request.range.access_prefix())],
        // An observation reads its resource as often as it changes: what a read of it needs.
        Request::Observe(ObserveRequest::Election { name }) => vec![Access::KvRead(name)],
        Request::Plugin(PluginRequest::Call { name, .. }) => vec![Access::PluginCall(name)],
        Request::Plugin(PluginRequest::List | PluginRequest::Info { .. }) => vec![Access::ClusterRead],
        Request::Plugin(_) => vec![Access::PluginAdmin],
        Request::Coord(request) => {
            // A lease's name is the prefix it belongs to; one that names none needs access to every key.
            let name = request.name().unwrap_or_default();
            vec![if request.is_write() { Access::KvWrite(name) } else { Access::KvRead(name) }]
        }
        Request::Cluster(request) => vec![match request {
            ClusterRequest::Status
            | ClusterRequest::Metrics
            | ClusterRequest::Actors
            | ClusterRequest::Mesh
            | ClusterRequest::Version => Access::ClusterRead,
            ClusterRequest::Join { .. } => Access::ClusterJoin,
            // An admin, or the learner itself when its join token said voter.
            ClusterRequest::Promote { node_id } => Access::Promote(*node_id),
            // An admin, or the member itself.
            ClusterRequest::UpdateAddress { node_id, .. } => Access::NodeAddress(*node_id),
            ClusterRequest::RotateNodeKey { node_id, .. } => Access::NodeKey(*node_id),
            ClusterRequest::AddLearner { .. } | ClusterRequest::Remove { .. } | ClusterRequest::InjectPanic { .. } => {
                Access::ClusterAdmin
            }
        }],
        Request::Token(_) => vec![Access::TokenAdmin],
        Request::Hook(_) => vec![Access::HookAdmin],
        // A stream of KV events under a prefix needs what a watch of that prefix needs; anything else the hooks
        // capability (it may see every key, lock and lease).
        Request::HookWatch(request) => vec![Access::HookStream(&request.pattern)],
        Request::Job(request) => request.required(),
        Request::Fs(request) => vec![request.required()],
    }
}

#[cfg(test)]
mod tests {
    use pando_protocol::kv::{Consistency, bytes};

    use super::*;

    #[test]
    fn a_kv_write_needs_write_access_to_every_key_it_touches() {
        let request = Request::Kv(KvRequest::Cas { key: bytes("a"), expected: None, value: bytes("1") });
        assert_eq!(required(&request), vec![Access::KvWrite(b"a".as_slice())]);
        let read = Request::Kv(KvRequest::Get { key: bytes("a"), consistency: Consistency::Stale });
        assert_eq!(required(&read), vec![Access::KvRead(b"a".as_slice())]);
    }

    #[test]
    fn a_watch_needs_read_access_to_every_key_it_can_see() {
        use pando_protocol::watch::{WatchRange, WatchRequest};
        let watch = |range| {
            Request::Watch(WatchRequest { range, start_revision: 0, prev_kv: false, only: None, progress_ms: 0 })
        };
        assert_eq!(required(&watch(WatchRange::Prefix(bytes("app/")))), vec![Access::KvRead(b"app/".as_slice())]);
        assert_eq!(required(&watch(WatchRange::Prefix(bytes("")))), vec![Access::KvRead(b"".as_slice())]);
        assert_eq!(required(&watch(WatchRange::Key(bytes("cfg")))), vec![Access::KvRead(b"cfg".as_slice())]);
        let range = WatchRange::Range { start: bytes("app/b"), end: bytes("app/d") };
        assert_eq!(required(&watch(range)), vec![Access::KvRead(b"app/".as_slice())]);
        let observe = Request::Observe(ObserveRequest::Election { name: bytes("leader") });
        assert_eq!(required(&observe), vec![Access::KvRead(b"leader".as_slice())]);
    }

    #[test]
    fn listing_leases_or_queues_needs_read_access_to_the_prefix_listed() {
        let leases = Request::Coord(CoordRequest::LeaseList { prefix: bytes("app/") });
        assert_eq!(required(&leases), vec![Access::KvRead(b"app/".as_slice())]);
        let queues = Request::Coord(CoordRequest::QueueList { prefix: bytes("") });
        assert_eq!(required(&queues), vec![Access::KvRead(b"".as_slice())]);
    }

    #[test]
    fn compaction_needs_write_access_to_the_whole_keyspace() {
        let request = Request::Kv(KvRequest::Compact { revision: 5 });
        assert_eq!(required(&request), vec![Access::KvWrite(b"".as_slice())]);
    }

    #[test]
    fn membership_changes_need_the_admin_capability_and_joining_only_the_join_one() {
        assert_eq!(required(&Request::Cluster(ClusterRequest::Remove { node_id: 2 })), vec![Access::ClusterAdmin]);
        assert_eq!(required(&Request::Cluster(ClusterRequest::Status)), vec![Access::ClusterRead]);
    }

    #[test]
    fn a_client_cannot_propose_a_tick() {
        let error = validate(&Request::Coord(CoordRequest::Tick)).unwrap_err();
        assert_eq!(error.code, pando_protocol::error::ErrorCode::InvalidArgument);
    }
}
