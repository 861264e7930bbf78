//! Fuzz-style test of the frame decoder and every request type: random frames and mutations (bit flips, byte
//! changes, truncations, insertions, spliced chunks) of valid requests of every domain go through the length prefix
//! check, the envelope decoder, each request's validation and, for requests that become log commands, the state
//! machine. Nothing may panic, and every refusal is an error with a stable code.
//!
//! `PANDO_FUZZ_CASES` sets the number of cases (default 20,000, a few seconds in the test profile); the release run
//! for the closing note used 1,000,000: `PANDO_FUZZ_CASES=1000000 cargo test --release -p pando-protocol --test
//! fuzz_frames`. `PANDO_FUZZ_SEED` replays one seed.

use pando_protocol::cluster::{ClusterRequest, MemberNode};
use pando_protocol::command::{Command, Proposal};
use pando_protocol::coord::CoordRequest;
use pando_protocol::envelope::{PROTOCOL_VERSION, Request, RequestEnvelope};
use pando_protocol::error::ErrorCode;
use pando_protocol::frame;
use pando_protocol::hook::api::{HookRequest, HookWatchRequest};
use pando_protocol::hook::durable::{HookSpec, HookTarget, StartAt};
use pando_protocol::job::{JobCommand, JobKind, JobOutput, JobQuery, JobRequest, JobSpec, Missed, StateName};
use pando_protocol::kv::{Bytes, Compare, CompareOp, CompareTarget, Consistency, KvRequest, TxnOp, WriteOp, bytes};
use pando_protocol::memory_tables::MemoryTables;
use pando_protocol::observe::ObserveRequest;
use pando_protocol::plugin::PluginRequest;
use pando_protocol::state_machine::apply_proposal;
use pando_protocol::token::{Capability, CapabilityToken, JoinSpec, TokenRequest};
use pando_protocol::watch::{WatchRange, WatchRequest};

/// xorshift64*: small, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

/// Bytes of a length at or around the limits, or short and random.
fn any_bytes(rng: &mut Rng) -> Bytes {
    let length =
        [0, 1, 16, 4_096, 4_097, 300_000][rng.below(6)].min(rng.below(64) + if rng.below(8) == 0 { 5_000 } else { 0 });
    Bytes::from((0..length).map(|_| rng.next() as u8).collect::<Vec<u8>>())
}

/// A number at an edge, or random.
fn any_u64(rng: &mut Rng) -> u64 {
    [0, 1, u64::MAX, u64::from(u32::MAX) + 1, rng.next() % 100_000, rng.next()][rng.below(6)]
}

