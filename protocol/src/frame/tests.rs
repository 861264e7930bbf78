//! Golden bytes of representative frames, round trips of every message, and refusal of bad frames.

use crate::blob as pando_blob;
use proptest::prelude::*;

use super::*;
use crate::cluster::{ClusterRequest, ClusterResponse, ClusterStatus, MemberStatus};
use crate::envelope::{RequestEnvelope, Response, ResponseEnvelope};
use crate::error::{ErrorCode, ErrorDetail, WireError};
use crate::kv::*;
use crate::token::CapabilityToken;
use crate::{PROTOCOL_VERSION, Request};

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn put_envelope() -> RequestEnvelope {
    RequestEnvelope {
        version: PROTOCOL_VERSION,
        request_id: 7,
        timeout_ms: 1000,
        token: None,
        body: Request::Kv(KvRequest::Put { key: bytes("k"), value: bytes(vec![0u8, 255]), lease: None }),
    }
}

/// Pins the bytes of a put request. If this changes, the wire protocol changed: bump the version instead.
#[test]
fn golden_put_request() {
    let frame = encode(&put_envelope()).unwrap();
    assert_eq!(
        hex(&frame),
        "0000004b85a776657273696f6e01aa726571756573745f696407aa74696d656f75745f6d73cd03e8a5746f6b656ec0a4626f6479\
         81a24b7681a3507574 82a36b6579c4016ba576616c7565c40200ff"
            .replace(' ', "")
    );
}

/// Pins the bytes of a conflict error response.
#[test]
fn golden_conflict_response() {
    let response = ResponseEnvelope {
        request_id: 9,
        body: Err(WireError::new(ErrorCode::Conflict, "x").with_detail(ErrorDetail::Current { entry: None })),
    };
    let frame = encode(&response).unwrap();
    assert_eq!(
        hex(&frame),
        "0000004882aa726571756573745f696409a4626f647981a3457272 83a4636f6465a8434f4e464c494354a76d657373616765a178\
         a664657461696c81a7 43757272656e7481a5656e747279c0"
            .replace(' ', "")
    );
}

#[test]
fn oversized_prefix_is_refused_before_reading() {
    let prefix = ((crate::limits::FRAME_SIZE_BYTES_MAX + 1) as u32).to_be_bytes();
    assert!(matches!(body_length(prefix), Err(FrameError::TooLarge { .. })));
    assert_eq!(body_length(16u32.to_be_bytes()), Ok(16));
}

#[test]
fn garbage_and_unknown_variants_get_stable_codes() {
    let garbage = RequestEnvelope::decode(&[0xc1, 0x00, 0x13]).unwrap_err();
    assert_eq!((garbage.request_id, garbage.error.code), (None, ErrorCode::Malformed));

    #[derive(serde::Serialize)]
    struct Future {
        version: u16,
        request_id: u64,
        timeout_ms: u32,
        token: Option<CapabilityToken>,
        body: std::collections::BTreeMap<String, u8>,
    }
    let future = Future {
        version: PROTOCOL_VERSION,
        request_id: 42,
        timeout_ms: 5,
        token: None,
        body: [("Teleport".to_string(), 1u8)].into_iter().collect(),
    };
    let rejected = RequestEnvelope::decode(&rmp_serde::to_vec_named(&future).unwrap()).unwrap_err();
    assert_eq!((rejected.request_id, rejected.error.code), (Some(42), ErrorCode::UnknownRequest));

    let mut old = put_envelope();
    old.version = 99;
    let rejected = RequestEnvelope::decode(&rmp_serde::to_vec_named(&old).unwrap()).unwrap_err();
    assert_eq!((rejected.request_id, rejected.error.code), (Some(7), ErrorCode::UnsupportedVersion));
}

fn any_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

fn any_entry() -> impl Strategy<Value = KvEntry> {
    let blob = proptest::option::of((any::<[u8; 32]>(), any::<u64>()))
        .prop_map(|blob| blob.map(|(hash, size)| pando_blob::BlobRef { hash: pando_blob::BlobHash(hash), size }));
    (any_bytes(), any_bytes(), any::<u64>(), any::<u64>(), any::<u64>(), blob).prop_map(
        |(key, value, c, m, v, blob)| KvEntry { key, value, create_revision: c, mod_revision: m, version: v, blob },
    )
}

fn any_consistency() -> impl Strategy<Value = Consistency> {
    prop_oneof![Just(Consistency::Linearizable), Just(Consistency::Stale)]
}

