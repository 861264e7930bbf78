//! The hook log and durable hooks over the in-memory tables: subjects of what commits, fenced delivery, retries,
//! dead letters, redrive, replay, trimming, and a property test of exactly-once acknowledgement in order against any
//! interleaving of claims, failures and crashes of the delivering node.

use proptest::prelude::*;

use super::durable::*;
use super::*;
use crate::command::{Command, CommandOutput, Proposal};
use crate::coord::CoordRequest;
use crate::error::ErrorCode;
use crate::kv::{KvRequest, bytes};
use crate::memory_tables::MemoryTables;
use crate::state_machine::apply_proposal;

fn put(tables: &mut MemoryTables, revision: &mut u64, now: u64, key: &str) -> Vec<HookEvent> {
    let proposal = Proposal {
        stamp_ms: now,
        commands: vec![Command::Kv(KvRequest::Put { key: bytes(key), value: bytes("v"), lease: None })],
    };
    apply_proposal(tables, revision, &proposal).expect("memory tables never fault").hooks
}

fn hook(
    tables: &mut MemoryTables,
    now: u64,
    command: HookCommand,
) -> (Result<HookResponse, WireError>, Vec<HookEvent>) {
    let proposal = Proposal { stamp_ms: now, commands: vec![Command::Hook(command)] };
    let mut outcome = apply_proposal(tables, &mut 0, &proposal).expect("memory tables never fault");
    let result = outcome.results.remove(0).map(|output| match output {
        CommandOutput::Hook(response) => response,
        other => panic!("unexpected {other:?}"),
    });
    (result, outcome.hooks)
}

fn ok(tables: &mut MemoryTables, now: u64, command: HookCommand) -> HookResponse {
    hook(tables, now, command).0.expect("the command succeeds")
}

fn exec_spec(pattern: &str) -> HookSpec {
    HookSpec::new(pattern, HookTarget::Exec { argv: vec!["/bin/true".into()], shell: false, timeout_ms: 1_000 })
}

fn create(tables: &mut MemoryTables, name: &str, spec: HookSpec) {
    ok(tables, 1, HookCommand::Create { name: name.into(), spec, start: StartAt::Seq(1) });
}

fn claim(tables: &mut MemoryTables, now: u64, name: &str, node: u64) -> u64 {
    match ok(tables, now, HookCommand::Claim { name: name.into(), node, fence: 0 }) {
        HookResponse::Claimed { fence, .. } => fence,
        other => panic!("unexpected {other:?}"),
    }
}

fn begin(tables: &mut MemoryTables, now: u64, name: &str, fence: u64, most: u32) -> Vec<Delivery> {
    match ok(tables, now, HookCommand::Begin { name: name.into(), fence, most }) {
        HookResponse::Deliveries { deliveries, .. } => deliveries,
        other => panic!("unexpected {other:?}"),
    }
}

fn ack(tables: &mut MemoryTables, now: u64, delivery: &Delivery) -> Result<HookResponse, WireError> {
    let command = HookCommand::Ack {
        name: delivery.hook.clone(),
        seq: delivery.event.seq,
        attempt: delivery.attempt,
        fence: delivery.fence,
    };
    hook(tables, now, command).0
}

fn nack(tables: &mut MemoryTables, now: u64, delivery: &Delivery, error: &str) -> HookResponse {
    let command = HookCommand::Nack {
        name: delivery.hook.clone(),
        seq: delivery.event.seq,
        attempt: delivery.attempt,
        fence: delivery.fence,
        error: error.into(),
    };
    ok(tables, now, command)
}