/// One request of every domain and most shapes: `valid` ones as a well-behaved client sends them, otherwise with
/// fields drawn at and around the limits.
fn corpus(rng: &mut Rng, valid: bool) -> Vec<Request> {
    let key = |rng: &mut Rng| if valid { bytes(format!("app/{}", rng.below(8))) } else { any_bytes(rng) };
    let number = |rng: &mut Rng, usual: u64| if valid { usual } else { any_u64(rng) };
    vec![
        Request::Kv(KvRequest::Get { key: key(rng), consistency: Consistency::Linearizable }),
        Request::Kv(KvRequest::Put {
            key: key(rng),
            value: key(rng),
            lease: (rng.below(2) == 0).then(|| number(rng, 7)),
        }),
        Request::Kv(KvRequest::Delete { key: key(rng) }),
        Request::Kv(KvRequest::Cas { key: key(rng), expected: Some(key(rng)), value: key(rng) }),
        Request::Kv(KvRequest::Scan {
            prefix: key(rng),
            limit: number(rng, 10) as u32,
            after: None,
            consistency: Consistency::Stale,
        }),
        Request::Kv(KvRequest::BatchWrite {
            ops: vec![WriteOp::Put { key: key(rng), value: key(rng) }, WriteOp::Delete { key: key(rng) }],
        }),
        Request::Kv(KvRequest::Txn {
            compares: vec![Compare {
                key: key(rng),
                op: CompareOp::Equal,
                target: CompareTarget::Version(number(rng, 0)),
            }],
            success: vec![TxnOp::Put { key: key(rng), value: key(rng) }],
            failure: vec![TxnOp::Get { key: key(rng) }],
        }),
        Request::Kv(KvRequest::Compact { revision: number(rng, 5) }),
        Request::Cluster(ClusterRequest::Status),
        Request::Cluster(ClusterRequest::Join {
            node: MemberNode { public_key: key(rng), addrs: vec!["127.0.0.1:1".parse().unwrap()] },
        }),
        Request::Cluster(ClusterRequest::Promote { node_id: number(rng, 2) }),
        Request::Cluster(ClusterRequest::RotateNodeKey {
            node_id: number(rng, 2),
            public_key: key(rng),
            proof: key(rng),
        }),
        Request::Coord(CoordRequest::LeaseList { prefix: key(rng) }),
        Request::Coord(CoordRequest::QueueList { prefix: key(rng) }),
        Request::Coord(CoordRequest::LeaseGrant { ttl_ms: number(rng, 5_000), prefix: key(rng) }),
        Request::Coord(CoordRequest::LockAcquire {
            name: key(rng),
            lease: number(rng, 1),
            wait_ms: number(rng, 100) as u32,
        }),
        Request::Plugin(PluginRequest::Call { name: "echo".into(), function: "run".into(), input: key(rng) }),
        Request::Plugin(PluginRequest::List),
        Request::Watch(WatchRequest {
            range: WatchRange::Prefix(key(rng)),
            start_revision: number(rng, 3),
            prev_kv: true,
            only: None,
            progress_ms: number(rng, 500) as u32,
        }),
        Request::Observe(ObserveRequest::Election { name: key(rng) }),
        Request::Hook(HookRequest::Create {
            name: if valid { format!("h{}", rng.below(3)) } else { String::from_utf8_lossy(&any_bytes(rng)).into() },
            spec: HookSpec {
                pattern: if valid { "kv.put.app.>".into() } else { String::from_utf8_lossy(&any_bytes(rng)).into() },
                target: HookTarget::Exec {
                    argv: vec!["/bin/true".into()],
                    shell: false,
                    timeout_ms: number(rng, 1_000),
                },
                ack_wait_ms: number(rng, 1_000),
                max_deliver: number(rng, 3) as u32,
                backoff_ms: vec![number(rng, 10)],
                max_in_flight: number(rng, 1) as u32,
            },
            start: StartAt::Seq(number(rng, 1)),
        }),
        Request::Hook(HookRequest::Publish { subject: "deploy.started".into(), data: key(rng) }),
        Request::Hook(HookRequest::Replay { name: "h1".into(), from: number(rng, 2) }),
        Request::Hook(HookRequest::Redrive { name: "h1".into() }),
        Request::Hook(HookRequest::DeadLetters {
            name: "h1".into(),
            after: number(rng, 0),
            limit: number(rng, 10) as u32,
        }),
        Request::HookWatch(HookWatchRequest {
            pattern: if valid { "kv.>".into() } else { String::from_utf8_lossy(&any_bytes(rng)).into() },
            from_seq: number(rng, 1),
        }),
        Request::Token(TokenRequest::Create {
            name: "n".into(),
            capabilities: vec![Capability::KvRead { prefix: key(rng) }, Capability::PluginCall { plugin: None }],
            ttl_ms: Some(number(rng, 1_000)),
            join: None,
        }),
        Request::Token(TokenRequest::Create {
            name: "j".into(),
            capabilities: vec![Capability::ClusterJoin],
            ttl_ms: None,
            join: Some(JoinSpec { uses: number(rng, 2) as u32, voter: true }),
        }),
        Request::Token(TokenRequest::List { after: None }),
        Request::Token(TokenRequest::Revoke { accessor: key(rng) }),
        Request::Token(TokenRequest::RotateMemberSecret),
        Request::Job(JobRequest::Command(JobCommand::Submit {
            spec: JobSpec {
                payload: key(rng),
                priority: number(rng, 1) as u8,
                delay_ms: number(rng, 0),
                timeout_ms: number(rng, 60_000),
                depends_on: if valid { Vec::new() } else { vec![any_u64(rng)] },
                unique_key: Some(String::from_utf8_lossy(&key(rng)).into_owned()),
                ..JobSpec::new(JobKind::Shell { argv: vec!["true".into()], env: Vec::new(), cwd: None })
            },
        })),
        Request::Job(JobRequest::Command(JobCommand::Claim {
            node: 1,
            worker: 0,
            queues: vec!["default".into()],
            most: number(rng, 4) as u32,
            lease_ms: number(rng, 5_000),
        })),
        Request::Job(JobRequest::Command(JobCommand::Complete {
            id: number(rng, 1),
            fence: number(rng, 1),
            output: JobOutput { exit_code: Some(0), tail: key(rng), blob: None, bytes: 0 },
        })),
        Request::Job(JobRequest::Command(JobCommand::CronCreate {
            name: "nightly".into(),
            schedule: if valid { "0 3 * * *".into() } else { String::from_utf8_lossy(&any_bytes(rng)).into_owned() },
            missed: Missed::Once,
            spec: JobSpec::new(JobKind::Plugin { plugin: "thumbs".into(), function: "resize".into() }),
        })),
        Request::Job(JobRequest::Query(JobQuery::List {
            state: Some(StateName::Dead),
            queue: None,
            after: number(rng, 0),
            limit: number(rng, 100) as u32,
        })),
    ]
}