fn any_txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        (any_bytes(), any_bytes()).prop_map(|(key, value)| TxnOp::Put { key, value }),
        any_bytes().prop_map(|key| TxnOp::Delete { key }),
        any_bytes().prop_map(|key| TxnOp::Get { key }),
    ]
}

fn any_compare() -> impl Strategy<Value = Compare> {
    let op =
        prop_oneof![Just(CompareOp::Equal), Just(CompareOp::NotEqual), Just(CompareOp::Less), Just(CompareOp::Greater)];
    let target = prop_oneof![
        any_bytes().prop_map(CompareTarget::Value),
        any::<u64>().prop_map(CompareTarget::Version),
        any::<u64>().prop_map(CompareTarget::ModRevision),
        any::<u64>().prop_map(CompareTarget::CreateRevision),
    ];
    (any_bytes(), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
}

fn any_kv_request() -> impl Strategy<Value = KvRequest> {
    let ops = proptest::collection::vec(
        prop_oneof![
            (any_bytes(), any_bytes()).prop_map(|(key, value)| WriteOp::Put { key, value }),
            any_bytes().prop_map(|key| WriteOp::Delete { key }),
        ],
        0..4,
    );
    prop_oneof![
        (any_bytes(), any_consistency()).prop_map(|(key, consistency)| KvRequest::Get { key, consistency }),
        (any_bytes(), any_bytes(), proptest::option::of(any::<u64>())).prop_map(|(key, value, lease)| KvRequest::Put {
            key,
            value,
            lease
        }),
        any_bytes().prop_map(|key| KvRequest::Delete { key }),
        (any_bytes(), proptest::option::of(any_bytes()), any_bytes())
            .prop_map(|(key, expected, value)| KvRequest::Cas { key, expected, value }),
        (any_bytes(), any_bytes()).prop_map(|(key, expected)| KvRequest::Cad { key, expected }),
        (any_bytes(), any::<u32>(), proptest::option::of(any_bytes()), any_consistency())
            .prop_map(|(prefix, limit, after, consistency)| KvRequest::Scan { prefix, limit, after, consistency }),
        (proptest::collection::vec(any_bytes(), 0..4), any_consistency())
            .prop_map(|(keys, consistency)| KvRequest::BatchGet { keys, consistency }),
        ops.prop_map(|ops| KvRequest::BatchWrite { ops }),
        (
            proptest::collection::vec(any_compare(), 0..3),
            proptest::collection::vec(any_txn_op(), 0..3),
            proptest::collection::vec(any_txn_op(), 0..3)
        )
            .prop_map(|(compares, success, failure)| KvRequest::Txn { compares, success, failure }),
    ]
}

fn any_kv_response() -> impl Strategy<Value = KvResponse> {
    let result = prop_oneof![
        Just(TxnOpResult::Put),
        any::<bool>().prop_map(|existed| TxnOpResult::Delete { existed }),
        proptest::option::of(any_entry()).prop_map(|entry| TxnOpResult::Get { entry }),
    ];
    prop_oneof![
        proptest::option::of(any_entry()).prop_map(|entry| KvResponse::Entry { entry }),
        proptest::collection::vec(proptest::option::of(any_entry()), 0..3)
            .prop_map(|entries| KvResponse::Entries { entries }),
        any::<u64>().prop_map(|revision| KvResponse::Written { revision }),
        (any::<u64>(), any::<bool>()).prop_map(|(revision, existed)| KvResponse::Deleted { revision, existed }),
        (proptest::collection::vec(any_entry(), 0..3), proptest::option::of(any_bytes()), any::<u64>())
            .prop_map(|(entries, next, revision)| KvResponse::ScanPage { entries, next, revision }),
        (any::<bool>(), any::<u64>(), proptest::collection::vec(result, 0..3))
            .prop_map(|(succeeded, revision, results)| KvResponse::Txn { succeeded, revision, results }),
    ]
}

fn any_error() -> impl Strategy<Value = WireError> {
    let code = prop_oneof![
        Just(ErrorCode::InvalidArgument),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::Malformed),
        Just(ErrorCode::UnknownRequest),
        Just(ErrorCode::UnsupportedVersion),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::Conflict),
        Just(ErrorCode::NotLeader),
        Just(ErrorCode::Timeout),
        Just(ErrorCode::Busy),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::Internal),
    ];
    let detail = proptest::option::of(prop_oneof![
        proptest::option::of(any_entry()).prop_map(|entry| ErrorDetail::Current { entry }),
        (any::<u64>(), any_bytes()).prop_map(|(node_id, public_key)| ErrorDetail::Leader {
            node_id,
            public_key: public_key.into_vec(),
            addrs: vec!["127.0.0.1:1".parse().unwrap()]
        }),
    ]);
    (code, ".{0,20}", detail).prop_map(|(code, message, detail)| WireError { code, message, detail })
}