#[test]
fn every_committed_change_takes_the_next_sequence_on_its_subject() {
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    let first = put(&mut tables, &mut revision, 1_000, "app/db");
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].seq, first[0].subject.as_str(), first[0].revision), (1, "kv.put.app.db", 1));
    // A delete of a missing key changes nothing and records nothing.
    let proposal = Proposal { stamp_ms: 1_001, commands: vec![Command::Kv(KvRequest::Delete { key: bytes("nope") })] };
    assert!(apply_proposal(&mut tables, &mut revision, &proposal).unwrap().hooks.is_empty());
    // A lease grant and a lock acquisition are coordination events, in command order.
    let proposal = Proposal {
        stamp_ms: 1_002,
        commands: vec![
            Command::Coord(CoordRequest::lease_grant(5_000)),
            Command::Coord(CoordRequest::LockAcquire { name: bytes("jobs/main"), lease: 1, wait_ms: 0 }),
        ],
    };
    let events = apply_proposal(&mut tables, &mut revision, &proposal).unwrap().hooks;
    let subjects: Vec<(u64, &str)> = events.iter().map(|event| (event.seq, event.subject.as_str())).collect();
    assert_eq!(subjects, [(2, "lease.granted.1"), (3, "lock.acquired.jobs.main")]);
    // The lease lapses: its expiry is recorded before the proposal's own commands.
    let events = put(&mut tables, &mut revision, 10_000, "x");
    let subjects: Vec<&str> = events.iter().map(|event| event.subject.as_str()).collect();
    assert_eq!(subjects, ["lock.released.jobs.main", "lease.expired.1", "kv.put.x"]);
    assert_eq!(read_log(&tables, 1, 100).unwrap().len(), 6, "the log holds what the proposals reported");
}

#[test]
fn user_events_stay_out_of_the_clusters_subjects() {
    let mut tables = MemoryTables::default();
    let (result, events) =
        hook(&mut tables, 1, HookCommand::Publish { subject: "deploy.started".into(), data: bytes("{}") });
    assert_eq!(result.unwrap(), HookResponse::Published { seq: 1 });
    assert_eq!(events[0].body, EventBody::User { data: bytes("{}") });
    for subject in ["kv.put.x", "sys.hook.dlq.a", "deploy.*", "", "a..b"] {
        let (result, events) =
            hook(&mut tables, 1, HookCommand::Publish { subject: subject.into(), data: bytes("{}") });
        assert!(result.is_err(), "{subject:?} was published");
        assert!(events.is_empty());
    }
    let big = crate::kv::Bytes::from(vec![0u8; crate::limits::HOOK_PAYLOAD_BYTES_MAX + 1]);
    let (result, _) = hook(&mut tables, 1, HookCommand::Publish { subject: "a".into(), data: big });
    assert_eq!(result.unwrap_err().code, ErrorCode::TooLarge);
}

