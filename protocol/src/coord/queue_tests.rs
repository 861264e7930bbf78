//! Tests of queues, barriers and the service registry: exact outputs, and a property test of queue delivery against
//! a model of every delivery handed out.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::queue::{QUEUE_DEDUP_WINDOW_MS, QUEUE_LIST_COUNT_MAX, QUEUE_MESSAGE_BYTES_MAX};
use super::tests::{grant, run};
use super::*;
use crate::error::ErrorCode;
use crate::kv::bytes;
use crate::memory_tables::MemoryTables;

fn create(tables: &mut MemoryTables, now: u64, visibility_ms: u64, max_deliveries: u32) {
    run(tables, now, CoordRequest::QueueCreate { name: bytes("work"), visibility_ms, max_deliveries }).unwrap();
}

fn enqueue(tables: &mut MemoryTables, now: u64, body: &str, dedup: Option<&str>, group: Option<&str>) -> (u64, bool) {
    let request = CoordRequest::QueueEnqueue {
        name: bytes("work"),
        body: bytes(body),
        dedup_id: dedup.map(bytes),
        group: group.map(bytes),
    };
    match run(tables, now, request).unwrap() {
        CoordResponse::Enqueued { id, duplicate } => (id, duplicate),
        other => panic!("unexpected {other:?}"),
    }
}

fn dequeue(tables: &mut MemoryTables, now: u64, count: u32) -> Vec<QueueMessage> {
    let request =
        CoordRequest::QueueDequeue { name: bytes("work"), count, visibility_ms: 0, consumer: bytes("c"), wait_ms: 0 };
    match run(tables, now, request).unwrap() {
        CoordResponse::Delivered { messages } => messages,
        other => panic!("unexpected {other:?}"),
    }
}

fn ack(tables: &mut MemoryTables, now: u64, id: u64, token: u64) -> Result<CoordResponse, WireError> {
    run(tables, now, CoordRequest::QueueAck { name: bytes("work"), id, token })
}

