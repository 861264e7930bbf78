//! Exact-output tests of the coordination core, and property tests against reference models.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::command::{Command, CommandOutput, Proposal};
use crate::kv::bytes;
use crate::memory_tables::MemoryTables;
use crate::state_machine::apply_proposal;

/// Applies one command in its own proposal stamped `stamp_ms`.
pub(super) fn run(tables: &mut MemoryTables, stamp_ms: u64, request: CoordRequest) -> Result<CoordResponse, WireError> {
    let proposal = Proposal { stamp_ms, commands: vec![Command::Coord(request)] };
    let mut outcome = apply_proposal(tables, &mut 0, &proposal).expect("memory tables never fault");
    outcome.results.remove(0).map(|output| match output {
        CommandOutput::Coord(response) => response,
        other => panic!("unexpected {other:?}"),
    })
}

pub(super) fn grant(tables: &mut MemoryTables, now: u64, ttl_ms: u64) -> u64 {
    match run(tables, now, CoordRequest::lease_grant(ttl_ms)).unwrap() {
        CoordResponse::Lease { lease } => lease.id,
        other => panic!("unexpected {other:?}"),
    }
}

fn acquire(tables: &mut MemoryTables, now: u64, name: &str, lease: u64) -> Result<u64, WireError> {
    run(tables, now, CoordRequest::LockAcquire { name: bytes(name), lease, wait_ms: 0 }).map(
        |response| match response {
            CoordResponse::Lock { lock } => lock.holder.expect("acquired").token,
            other => panic!("unexpected {other:?}"),
        },
    )
}