#[test]
fn a_retry_curve_longer_than_the_retries_is_refused_not_cut() {
    let mut spec = exec_spec("kv.>");
    spec.max_deliver = 3;
    spec.backoff_ms = vec![1_000, 5_000, 30_000];
    let error = spec.validate().unwrap_err();
    assert!(error.message.contains("only 2 retries"), "{error:?}");
    spec.backoff_ms.pop();
    spec.validate().unwrap();
    assert_eq!((spec.backoff_after(1), spec.backoff_after(2), spec.backoff_after(9)), (1_000, 5_000, 5_000));
    for bad in ["", "has space", "dots.in.it", &"x".repeat(200)] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_durable_hook_delivers_its_matches_in_order_and_refuses_stale_acks() {
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    create(&mut tables, "audit", exec_spec("kv.put.app.>"));
    for key in ["app/a", "other/x", "app/b"] {
        put(&mut tables, &mut revision, 100, key);
    }
    let fence = claim(&mut tables, 200, "audit", 1);
    // A second node cannot claim while the first holds it.
    let (refused, _) = hook(&mut tables, 300, HookCommand::Claim { name: "audit".into(), node: 2, fence: 0 });
    assert_eq!(refused.unwrap_err().code, ErrorCode::Busy);
    let first = begin(&mut tables, 300, "audit", fence, 8);
    assert_eq!(first.len(), 1, "one in flight: strictly in order");
    assert_eq!(first[0].event.subject, "kv.put.app.a");
    assert!(begin(&mut tables, 300, "audit", fence, 8).is_empty(), "nothing new until the first is acked");
    ack(&mut tables, 400, &first[0]).unwrap();
    let error = ack(&mut tables, 400, &first[0]).unwrap_err();
    assert_eq!(error.code, ErrorCode::Conflict, "an event is acked once");
    let second = begin(&mut tables, 400, "audit", fence, 8);
    assert_eq!(second[0].event.subject, "kv.put.app.b");
    // Node 1's claim lapses; node 2 claims: node 1's delivery is due at once, and its late ack is refused.
    let takeover = claim(&mut tables, 200 + crate::limits::HOOK_CLAIM_TTL_MS + 1, "audit", 2);
    assert!(takeover > fence);
    let now = 200 + crate::limits::HOOK_CLAIM_TTL_MS + 2;
    assert_eq!(ack(&mut tables, now, &second[0]).unwrap_err().code, ErrorCode::Conflict);
    let again = begin(&mut tables, now, "audit", takeover, 8);
    assert_eq!((again[0].event.seq, again[0].attempt, again[0].fence), (second[0].event.seq, 2, takeover));
    ack(&mut tables, now, &again[0]).unwrap();
    let record = get(&tables, "audit").unwrap().unwrap();
    assert_eq!((record.stats.acked, record.stats.delivered, record.pending), (2, 3, 0));
}

#[test]
fn failures_back_off_then_die_with_a_notice_and_redrive_brings_them_back() {
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    let mut spec = exec_spec("kv.>");
    spec.max_deliver = 3;
    spec.backoff_ms = vec![1_000, 5_000];
    spec.ack_wait_ms = 2_000;
    create(&mut tables, "flaky", spec);
    put(&mut tables, &mut revision, 10, "k");
    let fence = claim(&mut tables, 100, "flaky", 1);
    let one = begin(&mut tables, 100, "flaky", fence, 1).remove(0);
    assert_eq!(nack(&mut tables, 150, &one, "exit 1"), HookResponse::Nacked { dead: false });
    assert!(begin(&mut tables, 1_000, "flaky", fence, 1).is_empty(), "the first backoff step is 1 s");
    let two = begin(&mut tables, 1_150, "flaky", fence, 1).remove(0);
    assert_eq!(two.attempt, 2);
    // No answer within the ack wait: a failed attempt, then the second backoff step (renewing the claim meanwhile).
    assert_eq!(claim_renew(&mut tables, 2_000, fence), fence);
    assert!(begin(&mut tables, 3_200, "flaky", fence, 1).is_empty());
    assert_eq!(claim_renew(&mut tables, 4_000, fence), fence);
    assert_eq!(claim_renew(&mut tables, 6_000, fence), fence);
    assert_eq!(claim_renew(&mut tables, 8_000, fence), fence);
    let three = begin(&mut tables, 8_300, "flaky", fence, 1).remove(0);
    assert_eq!(three.attempt, 3);
    let (result, events) = hook(
        &mut tables,
        8_400,
        HookCommand::Nack { name: "flaky".into(), seq: 1, attempt: 3, fence, error: "exit 2".into() },
    );
    assert_eq!(result.unwrap(), HookResponse::Nacked { dead: true });
    assert_eq!(events[0].subject, "sys.hook.dlq.flaky");
    let (letters, more) = dead_letters(&tables, "flaky", 0, 10).unwrap();
    assert!(!more);
    assert_eq!((letters[0].event.seq, letters[0].attempts, letters[0].error.as_str()), (1, 3, "exit 2"));
    // Redrive: fresh attempts, delivered once more.
    assert_eq!(
        ok(&mut tables, 8_500, HookCommand::Redrive { name: "flaky".into() }),
        HookResponse::Redriven { count: 1, more: false }
    );
    let redriven = begin(&mut tables, 8_600, "flaky", fence, 1);
    assert_eq!((redriven[0].event.seq, redriven[0].attempt), (1, 1));
    ack(&mut tables, 8_700, &redriven[0]).unwrap();
    assert!(dead_letters(&tables, "flaky", 0, 10).unwrap().0.is_empty());
    // Its own notice (seq 2) is not delivered to the hook that produced it even though `kv.>` does not match it
    // anyway; a hook on `sys.>` does see it.
    create(&mut tables, "watcher", exec_spec("sys.>"));
    let fence = claim(&mut tables, 8_800, "watcher", 1);
    let seen = begin(&mut tables, 8_800, "watcher", fence, 1);
    assert_eq!(seen[0].event.subject, "sys.hook.dlq.flaky");
}

fn claim_renew(tables: &mut MemoryTables, now: u64, fence: u64) -> u64 {
    match ok(tables, now, HookCommand::Claim { name: "flaky".into(), node: 1, fence }) {
        HookResponse::Claimed { fence, .. } => fence,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn replay_rewinds_and_fences_what_was_in_flight() {
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    create(&mut tables, "r", exec_spec("kv.>"));
    for key in ["a", "b", "c"] {
        put(&mut tables, &mut revision, 10, key);
    }
    let fence = claim(&mut tables, 20, "r", 1);
    for _ in 0..3 {
        let delivery = begin(&mut tables, 20, "r", fence, 1).remove(0);
        ack(&mut tables, 20, &delivery).unwrap();
    }
    assert_eq!(
        ok(&mut tables, 30, HookCommand::Replay { name: "r".into(), from: 2 }),
        HookResponse::Replayed { from: 2 }
    );
    assert_eq!(
        hook(&mut tables, 30, HookCommand::Begin { name: "r".into(), fence, most: 1 }).0.unwrap_err().code,
        ErrorCode::Conflict,
        "a replay fences the old claim"
    );
    let fence = claim(&mut tables, 40, "r", 1);
    let again = begin(&mut tables, 40, "r", fence, 8);
    assert_eq!(again.iter().map(|delivery| delivery.event.seq).collect::<Vec<_>>(), [2]);
}

#[test]
fn the_log_is_trimmed_only_past_what_every_hook_began() {
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    create(&mut tables, "slow", exec_spec("kv.>"));
    for index in 0..10 {
        put(&mut tables, &mut revision, 10, &format!("k{index}"));
    }
    let trimmed = ok(&mut tables, 20, HookCommand::Trim { keep_events: 2 });
    assert_eq!(trimmed, HookResponse::Trimmed { dropped: 0, floor: 1 }, "the hook has begun nothing");
    let fence = claim(&mut tables, 30, "slow", 1);
    for _ in 0..5 {
        let delivery = begin(&mut tables, 30, "slow", fence, 1).remove(0);
        ack(&mut tables, 30, &delivery).unwrap();
    }
    assert_eq!(
        ok(&mut tables, 40, HookCommand::Trim { keep_events: 2 }),
        HookResponse::Trimmed { dropped: 5, floor: 6 }
    );
    ok(&mut tables, 50, HookCommand::Delete { name: "slow".into() });
    assert_eq!(
        ok(&mut tables, 60, HookCommand::Trim { keep_events: 2 }),
        HookResponse::Trimmed { dropped: 3, floor: 9 }
    );
    assert_eq!(read_log(&tables, 1, 100).unwrap().iter().map(|event| event.seq).collect::<Vec<_>>(), [9, 10]);
}

/// What happens to a hook, step by step, as nodes and the clock would make it happen.
#[derive(Clone, Debug)]
enum Step {
    Write,
    /// Node claims (a crash and restart of the delivering node looks like this too: a new claim).
    Claim(u64),
    Begin(u64),
    /// The node answers its oldest outstanding delivery: ack, nack, term, or lose it (the node crashed).
    Answer(u8),
    Advance(u64),
    Redrive,
    Replay(u64),
}

/// Claims, deliveries, failures and the clock, without operators' redrives and replays.
fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Write),
        1 => (1..4u64).prop_map(Step::Claim),
        3 => (1..4u64).prop_map(Step::Begin),
        4 => (0..8u8).prop_map(Step::Answer),
        2 => (1..3_000u64).prop_map(Step::Advance),
    ]
}

