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

/// One valid request of every domain and most shapes.
fn corpus() -> Vec<Request> {
    let key = || bytes("app/key");
    vec![
        Request::Kv(KvRequest::Get { key: key(), consistency: Consistency::Linearizable }),
        Request::Kv(KvRequest::Put { key: key(), value: bytes("value"), lease: Some(7) }),
        Request::Kv(KvRequest::Delete { key: key() }),
        Request::Kv(KvRequest::Cas { key: key(), expected: Some(bytes("a")), value: bytes("b") }),
        Request::Kv(KvRequest::Scan { prefix: bytes("app/"), limit: 10, after: None, consistency: Consistency::Stale }),
        Request::Kv(KvRequest::BatchWrite {
            ops: vec![WriteOp::Put { key: key(), value: bytes("v") }, WriteOp::Delete { key: bytes("k2") }],
        }),
        Request::Kv(KvRequest::Txn {
            compares: vec![Compare { key: key(), op: CompareOp::Equal, target: CompareTarget::Version(0) }],
            success: vec![TxnOp::Put { key: key(), value: bytes("v") }],
            failure: vec![TxnOp::Get { key: key() }],
        }),
        Request::Kv(KvRequest::Compact { revision: 5 }),
        Request::Cluster(ClusterRequest::Status),
        Request::Cluster(ClusterRequest::Join {
            node: MemberNode { public_key: Bytes::from(vec![1; 32]), addrs: vec!["127.0.0.1:1".parse().unwrap()] },
        }),
        Request::Cluster(ClusterRequest::Promote { node_id: 2 }),
        Request::Coord(CoordRequest::LeaseGrant { ttl_ms: 5_000 }),
        Request::Coord(CoordRequest::LockAcquire { name: bytes("app/lock"), lease: 1, wait_ms: 100 }),
        Request::Plugin(PluginRequest::Call { name: "echo".into(), function: "run".into(), input: bytes("x") }),
        Request::Plugin(PluginRequest::List),
        Request::Watch(WatchRequest {
            range: WatchRange::Prefix(bytes("app/")),
            start_revision: 3,
            prev_kv: true,
            only: None,
            progress_ms: 500,
        }),
        Request::Observe(ObserveRequest::Election { name: bytes("leader") }),
        Request::Token(TokenRequest::Create {
            name: "n".into(),
            capabilities: vec![Capability::KvRead { prefix: bytes("app/") }, Capability::PluginCall { plugin: None }],
            ttl_ms: Some(1_000),
            join: None,
        }),
        Request::Token(TokenRequest::Create {
            name: "j".into(),
            capabilities: vec![Capability::ClusterJoin],
            ttl_ms: None,
            join: Some(JoinSpec { uses: 2, voter: true }),
        }),
        Request::Token(TokenRequest::List { after: None }),
        Request::Token(TokenRequest::Revoke { accessor: Bytes::from(vec![3; 16]) }),
    ]
}

fn encoded(request: Request, rng: &mut Rng) -> Vec<u8> {
    let token = (rng.below(2) == 0).then(|| CapabilityToken::from_random([rng.next() as u8; 48]));
    let envelope =
        RequestEnvelope { version: PROTOCOL_VERSION, request_id: rng.next(), timeout_ms: 1_000, token, body: request };
    frame::encode(&envelope).expect("a valid request encodes")
}

fn mutate(mut bytes: Vec<u8>, rng: &mut Rng, donor: &[u8]) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
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

/// Runs one frame through everything a node does with a frame before a service, and the state machine after.
fn exercise(frame_bytes: &[u8], tables: &mut MemoryTables, revision: &mut u64) {
    if frame_bytes.len() < frame::LENGTH_PREFIX_BYTES {
        return;
    }
    let prefix: [u8; 4] = frame_bytes[..4].try_into().unwrap();
    if let Err(error) = frame::body_length(prefix) {
        assert!(matches!(error, frame::FrameError::TooLarge { .. }), "{error:?}");
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
            return;
        }
    };
    let command = match envelope.body {
        Request::Kv(request) => request.validate().ok().map(|()| Command::Kv(request)),
        Request::Coord(request) => request.validate().ok().map(|()| Command::Coord(request.without_wait())),
        Request::Blob(request) => checked_only(request.validate()),
        Request::Plugin(request) => checked_only(request.validate()),
        Request::Watch(request) => checked_only(request.validate()),
        Request::Observe(request) => checked_only(request.validate()),
        Request::Cluster(_) => None,
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
            _ => None,
        }),
    };
    if let Some(command) = command {
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
    let corpus: Vec<Vec<u8>> = corpus().into_iter().map(|request| encoded(request, &mut rng)).collect();
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    for case in 0..cases {
        let frame_bytes = if case % 10 == 0 {
            // Pure noise behind a plausible length prefix.
            let length = rng.below(256);
            let mut bytes = (length as u32).to_be_bytes().to_vec();
            bytes.extend((0..length).map(|_| rng.next() as u8));
            bytes
        } else {
            let original = &corpus[rng.below(corpus.len())];
            let donor = &corpus[rng.below(corpus.len())];
            mutate(original.clone(), &mut rng, donor)
        };
        exercise(&frame_bytes, &mut tables, &mut revision);
        // Keep the state small, so a long run measures the decoder and not an ever-growing table.
        if case % 10_000 == 9_999 {
            tables = MemoryTables::default();
            revision = 0;
        }
    }
    // The unmutated corpus decodes: the test mutates valid requests, not garbage from the start.
    for original in &corpus {
        assert!(RequestEnvelope::decode(&original[4..]).is_ok());
    }
}