#[test]
fn a_lock_listing_shows_the_held_locks_under_its_prefix_only() {
    let mut tables = MemoryTables::default();
    let lease = grant(&mut tables, 1_000, 5_000);
    let main = acquire(&mut tables, 1_100, "jobs/main", lease).unwrap();
    acquire(&mut tables, 1_100, "jobs/other", lease).unwrap();
    acquire(&mut tables, 1_100, "web/x", lease).unwrap();
    run(&mut tables, 1_200, CoordRequest::LockRelease { name: bytes("jobs/main"), lease, token: main }).unwrap();
    let rwlock = CoordRequest::RwLockAcquire { name: bytes("jobs/cfg"), lease, mode: RwMode::Read, wait_ms: 0 };
    run(&mut tables, 1_200, rwlock).unwrap();
    match run(&mut tables, 1_300, CoordRequest::LockList { prefix: bytes("jobs/") }).unwrap() {
        CoordResponse::Locks { locks, rwlocks, truncated } => {
            let names: Vec<&[u8]> = locks.iter().map(|lock| lock.name.as_slice()).collect();
            assert_eq!(names, [b"jobs/other".as_slice()], "released and other prefixes' locks are not listed");
            assert_eq!(rwlocks.len(), 1);
            assert_eq!(rwlocks[0].readers, [lease]);
            assert!(!truncated);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_lock_is_exclusive_and_its_tokens_only_grow() {
    let mut tables = MemoryTables::default();
    let (a, b) = (grant(&mut tables, 1_000, 5_000), grant(&mut tables, 1_000, 5_000));
    let first = acquire(&mut tables, 1_100, "jobs/main", a).unwrap();
    assert_eq!(first, 1);
    assert_eq!(acquire(&mut tables, 1_200, "jobs/main", a).unwrap(), first, "re-acquiring by the holder is idempotent");
    let refused = acquire(&mut tables, 1_200, "jobs/main", b).unwrap_err();
    assert_eq!(refused.code, crate::error::ErrorCode::Conflict);
    assert!(refused.message.contains("held by lease 1"), "{refused:?}");
    // A release with a stale token is refused; with the right one it frees the lock.
    let stale = run(&mut tables, 1_300, CoordRequest::LockRelease { name: bytes("jobs/main"), lease: a, token: 7 });
    assert!(stale.is_err());
    run(&mut tables, 1_300, CoordRequest::LockRelease { name: bytes("jobs/main"), lease: a, token: first }).unwrap();
    assert_eq!(acquire(&mut tables, 1_400, "jobs/main", b).unwrap(), 2);
}

#[test]
fn a_lease_holds_only_what_is_under_its_prefix_and_answers_only_callers_there() {
    let mut tables = MemoryTables::default();
    let granted = run(&mut tables, 1_000, CoordRequest::LeaseGrant { ttl_ms: 5_000, prefix: bytes("jobs/") }).unwrap();
    let CoordResponse::Lease { lease } = granted else { panic!("unexpected {granted:?}") };
    assert_eq!(lease.prefix, bytes("jobs/"));
    assert_eq!(acquire(&mut tables, 1_100, "jobs/main", lease.id).unwrap(), 1);
    let outside = acquire(&mut tables, 1_100, "app/main", lease.id).unwrap_err();
    assert_eq!(outside.code, crate::error::ErrorCode::InvalidArgument);
    assert!(outside.message.contains("outside"), "{outside:?}");
    let key = |key: &str| {
        Command::Kv(crate::kv::KvRequest::Put { key: bytes(key), value: bytes("v"), lease: Some(lease.id) })
    };
    let proposal = Proposal { stamp_ms: 1_200, commands: vec![key("jobs/k"), key("app/k")] };
    let outcome = apply_proposal(&mut tables, &mut 0, &proposal).unwrap();
    assert!(outcome.results[0].is_ok());
    assert_eq!(outcome.results[1].as_ref().unwrap_err().code, crate::error::ErrorCode::InvalidArgument);
    // A caller names the prefix it may access; a lease not under it answers as absent, one under it as itself.
    for claim in ["app/", "jobs/main"] {
        let request = CoordRequest::LeaseKeepAlive { lease: lease.id, prefix: bytes(claim) };
        assert_eq!(run(&mut tables, 1_300, request).unwrap_err().code, crate::error::ErrorCode::NotFound, "{claim}");
        let request = CoordRequest::LeaseRevoke { lease: lease.id, prefix: bytes(claim) };
        assert_eq!(run(&mut tables, 1_300, request).unwrap_err().code, crate::error::ErrorCode::NotFound, "{claim}");
    }
    for claim in ["", "jo", "jobs/"] {
        assert!(run(&mut tables, 1_300, CoordRequest::LeaseGet { lease: lease.id, prefix: bytes(claim) }).is_ok());
    }
    // A listing shows the leases under the prefix it names: the whole keyspace's lease only to a whole-keyspace list.
    let whole = grant(&mut tables, 1_300, 5_000);
    let listed = |tables: &mut MemoryTables, claim: &str| match run(
        tables,
        1_300,
        CoordRequest::LeaseList { prefix: bytes(claim) },
    ) {
        Ok(CoordResponse::Leases { leases, truncated: false }) => {
            leases.iter().map(|lease| lease.id).collect::<Vec<_>>()
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(listed(&mut tables, ""), vec![lease.id, whole]);
    assert_eq!(listed(&mut tables, "jo"), vec![lease.id]);
    assert_eq!(listed(&mut tables, "app/"), Vec::<u64>::new());
    let revoked = run(&mut tables, 1_400, CoordRequest::LeaseRevoke { lease: lease.id, prefix: bytes("jobs/") });
    assert!(matches!(revoked.unwrap(), CoordResponse::Revoked { released_locks, deleted_keys }
        if released_locks == vec![bytes("jobs/main")] && deleted_keys == vec![bytes("jobs/k")]));
}

#[test]
fn a_lapsed_lease_releases_its_locks_by_log_time() {
    let mut tables = MemoryTables::default();
    let lease = grant(&mut tables, 10_000, 2_000);
    assert_eq!(acquire(&mut tables, 10_000, "l", lease).unwrap(), 1);
    // Keep-alive at 11 s pushes the deadline to 13 s.
    run(&mut tables, 11_000, CoordRequest::lease_keep_alive(lease)).unwrap();
    assert!(run(&mut tables, 12_999, CoordRequest::Tick).is_ok());
    assert!(run(&mut tables, 12_999, CoordRequest::lease_get(lease)).is_ok(), "alive before its deadline");
    // A proposal stamped earlier (a new leader with a slower clock) does not move time back.
    run(&mut tables, 13_000, CoordRequest::Tick).unwrap();
    let gone = run(&mut tables, 5_000, CoordRequest::lease_get(lease)).unwrap_err();
    assert_eq!(gone.code, crate::error::ErrorCode::NotFound);
    let other = grant(&mut tables, 5_000, 2_000);
    assert_eq!(acquire(&mut tables, 5_000, "l", other).unwrap(), 2, "the next holder's token is larger");
    assert_eq!(clock(&tables).unwrap(), 13_000);
}

#[test]
fn revoking_a_lease_releases_everything_in_one_entry() {
    let mut tables = MemoryTables::default();
    let lease = grant(&mut tables, 0, 60_000);
    for name in ["a", "b", "c"] {
        acquire(&mut tables, 0, name, lease).unwrap();
    }
    match run(&mut tables, 1, CoordRequest::lease_revoke(lease)).unwrap() {
        CoordResponse::Revoked { released_locks, .. } => {
            assert_eq!(released_locks, vec![bytes("a"), bytes("b"), bytes("c")])
        }
        other => panic!("unexpected {other:?}"),
    }
    for name in ["a", "b", "c"] {
        match run(&mut tables, 2, CoordRequest::LockGet { name: bytes(name) }).unwrap() {
            CoordResponse::Lock { lock } => assert_eq!((lock.holder, lock.last_token), (None, 1)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(tables.coord.keys().all(|key| !key.starts_with(keys::EXPIRY)), "no expiry row left behind");
}

#[test]
fn bad_arguments_are_refused_and_change_nothing() {
    let mut tables = MemoryTables::default();
    let before = tables.coord.clone();
    assert!(run(&mut tables, 0, CoordRequest::lease_grant(10)).is_err());
    assert!(run(&mut tables, 0, CoordRequest::LockAcquire { name: bytes(""), lease: 1, wait_ms: 0 }).is_err());
    assert!(run(&mut tables, 0, CoordRequest::LockAcquire { name: bytes("x"), lease: 99, wait_ms: 0 }).is_err());
    assert!(run(&mut tables, 0, CoordRequest::SequenceNext { name: bytes("s"), count: 0 }).is_err());
    let mixed = CoordRequest::CounterCas {
        name: bytes("c"),
        expected: CounterValue::Signed(0),
        value: CounterValue::Unsigned(1),
    };
    assert!(run(&mut tables, 0, mixed).is_err());
    tables.coord.remove(keys::CLOCK);
    assert_eq!(tables.coord, before);
}

#[test]
fn sequences_hand_out_consecutive_ranges() {
    let mut tables = MemoryTables::default();
    let mut next = |count| match run(&mut tables, 0, CoordRequest::SequenceNext { name: bytes("ids"), count }).unwrap()
    {
        CoordResponse::Sequence { first, .. } => first,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(next(1), 1);
    assert_eq!(next(100), 2);
    assert_eq!(next(1), 102);
}

#[derive(Clone, Debug)]
enum LockOp {
    Grant { ttl_ms: u64 },
    KeepAlive { lease: usize },
    Revoke { lease: usize },
    Acquire { lock: usize, lease: usize },
    Release { lock: usize, lease: usize },
    Advance { ms: u64 },
}

fn lock_op() -> impl Strategy<Value = LockOp> {
    prop_oneof![
        (1_000u64..5_000).prop_map(|ttl_ms| LockOp::Grant { ttl_ms }),
        (0usize..6).prop_map(|lease| LockOp::KeepAlive { lease }),
        (0usize..6).prop_map(|lease| LockOp::Revoke { lease }),
        (0usize..3, 0usize..6).prop_map(|(lock, lease)| LockOp::Acquire { lock, lease }),
        (0usize..3, 0usize..6).prop_map(|(lock, lease)| LockOp::Release { lock, lease }),
        (0u64..3_000).prop_map(|ms| LockOp::Advance { ms }),
    ]
}

proptest! {
    /// Against a model of leases (id to deadline) and locks (name to holder): at most one holder per lock, a holder's
    /// lease is alive, tokens strictly increase per lock, and a lapsed lease holds nothing.
    #[test]
    fn locks_and_leases_agree_with_a_model(ops in proptest::collection::vec(lock_op(), 1..80)) {
        let mut tables = MemoryTables::default();
        let mut now = 1_000u64;
        let mut leases: Vec<u64> = Vec::new();
        let mut deadlines: BTreeMap<u64, (u64, u64)> = BTreeMap::new(); // id -> (deadline, ttl)
        let mut holders: BTreeMap<usize, (u64, u64)> = BTreeMap::new(); // lock -> (lease, token)
        let mut last_tokens: BTreeMap<usize, u64> = BTreeMap::new();
        let names = ["a", "b", "c"];
        for op in ops {
            // The model expires before each command, as the state machine does.
            deadlines.retain(|_, (deadline, _)| *deadline > now);
            holders.retain(|_, (lease, _)| deadlines.contains_key(lease));
            match op {
                LockOp::Advance { ms } => {
                    now += ms;
                    run(&mut tables, now, CoordRequest::Tick).unwrap();
                    continue;
                }
                LockOp::Grant { ttl_ms } => {
                    let id = grant(&mut tables, now, ttl_ms);
                    leases.push(id);
                    deadlines.insert(id, (now + ttl_ms, ttl_ms));
                }
                LockOp::KeepAlive { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let result = run(&mut tables, now, CoordRequest::lease_keep_alive(id));
                    prop_assert_eq!(result.is_ok(), deadlines.contains_key(&id));
                    if let Some((deadline, ttl)) = deadlines.get_mut(&id) {
                        *deadline = now + *ttl;
                    }
                }
                LockOp::Revoke { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let result = run(&mut tables, now, CoordRequest::lease_revoke(id));
                    prop_assert_eq!(result.is_ok(), deadlines.remove(&id).is_some());
                    holders.retain(|_, (holder, _)| *holder != id);
                }
                LockOp::Acquire { lock, lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let result = acquire(&mut tables, now, names[lock], id);
                    let expected_ok = deadlines.contains_key(&id)
                        && holders.get(&lock).is_none_or(|(holder, _)| *holder == id);
                    prop_assert_eq!(result.is_ok(), expected_ok, "acquire {} by {}", names[lock], id);
                    if let Ok(token) = result {
                        if let Some((_, held)) = holders.get(&lock) {
                            prop_assert_eq!(token, *held);
                        } else {
                            let last = last_tokens.entry(lock).or_default();
                            prop_assert!(token > *last, "token {} after {}", token, last);
                            *last = token;
                            holders.insert(lock, (id, token));
                        }
                    }
                }
                LockOp::Release { lock, lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let token = holders.get(&lock).map_or(0, |(_, token)| *token);
                    let result = run(
                        &mut tables,
                        now,
                        CoordRequest::LockRelease { name: bytes(names[lock]), lease: id, token },
                    );
                    let expected_ok = holders.get(&lock).is_some_and(|(holder, _)| *holder == id);
                    prop_assert_eq!(result.is_ok(), expected_ok);
                    if expected_ok {
                        holders.remove(&lock);
                    }
                }
            }
            // The state machine's view matches the model's.
            for (index, name) in names.iter().enumerate() {
                let CoordResponse::Lock { lock } = read(&tables, &CoordRequest::LockGet { name: bytes(*name) }).unwrap().unwrap()
                else { unreachable!() };
                prop_assert_eq!(lock.holder.map(|holder| (holder.lease, holder.token)), holders.get(&index).copied());
            }
        }
    }

    /// Counters against i128 arithmetic: a result outside the kind's range is refused and changes nothing.
    #[test]
    fn counters_agree_with_wide_arithmetic(
        unsigned in any::<bool>(),
        deltas in proptest::collection::vec(prop_oneof![any::<i64>(), -10i64..10], 1..40),
    ) {
        let mut tables = MemoryTables::default();
        let (initial, min, max) = if unsigned {
            (CounterValue::Unsigned(0), 0i128, i128::from(u64::MAX))
        } else {
            (CounterValue::Signed(0), i128::from(i64::MIN), i128::from(i64::MAX))
        };
        let mut model = 0i128;
        for delta in deltas {
            let result = run(&mut tables, 0, CoordRequest::CounterAdd { name: bytes("n"), delta, initial });
            let next = model + i128::from(delta);
            if (min..=max).contains(&next) {
                model = next;
                let value = match result.unwrap() {
                    CoordResponse::Counter { value: Some(CounterValue::Signed(v)) } => i128::from(v),
                    CoordResponse::Counter { value: Some(CounterValue::Unsigned(v)) } => i128::from(v),
                    other => panic!("unexpected {other:?}"),
                };
                prop_assert_eq!(value, model);
            } else {
                prop_assert_eq!(result.unwrap_err().code, crate::error::ErrorCode::Conflict);
            }
        }
    }
}

#[test]
fn a_fenced_write_lands_only_while_its_token_is_current() {
    use crate::kv::{Compare, CompareOp, CompareTarget, KvRequest, KvResponse, TxnOp};
    let mut tables = MemoryTables::default();
    let first_lease = grant(&mut tables, 0, 1_000);
    let first = acquire(&mut tables, 0, "res", first_lease).unwrap();
    let fenced = |token: u64| KvRequest::Txn {
        compares: vec![Compare { key: bytes("res"), op: CompareOp::Equal, target: CompareTarget::LockToken(token) }],
        success: vec![TxnOp::Put { key: bytes("data"), value: bytes(format!("by {token}")) }],
        failure: Vec::new(),
    };
    let write = |tables: &mut MemoryTables, stamp_ms: u64, token: u64| {
        let proposal = Proposal { stamp_ms, commands: vec![Command::Kv(fenced(token))] };
        match apply_proposal(tables, &mut 0, &proposal).unwrap().results.remove(0).unwrap() {
            CommandOutput::Kv(KvResponse::Txn { succeeded, .. }) => succeeded,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(write(&mut tables, 500, first), "the holder writes");
    // The first lease lapses (a paused process); another client takes the lock; the old holder's write is refused.
    let second_lease = grant(&mut tables, 2_000, 5_000);
    let second = acquire(&mut tables, 2_000, "res", second_lease).unwrap();
    assert!(second > first);
    assert!(!write(&mut tables, 2_100, first), "a stale token is fenced off");
    assert!(write(&mut tables, 2_100, second));
    assert_eq!(tables.rows.get(b"data".as_slice()).unwrap().value, format!("by {second}").into_bytes());
}

#[test]
fn keys_tied_to_a_lease_go_with_it() {
    use crate::kv::KvRequest;
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    let kv = |tables: &mut MemoryTables, revision: &mut u64, stamp_ms: u64, request: KvRequest| {
        let proposal = Proposal { stamp_ms, commands: vec![Command::Kv(request)] };
        apply_proposal(tables, revision, &proposal).unwrap().results.remove(0).map(|output| match output {
            CommandOutput::Kv(response) => response,
            other => panic!("unexpected {other:?}"),
        })
    };
    let leased = |key: &str, lease| KvRequest::Put { key: bytes(key), value: bytes("up"), lease: Some(lease) };
    // Unknown lease: refused, nothing written.
    assert_eq!(
        kv(&mut tables, &mut revision, 0, leased("svc/a", 9)).unwrap_err().code,
        crate::error::ErrorCode::NotFound
    );
    assert!(tables.rows.is_empty());
    let lease = grant(&mut tables, 0, 2_000);
    kv(&mut tables, &mut revision, 0, leased("svc/a", lease)).unwrap();
    kv(&mut tables, &mut revision, 0, leased("svc/b", lease)).unwrap();
    // A plain put unties svc/b: it outlives the lease.
    kv(&mut tables, &mut revision, 0, crate::state_machine::put_request(b"svc/b", b"kept")).unwrap();
    assert_eq!(revision, 3);
    // The lease lapses at 2 s: svc/a is deleted at one new revision, svc/b stays.
    kv(&mut tables, &mut revision, 2_000, KvRequest::Get { key: bytes("x"), consistency: Default::default() }).unwrap();
    assert_eq!(revision, 4);
    assert!(!tables.rows.contains_key(b"svc/a".as_slice()));
    assert_eq!(tables.rows.get(b"svc/b".as_slice()).unwrap().value, b"kept");
    assert!(tables.coord.keys().all(|key| !key.starts_with(keys::KEY_LEASE)), "no index row left behind");
}

#[derive(Clone, Debug)]
enum SemaphoreOp {
    Grant,
    Acquire { lease: usize, permits: u32 },
    Release { lease: usize },
    Revoke { lease: usize },
    Advance { ms: u64 },
}

fn semaphore_op() -> impl Strategy<Value = SemaphoreOp> {
    prop_oneof![
        Just(SemaphoreOp::Grant),
        (0usize..6, 1u32..4).prop_map(|(lease, permits)| SemaphoreOp::Acquire { lease, permits }),
        (0usize..6).prop_map(|lease| SemaphoreOp::Release { lease }),
        (0usize..6).prop_map(|lease| SemaphoreOp::Revoke { lease }),
        (0u64..2_500).prop_map(|ms| SemaphoreOp::Advance { ms }),
    ]
}

proptest! {
    /// A semaphore of capacity 5 against a model: permits in use never exceed the capacity, every acquisition that
    /// fits is granted, lapsed or revoked leases give their permits back, tokens strictly increase.
    #[test]
    fn semaphores_never_exceed_their_capacity(ops in proptest::collection::vec(semaphore_op(), 1..80)) {
        const CAPACITY: u32 = 5;
        let mut tables = MemoryTables::default();
        let mut now = 0u64;
        let mut leases: Vec<u64> = Vec::new();
        let mut deadlines: BTreeMap<u64, u64> = BTreeMap::new();
        let mut held: BTreeMap<u64, u32> = BTreeMap::new();
        let mut last_token = 0;
        for op in ops {
            deadlines.retain(|_, deadline| *deadline > now);
            held.retain(|lease, _| deadlines.contains_key(lease));
            match op {
                SemaphoreOp::Grant => {
                    let id = grant(&mut tables, now, 2_000);
                    leases.push(id);
                    deadlines.insert(id, now + 2_000);
                }
                SemaphoreOp::Acquire { lease, permits } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let request = CoordRequest::SemaphoreAcquire { name: bytes("pool"), lease: id, permits, capacity: CAPACITY, wait_ms: 0 };
                    let result = run(&mut tables, now, request);
                    let used: u32 = held.values().sum();
                    let fits = deadlines.contains_key(&id) && !held.contains_key(&id) && used + permits <= CAPACITY;
                    prop_assert_eq!(result.is_ok(), fits);
                    if let Ok(CoordResponse::Semaphore { semaphore }) = result {
                        prop_assert!(semaphore.last_token > last_token);
                        last_token = semaphore.last_token;
                        held.insert(id, permits);
                    }
                }
                SemaphoreOp::Release { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let result = run(&mut tables, now, CoordRequest::SemaphoreRelease { name: bytes("pool"), lease: id });
                    prop_assert_eq!(result.is_ok(), held.remove(&id).is_some());
                }
                SemaphoreOp::Revoke { lease } => {
                    let Some(&id) = leases.get(lease) else { continue };
                    let result = run(&mut tables, now, CoordRequest::lease_revoke(id));
                    prop_assert_eq!(result.is_ok(), deadlines.remove(&id).is_some());
                    held.remove(&id);
                }
                SemaphoreOp::Advance { ms } => {
                    now += ms;
                    run(&mut tables, now, CoordRequest::Tick).unwrap();
                    continue;
                }
            }
            let CoordResponse::Semaphore { semaphore } =
                read(&tables, &CoordRequest::SemaphoreGet { name: bytes("pool") }).unwrap().unwrap()
            else { unreachable!() };
            prop_assert!(semaphore.used() <= CAPACITY);
            prop_assert_eq!(semaphore.used(), held.values().sum::<u32>());
        }
    }
}

#[derive(Clone, Debug)]
enum RwOp {
    Acquire { lease: usize, write: bool },
    Downgrade { lease: usize },
    Release { lease: usize },
    Revoke { lease: usize },
}

fn rw_op() -> impl Strategy<Value = RwOp> {
    prop_oneof![
        (0usize..4, any::<bool>()).prop_map(|(lease, write)| RwOp::Acquire { lease, write }),
        (0usize..4).prop_map(|lease| RwOp::Downgrade { lease }),
        (0usize..4).prop_map(|lease| RwOp::Release { lease }),
        (0usize..4).prop_map(|lease| RwOp::Revoke { lease }),
    ]
}

proptest! {
    /// Read-write locks against a model: a writer excludes everyone else, readers share, write tokens strictly increase,
    /// and a revoked lease's hold is gone.
    #[test]
    fn rwlocks_agree_with_a_model(ops in proptest::collection::vec(rw_op(), 1..80)) {
        let mut tables = MemoryTables::default();
        let leases: Vec<u64> = (0..4).map(|_| grant(&mut tables, 0, 60_000)).collect();
        let mut alive = [true; 4];
        let mut writer: Option<usize> = None;
        let mut readers: std::collections::BTreeSet<usize> = Default::default();
        let mut last_token = 0;
        for op in ops {
            match op {
                RwOp::Acquire { lease, write } => {
                    let mode = if write { RwMode::Write } else { RwMode::Read };
                    let request = CoordRequest::RwLockAcquire { name: bytes("cfg"), lease: leases[lease], mode, wait_ms: 0 };
                    let result = run(&mut tables, 1, request);
                    let holds = writer == Some(lease) || readers.contains(&lease);
                    let ok = alive[lease] && !holds && writer.is_none() && (!write || readers.is_empty());
                    prop_assert_eq!(result.is_ok(), ok);
                    if let Ok(CoordResponse::RwLock { rwlock }) = result {
                        if write {
                            let token = rwlock.writer.unwrap().token;
                            prop_assert!(token > last_token);
                            last_token = token;
                            writer = Some(lease);
                        } else {
                            readers.insert(lease);
                        }
                    }
                }
                RwOp::Downgrade { lease } => {
                    let result = run(&mut tables, 1, CoordRequest::RwLockDowngrade { name: bytes("cfg"), lease: leases[lease] });
                    prop_assert_eq!(result.is_ok(), writer == Some(lease));
                    if writer == Some(lease) {
                        writer = None;
                        readers.insert(lease);
                    }
                }
                RwOp::Release { lease } => {
                    let result = run(&mut tables, 1, CoordRequest::RwLockRelease { name: bytes("cfg"), lease: leases[lease] });
                    let held = writer == Some(lease) || readers.contains(&lease);
                    prop_assert_eq!(result.is_ok(), held);
                    if writer == Some(lease) { writer = None; }
                    readers.remove(&lease);
                }
                RwOp::Revoke { lease } => {
                    let result = run(&mut tables, 1, CoordRequest::lease_revoke(leases[lease]));
                    prop_assert_eq!(result.is_ok(), alive[lease]);
                    alive[lease] = false;
                    if writer == Some(lease) { writer = None; }
                    readers.remove(&lease);
                }
            }
            let CoordResponse::RwLock { rwlock } =
                read(&tables, &CoordRequest::RwLockGet { name: bytes("cfg") }).unwrap().unwrap()
            else { unreachable!() };
            prop_assert!(rwlock.writer.is_none() || rwlock.readers.is_empty(), "a writer never shares");
            prop_assert_eq!(rwlock.writer.map(|w| w.lease), writer.map(|index| leases[index]));
            let mut model: Vec<u64> = readers.iter().map(|index| leases[*index]).collect();
            let mut actual = rwlock.readers.clone();
            model.sort_unstable();
            actual.sort_unstable();
            prop_assert_eq!(actual, model);
        }
    }
}

#[test]
fn waits_never_reach_the_log_and_wake_only_on_their_resource() {
    let parked = CoordRequest::RwLockAcquire { name: bytes("cfg"), lease: 1, mode: RwMode::Write, wait_ms: 5_000 };
    assert_eq!(parked.wait_ms(), 5_000);
    assert_eq!(parked.without_wait().wait_ms(), 0);
    assert!(parked.woken_by(&CoordEvent::RwLockReleased { name: bytes("cfg"), lease: 2 }));
    assert!(!parked.woken_by(&CoordEvent::RwLockReleased { name: bytes("other"), lease: 2 }));
    assert!(!parked.woken_by(&CoordEvent::LockReleased { name: bytes("cfg"), lease: 2, token: 1 }));
    let too_long = CoordRequest::LockAcquire { name: bytes("l"), lease: 1, wait_ms: LOCK_WAIT_MS_MAX + 1 };
    assert!(too_long.validate().is_err());
}

proptest! {
    /// A bucket never grants more than its burst plus what the elapsed log time refilled, never holds more than its
    /// burst, and a refused request changes nothing.
    #[test]
    fn rate_limits_never_grant_more_than_refilled(
        steps in proptest::collection::vec((0u64..400, 1u32..4), 1..100),
    ) {
        const RATE: u32 = 10;
        const BURST: u32 = 5;
        let mut tables = MemoryTables::default();
        let (mut now, mut granted) = (10_000u64, 0u64);
        let start = now;
        for (advance, count) in steps {
            now += advance;
            let request = CoordRequest::RateLimitAcquire { name: bytes("api"), rate_per_s: RATE, burst: BURST, count };
            let before = tables.coord.clone();
            match run(&mut tables, now, request) {
                Ok(CoordResponse::RateLimit { limit }) => {
                    granted += u64::from(count);
                    prop_assert!(limit.available <= BURST);
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(error) => {
                    prop_assert_eq!(error.code, crate::error::ErrorCode::Conflict);
                    let mut after = tables.coord.clone();
                    after.remove(keys::CLOCK);
                    let mut before = before;
                    before.remove(keys::CLOCK);
                    prop_assert_eq!(after, before, "a refusal wrote something");
                }
            }
            let allowed = u64::from(BURST) + (now - start) * u64::from(RATE) / 1_000;
            prop_assert!(granted <= allowed, "granted {} > allowed {}", granted, allowed);
        }
    }
}

#[test]
fn a_rate_limit_keeps_its_configuration_until_reset() {
    let mut tables = MemoryTables::default();
    let take = |rate_per_s| CoordRequest::RateLimitAcquire { name: bytes("api"), rate_per_s, burst: 2, count: 1 };
    run(&mut tables, 0, take(1)).unwrap();
    assert_eq!(run(&mut tables, 0, take(5)).unwrap_err().code, crate::error::ErrorCode::Conflict);
    run(&mut tables, 0, take(1)).unwrap();
    let limited = run(&mut tables, 0, take(1)).unwrap_err();
    assert!(limited.message.contains("retry after 1000 ms"), "{limited:?}");
    run(&mut tables, 1_000, take(1)).unwrap();
    run(&mut tables, 1_000, CoordRequest::RateLimitReset { name: bytes("api") }).unwrap();
    run(&mut tables, 1_000, take(5)).unwrap();
}

#[test]
fn an_election_has_one_leader_and_its_terms_only_grow() {
    let mut tables = MemoryTables::default();
    let (a, b) = (grant(&mut tables, 0, 2_000), grant(&mut tables, 0, 60_000));
    let campaign = |lease, value: &str| CoordRequest::ElectionCampaign {
        name: bytes("leader-x"),
        lease,
        value: bytes(value),
        wait_ms: 0,
    };
    let term = |response: CoordResponse| match response {
        CoordResponse::Election { election } => {
            election.leader.map(|leader| (leader.lease, leader.token, leader.value))
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(term(run(&mut tables, 0, campaign(a, "a:1")).unwrap()), Some((a, 1, bytes("a:1"))));
    assert!(run(&mut tables, 0, campaign(b, "b:1")).is_err(), "one leader at a time");
    // The leader proclaims a new value within its term.
    assert_eq!(term(run(&mut tables, 10, campaign(a, "a:2")).unwrap()), Some((a, 1, bytes("a:2"))));
    // Its lease lapses: the next campaign wins with a larger token.
    assert_eq!(term(run(&mut tables, 2_000, campaign(b, "b:1")).unwrap()), Some((b, 2, bytes("b:1"))));
    run(&mut tables, 2_001, CoordRequest::ElectionResign { name: bytes("leader-x"), lease: b }).unwrap();
    assert_eq!(term(read(&tables, &CoordRequest::ElectionGet { name: bytes("leader-x") }).unwrap().unwrap()), None);
    let too_big = campaign(b, &"x".repeat(election::ELECTION_VALUE_BYTES_MAX + 1));
    assert_eq!(run(&mut tables, 2_002, too_big).unwrap_err().code, crate::error::ErrorCode::TooLarge);
}
