use std::collections::BTreeSet;

use pando_protocol::blob::{BlobHash, BlobRecord};

use super::repair::assignments;

#[test]
fn the_blob_alpn_is_iroh_blobs_own() {
    assert_eq!(pando_protocol::alpn::BLOBS, iroh_blobs::ALPN);
}

fn record(replicas: u8, holders: Vec<u64>, assigned: Vec<u64>) -> BlobRecord {
    BlobRecord { size: 1, replicas, holders, assigned, pinned: true, ..BlobRecord::default() }
}

#[test]
fn the_leader_assigns_only_what_live_copies_lack() {
    let hash = BlobHash([7; 32]);
    let members: BTreeSet<u64> = [1, 2, 3, 4].into();
    let all_live = members.clone();
    assert_eq!(assignments(&hash, &record(2, vec![1, 2], vec![]), &members, &all_live), Vec::<u64>::new());
    assert_eq!(assignments(&hash, &record(2, vec![1], vec![3]), &members, &all_live), Vec::<u64>::new());
    let one = assignments(&hash, &record(2, vec![1], vec![]), &members, &all_live);
    assert_eq!(one.len(), 1);
    assert!(!one.contains(&1));
    // A holder the leader has not heard from does not count, and dead nodes are never chosen.
    let live: BTreeSet<u64> = [1, 3, 4].into();
    let topped = assignments(&hash, &record(2, vec![1, 2], vec![]), &members, &live);
    assert_eq!(topped.len(), 1);
    assert!(topped[0] == 3 || topped[0] == 4);
    // Asking for more copies than live members gives every live member.
    assert_eq!(assignments(&hash, &record(9, vec![1], vec![]), &members, &live), vec![3, 4]);
    // A blob with no holder cannot be fetched by anyone.
    assert_eq!(assignments(&hash, &record(2, vec![], vec![]), &members, &all_live), Vec::<u64>::new());
    // The choice is a function of the hash and the membership.
    assert_eq!(one, assignments(&hash, &record(2, vec![1], vec![]), &members, &all_live));
}

use pando_protocol::blob::BlobCommand;

use super::repair::plan;

#[test]
fn departed_holders_are_released_only_while_enough_live_copies_remain() {
    let hash = BlobHash([9; 32]);
    let members: BTreeSet<u64> = [1, 2, 3].into();
    let live = members.clone();
    // Node 7 left; two live holders remain for two replicas: it goes.
    let commands = plan(&hash, &record(2, vec![1, 2, 7], vec![]), &members, &live);
    assert_eq!(commands, vec![BlobCommand::Release { hash, node: 7 }]);
    // Node 7 left holding the only other copy: it stays a source while node 3 is assigned a copy.
    let commands = plan(&hash, &record(2, vec![1, 7], vec![]), &members, &live);
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert!(matches!(&commands[0], BlobCommand::Assign { nodes, .. } if nodes.len() == 1 && !nodes.contains(&7)));
    // The last holder is never released, even when it left.
    let commands = plan(&hash, &record(1, vec![7], vec![]), &members, &live);
    assert!(!commands.iter().any(|command| matches!(command, BlobCommand::Release { .. })), "{commands:?}");
    // An assignee that left is released at once.
    let commands = plan(&hash, &record(2, vec![1, 2], vec![8]), &members, &live);
    assert_eq!(commands, vec![BlobCommand::Release { hash, node: 8 }]);
}

#[test]
fn surplus_holders_are_trimmed_only_when_every_holder_is_live() {
    let hash = BlobHash([3; 32]);
    let members: BTreeSet<u64> = [1, 2, 3, 4].into();
    let all_live = members.clone();
    let commands = plan(&hash, &record(2, vec![1, 2, 3], vec![]), &members, &all_live);
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert!(matches!(commands[0], BlobCommand::Release { .. }));
    // One holder not heard from lately: nothing is trimmed (its copy may be the one that is lost).
    let live: BTreeSet<u64> = [1, 2, 4].into();
    assert!(plan(&hash, &record(2, vec![1, 2, 3], vec![]), &members, &live).is_empty());
    // A fetch under way: nothing is trimmed until it settles.
    assert!(plan(&hash, &record(2, vec![1, 2, 3], vec![4]), &members, &all_live).is_empty());
}

#[test]
fn an_assignee_that_is_down_is_forgotten_once_live_copies_suffice() {
    let hash = BlobHash([5; 32]);
    let members: BTreeSet<u64> = [1, 2, 3, 4].into();
    let live: BTreeSet<u64> = [1, 2, 4].into();
    // Node 3 was assigned, then went down; nodes 1 and 2 hold the two copies wanted: 3 is released.
    assert_eq!(
        plan(&hash, &record(2, vec![1, 2], vec![3]), &members, &live),
        vec![BlobCommand::Release { hash, node: 3 }]
    );
    // Only one live holder: node 3 stays assigned (it may come back) and a live node is assigned beside it.
    let commands = plan(&hash, &record(2, vec![1], vec![3]), &members, &live);
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert!(
        matches!(&commands[0], BlobCommand::Assign { nodes, .. } if nodes.len() == 1 && (nodes[0] == 2 || nodes[0] == 4)),
        "{commands:?}"
    );
}
