use super::test_support::{connected_pair, remote_members};
use super::*;

#[test]
fn labels_name_members_and_nothing_else() {
    assert_eq!(node_of_label(&session_label(7)), Some(7));
    assert_eq!(node_of_label("node-"), None);
    assert_eq!(node_of_label("node-x"), None);
    assert_eq!(node_of_label("external"), None);
    assert_eq!(node_of_label("127.0.0.1:4000"), None);
}

#[test]
fn the_cookie_is_a_keyed_derivation_of_the_cluster_key() {
    let first = cookie(&[1; 32]);
    assert_eq!(first, cookie(&[1; 32]));
    assert_ne!(first, cookie(&[2; 32]));
    assert_eq!(first.len(), 64);
    // The cookie must not reveal the key it came from.
    assert!(!first.contains(&"01".repeat(32)));
}

#[tokio::test]
async fn a_member_cannot_stand_in_another_members_group() {
    let (scope_1, scope_2) = ("pando.test.impersonation.1", "pando.test.impersonation.2");
    let agent = agent::NodeAgent { node_id: 2, scope: scope_2.into(), raft: crate::raft::RaftHandle::new(2, []) };
    let (agent, _) = ractor::Actor::spawn(None, agent, ()).await.expect("the agent starts");
    let [server_1, server_2] = connected_pair((scope_1, scope_2)).await;

    let arrived = |groups: &'static [&'static str]| async move {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while groups.iter().any(|group| remote_members(scope_1, group) == 0) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    };
    // Node 2's own groups arrive at node 1.
    assert!(arrived(&["pando.node.2", NODES_GROUP]).await, "node 2's agent never reached node 1's groups");
    // Node 2 joins its agent to node 1's group (to receive what is forwarded to node 1), then to a marker group: the
    // joins travel in order on the session, so once the marker arrived the first join has been seen.
    ractor::pg::join_scoped(scope_2.into(), agent::node_group(1), vec![agent.get_cell()]);
    ractor::pg::join_scoped(scope_2.into(), "pando.test.marker".into(), vec![agent.get_cell()]);
    assert!(arrived(&["pando.test.marker"]).await, "the marker join never arrived");
    assert_eq!(remote_members(scope_1, &agent::node_group(1)), 0, "node 2 stands in node 1's group");

    agent.stop(None);
    server_1.stop(None);
    server_2.stop(None);
}