proptest! {
    #[test]
    fn requests_round_trip(request_id in any::<u64>(), timeout_ms in any::<u32>(), body in any_kv_request(), token in proptest::option::of((any_bytes(), any_bytes()))) {
        let envelope = RequestEnvelope {
            version: PROTOCOL_VERSION,
            request_id,
            timeout_ms,
            token: token.map(|(accessor, secret)| CapabilityToken { accessor, secret }),
            body: Request::Kv(body),
        };
        let frame = encode(&envelope).unwrap();
        let length = body_length(frame[..4].try_into().unwrap()).unwrap();
        prop_assert_eq!(length, frame.len() - 4);
        prop_assert_eq!(RequestEnvelope::decode(&frame[4..]).unwrap(), envelope);
    }

    #[test]
    fn responses_round_trip(request_id in any::<u64>(), ok in any_kv_response(), error in any_error(), pick in any::<bool>()) {
        let body = if pick { Ok(Response::Kv(ok)) } else { Err(error) };
        let envelope = ResponseEnvelope { request_id, body };
        let frame = encode(&envelope).unwrap();
        prop_assert_eq!(decode::<ResponseEnvelope>(&frame[4..]).unwrap(), envelope);
    }

    #[test]
    fn a_body_encoded_once_makes_the_same_frame_as_the_whole_envelope(
        request_id in prop_oneof![Just(0u64), Just(0x7f), Just(0x80), Just(0xff), Just(0x100), Just(0xffff),
            Just(0x1_0000), Just(0xffff_ffff), Just(0x1_0000_0000), Just(u64::MAX), any::<u64>()],
        ok in any_kv_response(), error in any_error(), pick in any::<bool>(),
    ) {
        let body = if pick { Ok(Response::Kv(ok)) } else { Err(error) };
        let shared = encode_response_body(&body).unwrap();
        let envelope = ResponseEnvelope { request_id, body };
        prop_assert_eq!(encode_response_around(request_id, &shared).unwrap(), encode(&envelope).unwrap());
    }

    #[test]
    fn truncated_frames_never_decode_to_something_else(body in any_kv_request(), cut in any::<prop::sample::Index>()) {
        let envelope = RequestEnvelope { version: PROTOCOL_VERSION, request_id: 1, timeout_ms: 1, token: None, body: Request::Kv(body) };
        let frame = encode(&envelope).unwrap();
        let body = &frame[4..];
        let cut = cut.index(body.len());
        prop_assert!(RequestEnvelope::decode(&body[..cut]).is_err());
    }
}

#[test]
fn cluster_messages_round_trip() {
    let request = RequestEnvelope {
        version: PROTOCOL_VERSION,
        request_id: 1,
        timeout_ms: 1,
        token: None,
        body: Request::Cluster(ClusterRequest::Status),
    };
    assert_eq!(RequestEnvelope::decode(&encode(&request).unwrap()[4..]).unwrap(), request);
    let status = ClusterStatus {
        cluster_id: "ab".into(),
        node_id: 1,
        role: "Leader".into(),
        leader_id: Some(1),
        term: 2,
        last_log_index: Some(3),
        last_applied_index: Some(3),
        revision: 5,
        members: vec![MemberStatus {
            node_id: 1,
            public_key: "cd".into(),
            addrs: vec![],
            voter: true,
            matched_index: Some(3),
            lag: Some(0),
        }],
        snapshot_index: None,
        purged_index: None,
        applied_digest: "00".repeat(32),
        applied_digest_index: Some(3),
        process_cpu_ms: Some(1_230),
    };
    let response = ResponseEnvelope { request_id: 1, body: Ok(Response::Cluster(ClusterResponse::Status(status))) };
    assert_eq!(decode::<ResponseEnvelope>(&encode(&response).unwrap()[4..]).unwrap(), response);
}

#[test]
fn the_cpu_time_of_a_process_is_read_from_its_proc_stat_line() {
    // A command name with a space and a parenthesis, as the kernel writes it; utime 150 and stime 23 ticks.
    let stat = "4242 (pando (x) y) S 1 4242 4242 0 -1 4194560 2047 0 0 0 150 23 0 0 20 0 9 0 123 456 789";
    assert_eq!(crate::cluster::cpu_ms_from_proc_stat(stat), Some(1_730));
    assert_eq!(crate::cluster::cpu_ms_from_proc_stat("4242 (short) S 1"), None);
    assert_eq!(crate::cluster::cpu_ms_from_proc_stat("not a stat line"), None);
}