/// All of it, operators included.
fn churn() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Write),
        1 => (1..3u64).prop_map(Step::Claim),
        3 => (1..3u64).prop_map(Step::Begin),
        4 => (0..8u8).prop_map(Step::Answer),
        2 => (1..2_000u64).prop_map(Step::Advance),
        1 => Just(Step::Redrive),
        1 => (1..12u64).prop_map(Step::Replay),
    ]
}

/// An answer the state machine took.
enum Taken {
    Ack(u64),
    Term(u64),
    Other,
}

/// One hook `h` driven by [`Step`]s: what the property tests share.
struct Driver {
    tables: MemoryTables,
    revision: u64,
    now: u64,
    /// Sequences of the writes' events.
    written: Vec<u64>,
    fences: std::collections::BTreeMap<u64, u64>,
    outstanding: Vec<Delivery>,
}

impl Driver {
    fn new(spec: HookSpec) -> Driver {
        let mut tables = MemoryTables::default();
        create(&mut tables, "h", spec);
        Driver {
            tables,
            revision: 0,
            now: 10,
            written: Vec::new(),
            fences: Default::default(),
            outstanding: Vec::new(),
        }
    }

    fn apply(&mut self, step: Step) -> Option<Taken> {
        let now = self.now;
        match step {
            Step::Write => {
                let events = put(&mut self.tables, &mut self.revision, now, &format!("k{}", self.written.len()));
                self.written.extend(events.iter().map(|event| event.seq));
            }
            Step::Claim(node) => {
                if let (Ok(HookResponse::Claimed { fence, .. }), _) =
                    hook(&mut self.tables, now, HookCommand::Claim { name: "h".into(), node, fence: 0 })
                {
                    self.fences.insert(node, fence);
                }
            }
            Step::Begin(node) => {
                let fence = self.fences.get(&node).copied().unwrap_or(0);
                if let (Ok(HookResponse::Deliveries { deliveries, .. }), _) =
                    hook(&mut self.tables, now, HookCommand::Begin { name: "h".into(), fence, most: 2 })
                {
                    self.outstanding.extend(deliveries);
                }
            }
            Step::Answer(how) => {
                if self.outstanding.is_empty() {
                    return None;
                }
                let delivery = self.outstanding.remove(0);
                let (name, seq, attempt, fence) =
                    ("h".to_string(), delivery.event.seq, delivery.attempt, delivery.fence);
                let (command, taken) = match how {
                    0..=3 => (HookCommand::Ack { name, seq, attempt, fence }, Taken::Ack(seq)),
                    4 | 5 => (HookCommand::Nack { name, seq, attempt, fence, error: "failed".into() }, Taken::Other),
                    6 => (HookCommand::Term { name, seq, attempt, fence, error: "bad input".into() }, Taken::Term(seq)),
                    _ => return None,
                };
                return hook(&mut self.tables, now, command).0.is_ok().then_some(taken);
            }
            Step::Advance(ms) => self.now += ms,
            Step::Redrive => {
                let _ = hook(&mut self.tables, now, HookCommand::Redrive { name: "h".into() });
            }
            Step::Replay(from) => {
                let _ = hook(&mut self.tables, now, HookCommand::Replay { name: "h".into(), from });
            }
        }
        None
    }

