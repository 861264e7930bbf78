//! The retention policy's target over a real redb state machine (entries applied directly, stamped with chosen log
//! times): by count, by age, both, and nothing to do.

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use pando_protocol::command::Proposal;
use pando_protocol::state_machine::put_request;

use super::*;
use crate::raft::type_config::Entry;
use crate::storage;

/// A reader over a database where revision `n` was written at log time `stamps[n - 1]`.
async fn history(dir: &std::path::Path, stamps: &[u64]) -> StateReader {
    let stores = storage::open(dir).unwrap();
    let mut state_machine = stores.state_machine.clone();
    let entries = stamps
        .iter()
        .enumerate()
        .map(|(index, stamp_ms)| Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index as u64 + 1),
            payload: EntryPayload::Normal(Proposal {
                stamp_ms: *stamp_ms,
                commands: vec![Command::Kv(put_request(format!("k{index}").as_bytes(), b"v"))],
            }),
        })
        .collect::<Vec<_>>();
    state_machine.apply(entries).await.unwrap();
    stores.reader
}

#[tokio::test]
async fn the_count_keeps_the_last_revisions_and_the_latest_is_always_kept() {
    let dir = tempfile::tempdir().unwrap();
    let reader = history(dir.path(), &[1_000; 10]).await;
    let keep = |keep_revisions| RetentionConfig { keep_revisions, keep_age: None };
    assert_eq!(keep(3).target(&reader, 2_000).unwrap(), Some(8));
    assert_eq!(keep(10).target(&reader, 2_000).unwrap(), None, "exactly ten held");
    assert_eq!(keep(0).target(&reader, 2_000).unwrap(), None, "0 keeps everything");
}

#[tokio::test]
async fn the_age_drops_what_is_older_and_either_rule_drops_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let reader = history(dir.path(), &[1_000, 2_000, 20_000, 30_000, 31_000]).await;
    let aged = RetentionConfig { keep_revisions: 0, keep_age: Some(Duration::from_secs(10)) };
    // At 35 s the cutoff is 25 s: revisions 4 and 5 are young.
    assert_eq!(aged.target(&reader, 35_000).unwrap(), Some(4));
    // Everything old: all but the latest revision go.
    assert_eq!(aged.target(&reader, 100_000).unwrap(), Some(5));
    let both = RetentionConfig { keep_revisions: 4, keep_age: Some(Duration::from_secs(40)) };
    assert_eq!(both.target(&reader, 35_000).unwrap(), Some(2), "the count drops revision 1, the age nothing");
}