fn encoded(request: Request, rng: &mut Rng) -> Vec<u8> {
    let token = (rng.below(2) == 0).then(|| CapabilityToken::from_random([rng.next() as u8; 48]));
    let envelope =
        RequestEnvelope { version: PROTOCOL_VERSION, request_id: rng.next(), timeout_ms: 1_000, token, body: request };
    frame::encode(&envelope).expect("a valid request encodes")
}

fn mutate(mut bytes: Vec<u8>, rng: &mut Rng, donor: &[u8]) -> Vec<u8> {
    for _ in 0..=rng.below(2) {
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes[at] = [0x00, 0xff, 0x7f, 0x80, 0xc0, 0xc1, 0xdc, 0xdd, 0xde, 0xdf][rng.below(10)];
            }
            2 => bytes.truncate(rng.below(bytes.len() + 1)),
            3 => {
                let at = rng.below(bytes.len() + 1);
                let noise: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                bytes.splice(at..at, noise);
            }
            4 if !donor.is_empty() => {
                let start = rng.below(donor.len());
                let end = (start + rng.below(64)).min(donor.len());
                let at = rng.below(bytes.len() + 1);
                bytes.splice(at..at, donor[start..end].iter().copied());
            }
            _ => {
                // Claims a huge array or map length where a small one was.
                let at = rng.below(bytes.len() + 1);
                bytes.splice(at..at, [0xdd, 0xff, 0xff, 0xff, 0xff]);
            }
        }
    }
    bytes
}

/// A request served outside the log: its validation answers, with a caller's code.
fn checked_only(validated: Result<(), pando_protocol::error::WireError>) -> Option<Command> {
    if let Err(error) = validated {
        assert_ne!(error.code, ErrorCode::Internal, "{error:?}");
    }
    None
}

/// How far the cases got.
#[derive(Debug, Default)]
struct Reached {
    too_short: u64,
    refused_prefix: u64,
    refused_envelope: u64,
    decoded: u64,
    applied: u64,
}