    /// Much later, node 9 claims the hook and acks everything it is given, reporting each ack.
    fn settle(&mut self, mut acked: impl FnMut(u64)) {
        self.now += 10_000;
        let fence = match hook(&mut self.tables, self.now, HookCommand::Claim { name: "h".into(), node: 9, fence: 0 }).0
        {
            Ok(HookResponse::Claimed { fence, .. }) => fence,
            other => panic!("unexpected {other:?}"),
        };
        for _ in 0..(self.written.len() * 4 + 20) {
            self.now += 1_000;
            let _ = hook(&mut self.tables, self.now, HookCommand::Claim { name: "h".into(), node: 9, fence });
            for delivery in begin(&mut self.tables, self.now, "h", fence, 8) {
                ack(&mut self.tables, self.now, &delivery).unwrap();
                acked(delivery.event.seq);
            }
        }
    }

    fn record(&self) -> HookRecord {
        get(&self.tables, "h").unwrap().unwrap()
    }
}

proptest! {
    /// Whatever the claims, crashes, failures and clock: an event is acked at most once, never after it died, and in
    /// sequence order; once everything settles, every written event was acked or is a dead letter, and the dead ones
    /// failed `max_deliver` attempts (or were terminated).
    #[test]
    fn every_event_is_acked_once_in_order_or_dead(steps in proptest::collection::vec(step(), 1..120)) {
        let mut spec = exec_spec("kv.>");
        spec.max_deliver = 3;
        spec.ack_wait_ms = 500;
        spec.backoff_ms = vec![100];
        let mut driver = Driver::new(spec);
        let mut acked: Vec<u64> = Vec::new();
        let mut terminated = std::collections::BTreeSet::new();
        for step in steps {
            match driver.apply(step) {
                Some(Taken::Ack(seq)) => acked.push(seq),
                Some(Taken::Term(seq)) => {
                    terminated.insert(seq);
                }
                _ => {}
            }
        }
        driver.settle(|seq| acked.push(seq));
        let mut sorted = acked.clone();
        sorted.sort_unstable();
        sorted.dedup();
        prop_assert_eq!(&sorted, &acked, "acked once each, in sequence order");
        let (letters, _) = dead_letters(&driver.tables, "h", 0, 1_000).unwrap();
        let mut settled: Vec<u64> = acked.clone();
        settled.extend(letters.iter().map(|letter| letter.event.seq));
        settled.sort_unstable();
        prop_assert_eq!(&settled, &driver.written, "every event acked or dead, once");
        for letter in &letters {
            prop_assert!(letter.attempts == 3 || terminated.contains(&letter.event.seq), "{:?}", letter);
        }
        let record = driver.record();
        prop_assert_eq!(record.pending, 0);
        prop_assert_eq!(record.dead_letters as usize, letters.len());
    }

    /// Replays and redrives among claims, failures and crashes: the hook's counters always equal its rows, and once
    /// one node delivers everything the hook settles with nothing pending (it never stalls on a phantom count).
    #[test]
    fn counters_match_the_rows_through_replays_and_redrives(steps in proptest::collection::vec(churn(), 1..100)) {
        let mut spec = exec_spec("kv.>");
        spec.max_deliver = 2;
        spec.ack_wait_ms = 500;
        spec.max_in_flight = 2;
        let mut driver = Driver::new(spec);
        for step in steps {
            driver.apply(step);
            let record = driver.record();
            prop_assert_eq!(record.pending, rows(&driver.tables, b"Hp/"), "pending count and rows");
            prop_assert_eq!(record.dead_letters, rows(&driver.tables, b"Hd/"), "dead-letter count and rows");
        }
        driver.settle(|_| {});
        let record = driver.record();
        prop_assert_eq!(record.pending, 0, "settled: {:?}", record);
        prop_assert_eq!(record.pending, rows(&driver.tables, b"Hp/"));
        prop_assert_eq!(record.dead_letters, rows(&driver.tables, b"Hd/"));
    }
}