fn status(tables: &MemoryTables) -> QueueInfo {
    match read(tables, &CoordRequest::QueueGet { name: bytes("work") }).unwrap().unwrap() {
        CoordResponse::Queue { queue } => queue,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_queue_delivers_in_order_and_redelivers_what_is_not_acked() {
    let mut tables = MemoryTables::default();
    create(&mut tables, 0, 1_000, 2);
    assert_eq!(enqueue(&mut tables, 0, "a", None, None), (1, false));
    assert_eq!(enqueue(&mut tables, 0, "b", None, None), (2, false));
    let first = dequeue(&mut tables, 10, 1);
    assert_eq!((first[0].id, first[0].token(), first[0].deliveries), (1, Some(1), 1));
    let second = dequeue(&mut tables, 10, 5);
    assert_eq!(second.iter().map(|message| message.id).collect::<Vec<_>>(), vec![2], "message 1 is with a consumer");
    assert!(dequeue(&mut tables, 20, 5).is_empty());
    // Message 1's visibility (1 s) ends at 1010: it comes back with a larger token; the old token is refused.
    let again = dequeue(&mut tables, 1_010, 1);
    assert_eq!((again[0].id, again[0].token(), again[0].deliveries), (1, Some(3), 2));
    let stale = ack(&mut tables, 1_020, 1, 1).unwrap_err();
    assert_eq!(stale.code, ErrorCode::Conflict);
    assert!(stale.message.contains("in delivery 3"), "{stale:?}");
    ack(&mut tables, 1_020, 1, 3).unwrap();
    assert_eq!(ack(&mut tables, 1_030, 1, 3).unwrap_err().code, ErrorCode::NotFound);
    // Message 2 times out twice (its second delivery was its last): a dead letter, and redrive brings it back.
    assert_eq!(dequeue(&mut tables, 2_000, 1)[0].deliveries, 2);
    run(&mut tables, 3_500, CoordRequest::Tick).unwrap();
    let queue = status(&tables);
    assert_eq!((queue.ready, queue.in_flight, queue.dead, queue.acked_total), (0, 0, 1, 1));
    let CoordResponse::QueueMessages { messages, .. } =
        read(&tables, &CoordRequest::QueueDeadLetters { name: bytes("work"), count: 10 }).unwrap().unwrap()
    else {
        panic!("not messages")
    };
    assert!(matches!(&messages[0].state, MessageState::Dead { reason } if reason.contains("timed out")));
    run(&mut tables, 3_600, CoordRequest::QueueRedrive { name: bytes("work"), count: 10 }).unwrap();
    let redriven = dequeue(&mut tables, 3_700, 1);
    assert_eq!((redriven[0].id, redriven[0].deliveries), (2, 1));
}

#[test]
fn nack_extend_dedup_and_delete() {
    let mut tables = MemoryTables::default();
    create(&mut tables, 0, 1_000, 5);
    assert_eq!(enqueue(&mut tables, 0, "a", Some("order-7"), None), (1, false));
    assert_eq!(enqueue(&mut tables, 100, "a again", Some("order-7"), None), (1, true), "a duplicate adds nothing");
    let delivered = dequeue(&mut tables, 200, 1);
    let token = delivered[0].token().unwrap();
    // Extending at 900 keeps it until 1900: no redelivery at 1500.
    run(&mut tables, 900, CoordRequest::QueueExtend { name: bytes("work"), id: 1, token, visibility_ms: 1_000 })
        .unwrap();
    assert!(dequeue(&mut tables, 1_500, 1).is_empty());
    run(&mut tables, 1_600, CoordRequest::QueueNack { name: bytes("work"), id: 1, token }).unwrap();
    assert_eq!(dequeue(&mut tables, 1_700, 1)[0].deliveries, 2);
    // The deduplication id is forgotten after its window.
    assert_eq!(enqueue(&mut tables, QUEUE_DEDUP_WINDOW_MS + 1, "b", Some("order-7"), None), (2, false));
    run(&mut tables, QUEUE_DEDUP_WINDOW_MS + 2, CoordRequest::QueueDelete { name: bytes("work") }).unwrap();
    let leftovers: Vec<_> =
        tables.coord.keys().filter(|key| !key.starts_with(b"m/") && !key.starts_with(b"h/")).collect();
    assert!(leftovers.is_empty(), "deleting a queue leaves nothing behind: {leftovers:?}");
    let missing = run(&mut tables, QUEUE_DEDUP_WINDOW_MS + 3, CoordRequest::QueueGet { name: bytes("work") });
    assert_eq!(missing.unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn a_group_is_delivered_one_message_at_a_time_in_order() {
    let mut tables = MemoryTables::default();
    create(&mut tables, 0, 10_000, 1);
    enqueue(&mut tables, 0, "g1", None, Some("g"));
    enqueue(&mut tables, 0, "g2", None, Some("g"));
    enqueue(&mut tables, 0, "free", None, None);
    enqueue(&mut tables, 0, "g3", None, Some("g"));
    let ids = |messages: Vec<QueueMessage>| messages.iter().map(|message| message.id).collect::<Vec<_>>();
    let first = dequeue(&mut tables, 1, 10);
    assert_eq!(ids(first.clone()), vec![1, 3], "g2 and g3 wait behind g1");
    assert_eq!(status(&tables).waiting, 2);
    ack(&mut tables, 2, 1, first[0].token().unwrap()).unwrap();
    let second = dequeue(&mut tables, 3, 10);
    assert_eq!(ids(second.clone()), vec![2]);
    // g2 is nacked on its last delivery: a dead letter, and g3 is next.
    run(&mut tables, 4, CoordRequest::QueueNack { name: bytes("work"), id: 2, token: second[0].token().unwrap() })
        .unwrap();
    assert_eq!(ids(dequeue(&mut tables, 5, 10)), vec![4]);
}

#[test]
fn bad_queue_requests_are_refused_and_change_nothing() {
    let mut tables = MemoryTables::default();
    create(&mut tables, 0, 1_000, 5);
    let before = tables.coord.clone();
    let refused = [
        CoordRequest::QueueCreate { name: bytes("work"), visibility_ms: 2_000, max_deliveries: 5 },
        CoordRequest::QueueCreate { name: bytes("other"), visibility_ms: 1, max_deliveries: 5 },
        CoordRequest::QueueCreate { name: bytes("other"), visibility_ms: 1_000, max_deliveries: 0 },
        CoordRequest::QueueEnqueue {
            name: bytes("work"),
            body: bytes(vec![0; QUEUE_MESSAGE_BYTES_MAX + 1]),
            dedup_id: None,
            group: None,
        },
        CoordRequest::QueueEnqueue { name: bytes("nope"), body: bytes("x"), dedup_id: None, group: None },
        CoordRequest::QueueEnqueue { name: bytes("work"), body: bytes("x"), dedup_id: Some(bytes("")), group: None },
        CoordRequest::QueueDequeue { name: bytes("work"), count: 0, visibility_ms: 0, consumer: bytes(""), wait_ms: 0 },
        CoordRequest::QueueAck { name: bytes("work"), id: 1, token: 1 },
        CoordRequest::QueuePeek { name: bytes("work"), count: QUEUE_LIST_COUNT_MAX + 1 },
    ];
    for request in refused {
        assert!(run(&mut tables, 0, request.clone()).is_err(), "{request:?} was accepted");
    }
    assert_eq!(tables.coord, before);
}

#[derive(Clone, Debug)]
enum QueueOp {
    Enqueue { group: Option<u8>, dedup: Option<u8> },
    Dequeue { count: u32 },
    Ack { delivery: usize },
    Nack { delivery: usize },
    Advance { ms: u64 },
    Redrive,
}

fn queue_op() -> impl Strategy<Value = QueueOp> {
    prop_oneof![
        (proptest::option::of(0u8..3), proptest::option::of(0u8..4))
            .prop_map(|(group, dedup)| QueueOp::Enqueue { group, dedup }),
        (1u32..4).prop_map(|count| QueueOp::Dequeue { count }),
        (0usize..40).prop_map(|delivery| QueueOp::Ack { delivery }),
        (0usize..40).prop_map(|delivery| QueueOp::Nack { delivery }),
        (0u64..1_500).prop_map(|ms| QueueOp::Advance { ms }),
        Just(QueueOp::Redrive),
    ]
}

/// The model's view of one delivery.
#[derive(Clone, Debug)]
struct Delivery {
    id: u64,
    token: u64,
    until_ms: u64,
    ended: bool,
}

proptest! {
    /// A queue (visibility 1 s, 3 deliveries at most) against a model of the deliveries it handed out: a message is
    /// with at most one consumer at a time, tokens strictly increase, an ack succeeds exactly when its delivery is the
    /// current one, a group has one message out at a time, messages die after exactly their last allowed
    /// delivery, and after draining every message was acked once or is dead (at least once, nothing lost).
    #[test]
    fn queues_deliver_to_one_consumer_at_a_time_and_lose_nothing(ops in proptest::collection::vec(queue_op(), 1..120)) {
        const VISIBILITY: u64 = 1_000;
        const MAX_DELIVERIES: u32 = 3;
        let mut tables = MemoryTables::default();
        let mut now = 0u64;
        create(&mut tables, now, VISIBILITY, MAX_DELIVERIES);
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut groups: BTreeMap<u64, u8> = BTreeMap::new();
        let mut enqueued: BTreeSet<u64> = BTreeSet::new();
        let mut acked: BTreeSet<u64> = BTreeSet::new();
        let mut dedup_ids: BTreeMap<u8, u64> = BTreeMap::new();
        let mut last_token = 0;
        let current = |deliveries: &[Delivery], now: u64, id: u64| {
            deliveries.iter().any(|delivery| delivery.id == id && !delivery.ended && delivery.until_ms > now)
        };
        for op in ops {
            match op {
                QueueOp::Enqueue { group, dedup } => {
                    let group_name = group.map(|group| format!("g{group}"));
                    let dedup_name = dedup.map(|dedup| format!("d{dedup}"));
                    let (id, duplicate) = enqueue(&mut tables, now, "m", dedup_name.as_deref(), group_name.as_deref());
                    if let Some(dedup) = dedup {
                        prop_assert_eq!(duplicate, dedup_ids.contains_key(&dedup));
                        prop_assert_eq!(id, *dedup_ids.entry(dedup).or_insert(id));
                    }
                    if !duplicate {
                        prop_assert!(enqueued.insert(id));
                        if let Some(group) = group {
                            groups.insert(id, group);
                        }
                    }
                }
                QueueOp::Dequeue { count } => {
                    for message in dequeue(&mut tables, now, count) {
                        let token = message.token().unwrap();
                        prop_assert!(token > last_token, "tokens strictly increase");
                        last_token = token;
                        prop_assert!(!current(&deliveries, now, message.id), "message {} is with two consumers", message.id);
                        prop_assert!(!acked.contains(&message.id), "an acked message came back");
                        prop_assert!(message.deliveries <= MAX_DELIVERIES);
                        if let Some(group) = groups.get(&message.id) {
                            // Every earlier message of the group is acked or dead, and no other one is out.
                            for (&other, &other_group) in &groups {
                                if other_group == *group && other != message.id {
                                    prop_assert!(!current(&deliveries, now, other), "group {group} has two out");
                                }
                            }
                        }
                        deliveries.push(Delivery { id: message.id, token, until_ms: now + VISIBILITY, ended: false });
                    }
                }
                QueueOp::Ack { delivery } | QueueOp::Nack { delivery } => {
                    let is_ack = matches!(op, QueueOp::Ack { .. });
                    let Some(chosen) = deliveries.get(delivery).cloned() else { continue };
                    let live = !chosen.ended && chosen.until_ms > now;
                    let request = if is_ack {
                        CoordRequest::QueueAck { name: bytes("work"), id: chosen.id, token: chosen.token }
                    } else {
                        CoordRequest::QueueNack { name: bytes("work"), id: chosen.id, token: chosen.token }
                    };
                    let result = run(&mut tables, now, request);
                    prop_assert_eq!(result.is_ok(), live, "ack/nack of {:?} at {}", chosen, now);
                    if live {
                        deliveries[delivery].ended = true;
                        if is_ack {
                            acked.insert(chosen.id);
                        }
                    }
                }
                QueueOp::Advance { ms } => {
                    now += ms;
                    run(&mut tables, now, CoordRequest::Tick).unwrap();
                }
                QueueOp::Redrive => {
                    run(&mut tables, now, CoordRequest::QueueRedrive { name: bytes("work"), count: 100 }).unwrap();
                }
            }
            let queue = status(&tables);
            prop_assert_eq!(queue.depth(), (enqueued.len() - acked.len()) as u64);
        }
        // Drain: every message not acked is eventually delivered and acked, or is dead after its last delivery.
        for _ in 0..(enqueued.len() as u32 * MAX_DELIVERIES + 10) {
            now += VISIBILITY;
            let messages = dequeue(&mut tables, now, 100);
            if messages.is_empty() && status(&tables).ready == 0 && status(&tables).in_flight == 0 && status(&tables).waiting == 0 {
                break;
            }
            for message in messages {
                ack(&mut tables, now, message.id, message.token().unwrap()).unwrap();
                prop_assert!(acked.insert(message.id), "message {} acked twice", message.id);
            }
        }
        let CoordResponse::QueueMessages { messages: dead, .. } =
            read(&tables, &CoordRequest::QueueDeadLetters { name: bytes("work"), count: 1_000 }).unwrap().unwrap()
        else { unreachable!() };
        for message in &dead {
            prop_assert_eq!(message.deliveries, MAX_DELIVERIES, "dead after exactly its last delivery");
            prop_assert!(!acked.contains(&message.id));
        }
        let accounted: BTreeSet<u64> = acked.iter().copied().chain(dead.iter().map(|message| message.id)).collect();
        prop_assert_eq!(accounted, enqueued);
    }
}

#[test]
fn a_barrier_opens_when_every_party_entered_and_closes_when_all_left() {
    let mut tables = MemoryTables::default();
    let leases: Vec<u64> = (0..4).map(|_| grant(&mut tables, 0, 10_000)).collect();
    let enter = |tables: &mut MemoryTables, lease: u64| {
        run(tables, 1, CoordRequest::BarrierEnter { name: bytes("b"), lease, parties: 3, wait_ms: 0 })
    };
    let open = |response: Result<CoordResponse, WireError>| match response {
        Ok(CoordResponse::Barrier { barrier }) => Ok(barrier.open),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(error) => Err(error.code),
    };
    assert_eq!(open(enter(&mut tables, leases[0])), Ok(false));
    assert_eq!(open(enter(&mut tables, leases[0])), Ok(false), "entering again is idempotent");
    assert_eq!(open(enter(&mut tables, leases[1])), Ok(false));
    let wrong =
        run(&mut tables, 1, CoordRequest::BarrierEnter { name: bytes("b"), lease: leases[2], parties: 2, wait_ms: 0 });
    assert_eq!(open(wrong), Err(ErrorCode::Conflict), "the round is for 3 parties");
    assert_eq!(open(enter(&mut tables, leases[2])), Ok(true));
    assert_eq!(open(enter(&mut tables, leases[0])), Ok(true), "a party retrying its enter sees it open");
    assert_eq!(open(enter(&mut tables, leases[3])), Err(ErrorCode::Conflict), "no entering an open round");
    run(&mut tables, 2, CoordRequest::BarrierLeave { name: bytes("b"), lease: leases[0] }).unwrap();
    run(&mut tables, 2, CoordRequest::BarrierLeave { name: bytes("b"), lease: leases[1] }).unwrap();
    // The last party's lease ends: it counts as having left, and the next round may start.
    run(&mut tables, 3, CoordRequest::lease_revoke(leases[2])).unwrap();
    assert_eq!(open(enter(&mut tables, leases[3])), Ok(false));
    let CoordResponse::Barrier { barrier } =
        read(&tables, &CoordRequest::BarrierGet { name: bytes("b") }).unwrap().unwrap()
    else {
        unreachable!()
    };
    assert_eq!((barrier.generation, barrier.members.clone()), (1, vec![leases[3]]));
}

fn instances(tables: &MemoryTables, passing_only: bool) -> Vec<(String, Health)> {
    match read(tables, &CoordRequest::ServiceDiscover { service: bytes("web"), passing_only }).unwrap().unwrap() {
        CoordResponse::Services { instances } => instances
            .iter()
            .map(|instance| (String::from_utf8_lossy(&instance.instance).into_owned(), instance.health))
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn register(tables: &mut MemoryTables, now: u64, instance: &str, lease: Option<u64>) {
    let request = CoordRequest::ServiceRegister {
        service: bytes("web"),
        instance: bytes(instance),
        address: format!("10.0.0.1:80/{instance}"),
        tags: vec!["v1".into()],
        ttl_ms: 15_000,
        deregister_after_ms: 60_000,
        lease,
    };
    run(tables, now, request).unwrap();
}

#[test]
fn services_turn_critical_without_heartbeats_and_go_after_their_grace() {
    let mut tables = MemoryTables::default();
    let lease = grant(&mut tables, 0, 5_000);
    register(&mut tables, 0, "w1", None);
    register(&mut tables, 0, "w2", None);
    register(&mut tables, 0, "w3", Some(lease));
    assert_eq!(instances(&tables, true).len(), 3);
    // w3's lease lapses at 5 s: its registration goes with it.
    run(&mut tables, 10_000, CoordRequest::ServiceHeartbeat { service: bytes("web"), instance: bytes("w1") }).unwrap();
    assert_eq!(instances(&tables, false).len(), 2);
    // At 15 s w2 missed its TTL: critical, still listed, not among the healthy.
    run(&mut tables, 15_000, CoordRequest::Tick).unwrap();
    assert_eq!(instances(&tables, false), vec![("w1".into(), Health::Passing), ("w2".into(), Health::Critical)]);
    assert_eq!(instances(&tables, true), vec![("w1".into(), Health::Passing)]);
    // An explicit health report, then w2 is removed 60 s after turning critical.
    let warn = CoordRequest::ServiceHealth {
        service: bytes("web"),
        instance: bytes("w1"),
        health: Health::Warning,
        note: "disk 91%".into(),
    };
    run(&mut tables, 20_000, warn).unwrap();
    assert_eq!(instances(&tables, true), vec![]);
    run(&mut tables, 75_000, CoordRequest::Tick).unwrap();
    let left = instances(&tables, false);
    assert_eq!(left.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), vec!["w1"], "w1 critical since 35 s");
    run(&mut tables, 76_000, CoordRequest::ServiceDeregister { service: bytes("web"), instance: bytes("w1") }).unwrap();
    let leftovers: Vec<_> =
        tables.coord.keys().filter(|key| !key.starts_with(b"m/") && !key.starts_with(b"h/")).collect();
    assert!(leftovers.is_empty(), "nothing left behind: {leftovers:?}");
}

#[test]
fn parked_requests_wake_on_their_own_events_and_are_satisfied_only_by_progress() {
    let dequeue = CoordRequest::QueueDequeue {
        name: bytes("q"),
        count: 1,
        visibility_ms: 0,
        consumer: bytes(""),
        wait_ms: 1_000,
    };
    assert!(dequeue.woken_by(&CoordEvent::QueueEnqueued { name: bytes("q"), id: 1 }));
    assert!(!dequeue.woken_by(&CoordEvent::QueueEnqueued { name: bytes("other"), id: 1 }));
    assert!(!dequeue.satisfied_by(&CoordResponse::Delivered { messages: vec![] }));
    assert_eq!(dequeue.without_wait().wait_ms(), 0);
    let observe = CoordRequest::ElectionObserve { name: bytes("e"), last_token: 3, leading: true, wait_ms: 1_000 };
    let mut election = ElectionInfo { name: bytes("e"), leader: None, last_token: 3 };
    assert!(observe.satisfied_by(&CoordResponse::Election { election: election.clone() }), "the leader resigned");
    election.leader = Some(election::ElectionLeader { lease: 1, token: 3, value: bytes(""), since_ms: 0 });
    assert!(!observe.satisfied_by(&CoordResponse::Election { election }));
    assert!(!observe.is_write());
    assert!(!CoordRequest::BarrierEnter { name: bytes("b"), lease: 1, parties: 2, wait_ms: 1 }.takes_turns());
}

#[test]
fn every_primitive_with_tokens_fences_writes() {
    use crate::command::{Command, CommandOutput, Proposal};
    use crate::kv::{Compare, CompareOp, CompareTarget, FenceKind, KvRequest, KvResponse, TxnOp};
    use crate::state_machine::apply_proposal;
    let write = |tables: &mut MemoryTables, name: &str, kind: FenceKind, token: u64| {
        let txn = KvRequest::Txn {
            compares: vec![Compare {
                key: bytes(name),
                op: CompareOp::Equal,
                target: CompareTarget::Fence { kind, token },
            }],
            success: vec![TxnOp::Put { key: bytes("out"), value: bytes(format!("{kind:?} {token}")) }],
            failure: Vec::new(),
        };
        let proposal = Proposal { stamp_ms: 10, commands: vec![Command::Kv(txn)] };
        match apply_proposal(tables, &mut 0, &proposal).unwrap().results.remove(0).unwrap() {
            CommandOutput::Kv(KvResponse::Txn { succeeded, .. }) => succeeded,
            other => panic!("unexpected {other:?}"),
        }
    };
    let mut tables = MemoryTables::default();
    let lease = grant(&mut tables, 0, 60_000);
    let acquisitions = [
        (CoordRequest::LockAcquire { name: bytes("l"), lease, wait_ms: 0 }, "l", FenceKind::Lock),
        (
            CoordRequest::RwLockAcquire { name: bytes("r"), lease, mode: RwMode::Write, wait_ms: 0 },
            "r",
            FenceKind::RwLock,
        ),
        (
            CoordRequest::SemaphoreAcquire { name: bytes("s"), lease, permits: 1, capacity: 2, wait_ms: 0 },
            "s",
            FenceKind::Semaphore,
        ),
        (
            CoordRequest::ElectionCampaign { name: bytes("e"), lease, value: bytes("v"), wait_ms: 0 },
            "e",
            FenceKind::Election,
        ),
    ];
    for (request, name, kind) in acquisitions {
        let token = match run(&mut tables, 1, request).unwrap() {
            CoordResponse::Lock { lock } => lock.holder.unwrap().token,
            CoordResponse::RwLock { rwlock } => rwlock.writer.unwrap().token,
            CoordResponse::Semaphore { semaphore } => semaphore.last_token,
            CoordResponse::Election { election } => election.leader.unwrap().token,
            other => panic!("unexpected {other:?}"),
        };
        assert!(write(&mut tables, name, kind, token), "{kind:?} holder writes");
        assert!(!write(&mut tables, name, kind, token + 1), "{kind:?}: a token never handed out is fenced off");
    }
    create(&mut tables, 1, 1_000, 5);
    enqueue(&mut tables, 1, "m", None, None);
    let delivery = dequeue(&mut tables, 2, 1).remove(0);
    let kind = FenceKind::QueueMessage(delivery.id);
    assert!(write(&mut tables, "work", kind, delivery.token().unwrap()));
    // Every hold ends (the lease with the locks, the delivery by timing out): the same writes are fenced off.
    run(&mut tables, 5_000, CoordRequest::lease_revoke(lease)).unwrap();
    for (name, kind) in
        [("l", FenceKind::Lock), ("r", FenceKind::RwLock), ("s", FenceKind::Semaphore), ("e", FenceKind::Election)]
    {
        assert!(!write(&mut tables, name, kind, 1), "{kind:?} after the lease ended");
    }
    assert!(!write(&mut tables, "work", kind, delivery.token().unwrap()), "a timed-out delivery is fenced off");
    // Ordering operators make no sense for a fence and are refused.
    let ordered = KvRequest::Txn {
        compares: vec![Compare {
            key: bytes("l"),
            op: CompareOp::Greater,
            target: CompareTarget::Fence { kind: FenceKind::Lock, token: 1 },
        }],
        success: Vec::new(),
        failure: Vec::new(),
    };
    assert_eq!(ordered.validate().unwrap_err().code, ErrorCode::InvalidArgument);
}

#[derive(Clone, Debug)]
enum BarrierOp {
    Grant,
    Enter { lease: usize },
    Leave { lease: usize },
    Revoke { lease: usize },
    Advance { ms: u64 },
}

fn barrier_op() -> impl Strategy<Value = BarrierOp> {
    prop_oneof![
        Just(BarrierOp::Grant),
        (0usize..6).prop_map(|lease| BarrierOp::Enter { lease }),
        (0usize..6).prop_map(|lease| BarrierOp::Leave { lease }),
        (0usize..6).prop_map(|lease| BarrierOp::Revoke { lease }),
        (0u64..2_000).prop_map(|ms| BarrierOp::Advance { ms }),
    ]
}

proptest! {
    /// A barrier of 3 parties against a model: it opens exactly when the third distinct live lease enters, refuses
    /// newcomers while open, closes (a new round may start) when the last party leaves or its lease ends, and every
    /// opening is a new generation.
    #[test]
    fn barriers_agree_with_a_model(ops in proptest::collection::vec(barrier_op(), 1..100)) {
        const PARTIES: u32 = 3;
        let mut tables = MemoryTables::default();
        let mut now = 0u64;
        let mut leases: Vec<u64> = Vec::new();
        let mut deadlines: BTreeMap<u64, u64> = BTreeMap::new();
        let (mut members, mut open, mut generation) = (Vec::<u64>::new(), false, 0u64);
        for op in ops {
            // Leases that lapsed by now leave (the proposal below runs their expiry first).
            let lapsed: Vec<u64> = deadlines.iter().filter(|(_, deadline)| **deadline <= now).map(|(id, _)| *id).collect();
            for id in lapsed {
                deadlines.remove(&id);
                members.retain(|member| *member != id);
            }
            if members.is_empty() {
                open = false;
            }
            match op {
                BarrierOp::Grant => {
                    let id = grant(&mut tables, now, 1_500);
                    leases.push(id);
                    deadlines.insert(id, now + 1_500);
                }
                BarrierOp::Enter { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let request = CoordRequest::BarrierEnter { name: bytes("b"), lease: id, parties: PARTIES, wait_ms: 0 };
                    let result = run(&mut tables, now, request);
                    let expected = if !deadlines.contains_key(&id) {
                        Err(ErrorCode::NotFound)
                    } else if members.contains(&id) {
                        Ok(open)
                    } else if open {
                        Err(ErrorCode::Conflict)
                    } else {
                        members.push(id);
                        if members.len() == PARTIES as usize {
                            open = true;
                            generation += 1;
                        }
                        Ok(open)
                    };
                    let got = result.map(|response| match response {
                        CoordResponse::Barrier { barrier } => barrier.open,
                        other => panic!("unexpected {other:?}"),
                    }).map_err(|error| error.code);
                    prop_assert_eq!(got, expected);
                }
                BarrierOp::Leave { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let result = run(&mut tables, now, CoordRequest::BarrierLeave { name: bytes("b"), lease: id });
                    prop_assert_eq!(result.is_ok(), members.contains(&id));
                    members.retain(|member| *member != id);
                    if members.is_empty() {
                        open = false;
                    }
                }
                BarrierOp::Revoke { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let result = run(&mut tables, now, CoordRequest::lease_revoke(id));
                    prop_assert_eq!(result.is_ok(), deadlines.remove(&id).is_some());
                    members.retain(|member| *member != id);
                    if members.is_empty() {
                        open = false;
                    }
                }
                BarrierOp::Advance { ms } => {
                    now += ms;
                    continue;
                }
            }
            let CoordResponse::Barrier { barrier } = read(&tables, &CoordRequest::BarrierGet { name: bytes("b") }).unwrap().unwrap()
            else { unreachable!() };
            prop_assert_eq!(&barrier.members, &members);
            prop_assert_eq!(barrier.open, open);
            prop_assert_eq!(barrier.generation, generation);
        }
    }
}

#[derive(Clone, Debug)]
enum ServiceOp {
    Register { instance: u8 },
    Heartbeat { instance: u8 },
    Report { instance: u8, health: u8 },
    Deregister { instance: u8 },
    Advance { ms: u64 },
}

fn service_op() -> impl Strategy<Value = ServiceOp> {
    prop_oneof![
        (0u8..4).prop_map(|instance| ServiceOp::Register { instance }),
        (0u8..4).prop_map(|instance| ServiceOp::Heartbeat { instance }),
        (0u8..4, 0u8..3).prop_map(|(instance, health)| ServiceOp::Report { instance, health }),
        (0u8..4).prop_map(|instance| ServiceOp::Deregister { instance }),
        (0u64..3_000).prop_map(|ms| ServiceOp::Advance { ms }),
    ]
}

proptest! {
    /// Registrations (TTL 2 s, removed 3 s after turning critical) against a model of their health and deadlines:
    /// discovery lists exactly the model's instances with the model's health, and `--healthy` only the passing ones.
    #[test]
    fn services_agree_with_a_model(ops in proptest::collection::vec(service_op(), 1..100)) {
        const TTL: u64 = 2_000;
        const GRACE: u64 = 3_000;
        let mut tables = MemoryTables::default();
        let mut now = 0u64;
        let mut model: BTreeMap<String, (Health, u64)> = BTreeMap::new();
        for op in ops {
            let name = |instance: u8| format!("w{instance}");
            let request = match &op {
                ServiceOp::Register { instance } => CoordRequest::ServiceRegister {
                    service: bytes("web"),
                    instance: bytes(name(*instance)),
                    address: "a".into(),
                    tags: Vec::new(),
                    ttl_ms: TTL,
                    deregister_after_ms: GRACE,
                    lease: None,
                },
                ServiceOp::Heartbeat { instance } => {
                    CoordRequest::ServiceHeartbeat { service: bytes("web"), instance: bytes(name(*instance)) }
                }
                ServiceOp::Report { instance, health } => CoordRequest::ServiceHealth {
                    service: bytes("web"),
                    instance: bytes(name(*instance)),
                    health: [Health::Passing, Health::Warning, Health::Critical][*health as usize],
                    note: String::new(),
                },
                ServiceOp::Deregister { instance } => {
                    CoordRequest::ServiceDeregister { service: bytes("web"), instance: bytes(name(*instance)) }
                }
                ServiceOp::Advance { ms } => {
                    now += ms;
                    CoordRequest::Tick
                }
            };
            // Timers due at the proposal's time fire first, each once.
            let due: Vec<String> = model.iter().filter(|(_, (_, deadline))| *deadline <= now).map(|(name, _)| name.clone()).collect();
            for instance in due {
                let (health, deadline) = model[&instance];
                if health == Health::Critical {
                    model.remove(&instance);
                } else {
                    model.insert(instance, (Health::Critical, deadline + GRACE));
                }
            }
            let result = run(&mut tables, now, request);
            match op {
                ServiceOp::Register { instance } => {
                    prop_assert!(result.is_ok());
                    model.insert(name(instance), (Health::Passing, now + TTL));
                }
                ServiceOp::Heartbeat { instance } | ServiceOp::Report { instance, .. } => {
                    let health = match op {
                        ServiceOp::Report { health, .. } => [Health::Passing, Health::Warning, Health::Critical][health as usize],
                        _ => Health::Passing,
                    };
                    let known = model.contains_key(&name(instance));
                    prop_assert_eq!(result.is_ok(), known);
                    if known {
                        model.insert(name(instance), (health, now + TTL));
                    }
                }
                ServiceOp::Deregister { instance } => {
                    prop_assert_eq!(result.is_ok(), model.remove(&name(instance)).is_some());
                }
                ServiceOp::Advance { .. } => {}
            }
            let listed = instances(&tables, false);
            let expected: Vec<(String, Health)> = model.iter().map(|(name, (health, _))| (name.clone(), *health)).collect();
            prop_assert_eq!(&listed, &expected);
            let passing: Vec<(String, Health)> = expected.into_iter().filter(|(_, health)| *health == Health::Passing).collect();
            prop_assert_eq!(instances(&tables, true), passing);
        }
    }
}

#[test]
fn every_change_is_published_and_refusals_publish_nothing() {
    use crate::command::{Command, Proposal};
    use crate::state_machine::apply_proposal;
    let mut tables = MemoryTables::default();
    let events = |tables: &mut MemoryTables, request: CoordRequest| {
        let proposal = Proposal { stamp_ms: 10, commands: vec![Command::Coord(request)] };
        apply_proposal(tables, &mut 0, &proposal).unwrap().events
    };
    let lease = grant(&mut tables, 0, 60_000);
    let created =
        events(&mut tables, CoordRequest::QueueCreate { name: bytes("work"), visibility_ms: 1_000, max_deliveries: 1 });
    assert_eq!(created, vec![CoordEvent::QueueCreated { name: bytes("work") }]);
    let enqueue = CoordRequest::QueueEnqueue { name: bytes("work"), body: bytes("m"), dedup_id: None, group: None };
    assert_eq!(events(&mut tables, enqueue), vec![CoordEvent::QueueEnqueued { name: bytes("work"), id: 1 }]);
    let take = CoordRequest::RateLimitAcquire { name: bytes("api"), rate_per_s: 1, burst: 1, count: 1 };
    assert_eq!(events(&mut tables, take.clone()), vec![CoordEvent::RateLimitTaken { name: bytes("api"), count: 1 }]);
    assert_eq!(events(&mut tables, take), vec![], "a refusal publishes nothing");
    let enter = CoordRequest::BarrierEnter { name: bytes("b"), lease, parties: 1, wait_ms: 0 };
    assert_eq!(
        events(&mut tables, enter),
        vec![
            CoordEvent::BarrierEntered { name: bytes("b"), lease, arrived: 1 },
            CoordEvent::BarrierOpened { name: bytes("b"), generation: 1 }
        ]
    );
    assert_eq!(
        events(&mut tables, CoordRequest::BarrierLeave { name: bytes("b"), lease }),
        vec![
            CoordEvent::BarrierLeft { name: bytes("b"), lease },
            CoordEvent::BarrierClosed { name: bytes("b"), generation: 1 }
        ]
    );
}

#[derive(Clone, Debug)]
enum ElectionOp {
    Grant,
    Campaign { lease: usize },
    Resign { lease: usize },
    Revoke { lease: usize },
    Advance { ms: u64 },
}

fn election_op() -> impl Strategy<Value = ElectionOp> {
    prop_oneof![
        Just(ElectionOp::Grant),
        (0usize..5).prop_map(|lease| ElectionOp::Campaign { lease }),
        (0usize..5).prop_map(|lease| ElectionOp::Resign { lease }),
        (0usize..5).prop_map(|lease| ElectionOp::Revoke { lease }),
        (0u64..2_000).prop_map(|ms| ElectionOp::Advance { ms }),
    ]
}

proptest! {
    /// An election against a model: at most one leader, a campaign wins exactly when nobody (alive) leads, the
    /// leader's lease ending or resigning frees it, and every term's token is larger than the one before.
    #[test]
    fn elections_agree_with_a_model(ops in proptest::collection::vec(election_op(), 1..100)) {
        let mut tables = MemoryTables::default();
        let mut now = 0u64;
        let mut leases: Vec<u64> = Vec::new();
        let mut deadlines: BTreeMap<u64, u64> = BTreeMap::new();
        let (mut leader, mut last_token): (Option<u64>, u64) = (None, 0);
        for op in ops {
            deadlines.retain(|_, deadline| *deadline > now);
            leader = leader.filter(|lease| deadlines.contains_key(lease));
            match op {
                ElectionOp::Grant => {
                    let id = grant(&mut tables, now, 1_500);
                    leases.push(id);
                    deadlines.insert(id, now + 1_500);
                }
                ElectionOp::Campaign { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let request = CoordRequest::ElectionCampaign { name: bytes("e"), lease: id, value: bytes("v"), wait_ms: 0 };
                    let result = run(&mut tables, now, request);
                    let wins = deadlines.contains_key(&id) && leader.is_none_or(|current| current == id);
                    prop_assert_eq!(result.is_ok(), wins);
                    if let Ok(CoordResponse::Election { election }) = result {
                        let term = election.leader.unwrap();
                        if leader.is_none() {
                            prop_assert!(term.token > last_token, "token {} after {}", term.token, last_token);
                            last_token = term.token;
                        } else {
                            prop_assert_eq!(term.token, last_token, "the leader campaigning again keeps its term");
                        }
                        leader = Some(id);
                    }
                }
                ElectionOp::Resign { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let result = run(&mut tables, now, CoordRequest::ElectionResign { name: bytes("e"), lease: id });
                    prop_assert_eq!(result.is_ok(), leader == Some(id));
                    leader = leader.filter(|current| *current != id);
                }
                ElectionOp::Revoke { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let result = run(&mut tables, now, CoordRequest::lease_revoke(id));
                    prop_assert_eq!(result.is_ok(), deadlines.remove(&id).is_some());
                    leader = leader.filter(|current| *current != id);
                }
                ElectionOp::Advance { ms } => {
                    now += ms;
                    continue;
                }
            }
            let CoordResponse::Election { election } = read(&tables, &CoordRequest::ElectionGet { name: bytes("e") }).unwrap().unwrap()
            else { unreachable!() };
            prop_assert_eq!(election.leader.map(|term| term.lease), leader);
            prop_assert_eq!(election.last_token, last_token);
        }
    }
}

#[test]
fn a_queue_listing_shows_only_the_queues_whose_names_start_with_its_prefix() {
    let mut tables = MemoryTables::default();
    for name in ["app/a", "app/b", "jobs/x"] {
        let request = CoordRequest::QueueCreate { name: bytes(name), visibility_ms: 1_000, max_deliveries: 3 };
        run(&mut tables, 1, request).unwrap();
    }
    let names = |tables: &mut MemoryTables, prefix: &str| match run(
        tables,
        2,
        CoordRequest::QueueList { prefix: bytes(prefix) },
    ) {
        Ok(CoordResponse::Queues { queues, truncated: false }) => {
            queues.into_iter().map(|queue| String::from_utf8(queue.name.into_vec()).unwrap()).collect::<Vec<_>>()
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(names(&mut tables, ""), ["app/a", "app/b", "jobs/x"]);
    assert_eq!(names(&mut tables, "app/"), ["app/a", "app/b"]);
    assert_eq!(names(&mut tables, "nothing/"), Vec::<String>::new());
}