/// Runs one frame through everything a node does with a frame before a service, and the state machine after.
fn exercise(frame_bytes: &[u8], tables: &mut MemoryTables, revision: &mut u64, reached: &mut Reached) {
    if frame_bytes.len() < frame::LENGTH_PREFIX_BYTES {
        reached.too_short += 1;
        return;
    }
    let prefix: [u8; 4] = frame_bytes[..4].try_into().unwrap();
    if let Err(error) = frame::body_length(prefix) {
        assert!(matches!(error, frame::FrameError::TooLarge { .. }), "{error:?}");
        reached.refused_prefix += 1;
        return;
    }
    let envelope = match RequestEnvelope::decode(&frame_bytes[4..]) {
        Ok(envelope) => envelope,
        Err(rejected) => {
            let code = rejected.error.code;
            assert!(
                matches!(code, ErrorCode::Malformed | ErrorCode::UnknownRequest | ErrorCode::UnsupportedVersion),
                "{rejected:?}"
            );
            reached.refused_envelope += 1;
            return;
        }
    };
    reached.decoded += 1;
    let command = match envelope.body {
        Request::Kv(request) => request.validate().ok().map(|()| Command::Kv(request)),
        Request::Coord(request) => request.validate().ok().map(|()| Command::Coord(request.without_wait())),
        Request::Blob(request) => checked_only(request.validate()),
        Request::Plugin(request) => checked_only(request.validate()),
        Request::Watch(request) => checked_only(request.validate()),
        Request::Observe(request) => checked_only(request.validate()),
        Request::Cluster(_) => None,
        Request::HookWatch(request) => checked_only(request.validate()),
        Request::Job(JobRequest::Command(command)) => command.validate().ok().map(|()| Command::Job(command)),
        Request::Job(request) => checked_only(request.validate()),
        Request::Fs(pando_protocol::fs::FsRequest::Command { caller, kind }) => {
            let command = pando_protocol::fs::FsCommand { caller, kind };
            command.validate().ok().map(|()| Command::Fs(command))
        }
        Request::Fs(request) => checked_only(request.validate()),
        Request::Hook(request) => match request.command() {
            Some(command) => request.validate().ok().map(|()| Command::Hook(command)),
            None => checked_only(request.validate()),
        },
        Request::Token(request) => request.validate().ok().and_then(|()| match request {
            TokenRequest::Create { name, capabilities, ttl_ms, join } => {
                Some(Command::Token(pando_protocol::token::records::TokenCommand::Create {
                    accessor: Bytes::from(vec![1; 16]),
                    secret_hash: Bytes::from(vec![2; 32]),
                    name,
                    capabilities,
                    ttl_ms: ttl_ms.or(Some(1_000)),
                    join,
                }))
            }
            TokenRequest::Revoke { accessor } => {
                Some(Command::Token(pando_protocol::token::records::TokenCommand::Revoke { accessor }))
            }
            TokenRequest::RotateMemberSecret => {
                Some(Command::Token(pando_protocol::token::records::TokenCommand::RotateMemberSecret {
                    secret: pando_protocol::token::records::SecretBytes(Bytes::from(vec![3; 32])),
                }))
            }
            _ => None,
        }),
    };
    if let Some(command) = command {
        reached.applied += 1;
        let proposal = Proposal { stamp_ms: 1_000, commands: vec![command] };
        let outcome = apply_proposal(tables, revision, &proposal).expect("memory tables never fault");
        for result in outcome.results {
            if let Err(error) = result {
                assert_ne!(error.code, ErrorCode::Internal, "{error:?}");
            }
        }
    }
}

#[test]
fn random_and_mutated_frames_of_every_request_type_never_panic_and_are_answered_with_codes() {
    let cases: u64 = std::env::var("PANDO_FUZZ_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(20_000);
    let seed: u64 = std::env::var("PANDO_FUZZ_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(0x5eed);
    let mut rng = Rng(seed | 1);
    let valid: Vec<Vec<u8>> = corpus(&mut rng, true).into_iter().map(|request| encoded(request, &mut rng)).collect();
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    let mut reached = Reached::default();
    let started = std::time::Instant::now();
    for case in 0..cases {
        let frame_bytes = if case % 10 < 4 {
            // A request of every kind with fields at and around the limits.
            let requests = corpus(&mut rng, false);
            let request = requests[rng.below(requests.len())].clone();
            encoded(request, &mut rng)
        } else if case % 10 == 4 {
            // Pure noise behind a plausible length prefix.
            let length = rng.below(256);
            let mut bytes = (length as u32).to_be_bytes().to_vec();
            bytes.extend((0..length).map(|_| rng.next() as u8));
            bytes
        } else {
            let original = &valid[rng.below(valid.len())];
            let donor = &valid[rng.below(valid.len())];
            mutate(original.clone(), &mut rng, donor)
        };
        exercise(&frame_bytes, &mut tables, &mut revision, &mut reached);
        // Keep the state small, so a long run measures the decoder and not an ever-growing table.
        if case % 10_000 == 9_999 {
            tables = MemoryTables::default();
            revision = 0;
        }
    }
    println!("{cases} cases (seed {seed}) in {:?}: {reached:?}", started.elapsed());
    // Mutations must leave enough requests whole to reach the state machine, or the test only exercises the decoder.
    assert!(reached.applied * 20 >= cases, "only {} of {cases} cases reached the state machine", reached.applied);
    // The unmutated corpus decodes: the test mutates valid requests, not garbage from the start.
    for original in &valid {
        assert!(RequestEnvelope::decode(&original[4..]).is_ok());
    }
}