#[test]
fn a_hook_at_its_in_flight_bound_is_told_there_is_nothing_more_to_take_now() {
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    let mut spec = exec_spec("kv.>");
    spec.max_in_flight = 2;
    create(&mut tables, "h", spec);
    for index in 0..5 {
        put(&mut tables, &mut revision, 2, &format!("k{index}"));
    }
    let fence = claim(&mut tables, 3, "h", 1);
    let taken = begin(&mut tables, 4, "h", fence, 10);
    assert_eq!(taken.len(), 2, "two in flight at most");
    // Both still running, three events waiting: a Begin takes nothing and must not say "more" (its worker would
    // begin again at once, a log entry per round trip, for as long as the attempts run).
    match ok(&mut tables, 5, HookCommand::Begin { name: "h".into(), fence, most: 10 }) {
        HookResponse::Deliveries { deliveries, more, next_due_ms } => {
            assert!(deliveries.is_empty());
            assert!(!more, "nothing more can be taken until an attempt is answered");
            assert!(next_due_ms.is_some(), "the worker looks again when the ack wait runs out");
        }
        other => panic!("unexpected {other:?}"),
    }
    // One answered: room again, and the next Begin takes the next event.
    ack(&mut tables, 6, &taken[0]).unwrap();
    assert_eq!(begin(&mut tables, 7, "h", fence, 10).len(), 1);
}

#[test]
fn a_read_of_the_log_is_bounded_in_bytes_and_takes_at_least_one_event() {
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    let value = crate::kv::Bytes::from(vec![b'v'; crate::limits::VALUE_SIZE_BYTES_MAX]);
    for index in 0..6 {
        let proposal = Proposal {
            stamp_ms: 1,
            commands: vec![Command::Kv(KvRequest::Put {
                key: bytes(format!("big/{index}")),
                value: value.clone(),
                lease: None,
            })],
        };
        apply_proposal(&mut tables, &mut revision, &proposal).unwrap();
    }
    let page = read_log(&tables, 1, 100).unwrap();
    assert!((1..=4).contains(&page.len()), "{} events of 1 MiB in one read", page.len());
    assert_eq!(read_log(&tables, 6, 100).unwrap().len(), 1);
}

fn rows(tables: &MemoryTables, prefix: &[u8]) -> u32 {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&1u16.to_be_bytes());
    key.push(b'h');
    tables.coord.keys().filter(|row| row.starts_with(&key)).count() as u32
}

#[test]
fn a_replay_over_a_dead_event_takes_it_off_the_dead_letter_list_and_delivers_it_once() {
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    let mut spec = exec_spec("kv.>");
    spec.max_deliver = 1;
    create(&mut tables, "r", spec);
    put(&mut tables, &mut revision, 10, "a");
    let fence = claim(&mut tables, 20, "r", 1);
    let first = begin(&mut tables, 20, "r", fence, 1).remove(0);
    assert_eq!(nack(&mut tables, 30, &first, "no"), HookResponse::Nacked { dead: true });
    ok(&mut tables, 40, HookCommand::Replay { name: "r".into(), from: first.event.seq });
    let record = get(&tables, "r").unwrap().unwrap();
    assert_eq!((record.dead_letters, record.pending), (0, 0));
    assert_eq!(
        ok(&mut tables, 41, HookCommand::Redrive { name: "r".into() }),
        HookResponse::Redriven { count: 0, more: false }
    );
    let fence = claim(&mut tables, 50, "r", 1);
    let again = begin(&mut tables, 50, "r", fence, 1);
    assert_eq!(again.iter().map(|delivery| delivery.event.seq).collect::<Vec<_>>(), [first.event.seq]);
    ack(&mut tables, 60, &again[0]).unwrap();
    put(&mut tables, &mut revision, 70, "b");
    assert_eq!(begin(&mut tables, 80, "r", fence, 1).len(), 1, "the hook goes on");
}

#[test]
fn a_hook_created_again_hands_out_new_fences_and_refuses_the_old_claimant() {
    let mut tables = MemoryTables::default();
    create(&mut tables, "x", exec_spec("kv.>"));
    let old = claim(&mut tables, 10, "x", 1);
    ok(&mut tables, 20, HookCommand::Delete { name: "x".into() });
    create(&mut tables, "x", exec_spec("kv.>"));
    let (renewal, _) = hook(&mut tables, 30, HookCommand::Claim { name: "x".into(), node: 1, fence: old });
    assert_eq!(renewal.unwrap_err().code, ErrorCode::Conflict, "the old claimant stops");
    let new = claim(&mut tables, 40, "x", 2);
    assert!(new > old, "fences never repeat: {old} then {new}");
}
