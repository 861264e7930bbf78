//! Token records: minting, authentication, revocation, join tokens spent by admission, expiry by log time, listing and
//! the count limit, all through the state machine's own entry point.

use super::records::{self, Refused, TokenCommand, TokenOutput};
use super::*;
use crate::command::{Command, CommandOutput, Proposal};
use crate::error::ErrorCode;
use crate::kv::bytes;
use crate::memory_tables::MemoryTables;
use crate::state_machine::apply_proposal;

fn run(tables: &mut MemoryTables, at_ms: u64, command: TokenCommand) -> Result<TokenOutput, WireError> {
    let proposal = Proposal { stamp_ms: at_ms, commands: vec![Command::Token(command)] };
    match apply_proposal(tables, &mut 0, &proposal).expect("no faults").results.remove(0)? {
        CommandOutput::Token(output) => Ok(output),
        other => panic!("unexpected {other:?}"),
    }
}

fn token(seed: u8) -> CapabilityToken {
    let mut random = [seed; ACCESSOR_BYTES + SECRET_BYTES];
    random[ACCESSOR_BYTES] ^= 0x5a;
    CapabilityToken::from_random(random)
}

fn create(token: &CapabilityToken, capabilities: Vec<Capability>, ttl_ms: Option<u64>) -> TokenCommand {
    TokenCommand::Create {
        accessor: token.accessor.clone(),
        secret_hash: Bytes::from(token.secret_hash().to_vec()),
        name: "test".into(),
        capabilities,
        ttl_ms,
        join: None,
    }
}

fn join_token(token: &CapabilityToken, uses: u32, voter: bool, ttl_ms: u64) -> TokenCommand {
    TokenCommand::Create {
        accessor: token.accessor.clone(),
        secret_hash: Bytes::from(token.secret_hash().to_vec()),
        name: "joiner".into(),
        capabilities: vec![Capability::ClusterJoin],
        ttl_ms: Some(ttl_ms),
        join: Some(JoinSpec { uses, voter }),
    }
}

fn authenticate(tables: &MemoryTables, token: &CapabilityToken, now_ms: u64) -> Result<TokenInfo, Refused> {
    records::authenticate(tables, token, now_ms).expect("no faults")
}

#[test]
fn a_minted_token_authenticates_with_its_secret_only_and_until_it_expires() {
    let mut tables = MemoryTables::default();
    let minted = token(1);
    let info = match run(&mut tables, 1_000, create(&minted, vec![Capability::ClusterRead], Some(500))).unwrap() {
        TokenOutput::Created(info) => info,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!((info.created_ms, info.expires_ms), (1_000, Some(1_500)));
    assert_eq!(authenticate(&tables, &minted, 1_499).unwrap(), info);
    let mut wrong = minted.clone();
    wrong.secret = Bytes::from(vec![0; SECRET_BYTES]);
    assert_eq!(authenticate(&tables, &wrong, 1_000), Err(Refused::WrongSecret));
    assert_eq!(authenticate(&tables, &minted, 1_500), Err(Refused::Expired));
    assert_eq!(authenticate(&tables, &token(2), 1_000), Err(Refused::Unknown));
    let malformed = CapabilityToken { accessor: bytes("short"), secret: bytes("x") };
    assert_eq!(authenticate(&tables, &malformed, 1_000), Err(Refused::Malformed));
    assert_eq!(WireError::from(Refused::Expired).code, ErrorCode::Unauthorized);
}

#[test]
fn the_state_keeps_a_hash_of_the_secret_never_the_secret() {
    let mut tables = MemoryTables::default();
    let minted = token(3);
    run(&mut tables, 1, create(&minted, vec![Capability::All], None)).unwrap();
    let stored = records::record(&tables, &minted.accessor).unwrap().unwrap();
    assert_ne!(stored.secret_hash, minted.secret);
    assert_eq!(stored.secret_hash.as_slice(), minted.secret_hash());
    assert_eq!(stored.info.expires_ms, None);
}

#[test]
fn a_revoked_token_no_longer_authenticates_and_revoking_twice_says_so() {
    let mut tables = MemoryTables::default();
    let minted = token(4);
    run(&mut tables, 1, create(&minted, vec![Capability::All], None)).unwrap();
    assert_eq!(
        run(&mut tables, 2, TokenCommand::Revoke { accessor: minted.accessor.clone() }),
        Ok(TokenOutput::Revoked { existed: true })
    );
    assert_eq!(authenticate(&tables, &minted, 3), Err(Refused::Unknown));
    assert_eq!(
        run(&mut tables, 2, TokenCommand::Revoke { accessor: minted.accessor.clone() }),
        Ok(TokenOutput::Revoked { existed: false })
    );
}

#[test]
fn a_retried_mint_is_answered_as_the_first_and_a_colliding_accessor_is_refused() {
    let mut tables = MemoryTables::default();
    let minted = token(5);
    let first = run(&mut tables, 1, create(&minted, vec![Capability::All], None)).unwrap();
    assert_eq!(run(&mut tables, 9, create(&minted, vec![Capability::All], None)).unwrap(), first);
    let mut other = token(6);
    other.accessor = minted.accessor.clone();
    assert_eq!(run(&mut tables, 9, create(&other, vec![Capability::All], None)).unwrap_err().code, ErrorCode::Conflict);
    assert!(authenticate(&tables, &other, 10).is_err());
}

#[test]
fn a_join_token_is_spent_by_admissions_and_the_same_node_again_spends_nothing() {
    let mut tables = MemoryTables::default();
    let joiner = token(7);
    run(&mut tables, 1_000, join_token(&joiner, 2, false, 60_000)).unwrap();
    let admit = |node_id| TokenCommand::Admit { accessor: joiner.accessor.clone(), node_id };
    assert_eq!(run(&mut tables, 1_001, admit(4)), Ok(TokenOutput::Admitted { voter: false }));
    assert_eq!(run(&mut tables, 1_002, admit(4)), Ok(TokenOutput::Admitted { voter: false }));
    assert_eq!(run(&mut tables, 1_003, admit(5)), Ok(TokenOutput::Admitted { voter: false }));
    let spent = run(&mut tables, 1_004, admit(6)).unwrap_err();
    assert_eq!((spent.code, spent.message.as_str()), (ErrorCode::Unauthorized, "join token already spent"));
    let grant = records::record(&tables, &joiner.accessor).unwrap().unwrap().info.join.unwrap();
    assert_eq!((grant.uses_left, grant.admitted), (0, vec![4, 5]));
    assert!(!records::node_may_promote(&tables, 4).unwrap());
}

#[test]
fn an_expired_or_revoked_join_token_admits_nobody_and_a_voter_token_lets_its_node_promote_itself() {
    let mut tables = MemoryTables::default();
    let joiner = token(8);
    run(&mut tables, 1_000, join_token(&joiner, 5, true, 100)).unwrap();
    let admit = |node_id| TokenCommand::Admit { accessor: joiner.accessor.clone(), node_id };
    assert_eq!(run(&mut tables, 1_050, admit(2)), Ok(TokenOutput::Admitted { voter: true }));
    assert!(records::node_may_promote(&tables, 2).unwrap());
    assert_eq!(run(&mut tables, 1_100, admit(3)).unwrap_err().message, "join token expired");
    run(&mut tables, 1_100, TokenCommand::ForgetNode { node_id: 2 }).unwrap();
    assert!(!records::node_may_promote(&tables, 2).unwrap());
    let other = token(9);
    run(&mut tables, 2_000, join_token(&other, 5, false, 100)).unwrap();
    run(&mut tables, 2_001, TokenCommand::Revoke { accessor: other.accessor.clone() }).unwrap();
    let refused = run(&mut tables, 2_002, TokenCommand::Admit { accessor: other.accessor.clone(), node_id: 9 });
    assert_eq!(refused.unwrap_err().message, "unknown or revoked join token");
    let plain = token(10);
    run(&mut tables, 2_000, create(&plain, vec![Capability::All], None)).unwrap();
    let refused = run(&mut tables, 2_002, TokenCommand::Admit { accessor: plain.accessor.clone(), node_id: 9 });
    assert_eq!(refused.unwrap_err().message, "not a join token");
}

#[test]
fn listing_pages_in_accessor_order_and_never_shows_a_secret_hash() {
    let mut tables = MemoryTables::default();
    for seed in 0..(crate::limits::TOKEN_LIST_COUNT_MAX as u16 + 3) {
        let mut random = [0u8; ACCESSOR_BYTES + SECRET_BYTES];
        random[..2].copy_from_slice(&seed.to_be_bytes());
        run(&mut tables, 1, create(&CapabilityToken::from_random(random), vec![Capability::ClusterRead], None))
            .unwrap();
    }
    let (first, next) = records::list(&tables, None).unwrap();
    assert_eq!(first.len(), crate::limits::TOKEN_LIST_COUNT_MAX);
    assert!(first.windows(2).all(|pair| pair[0].accessor < pair[1].accessor));
    let (rest, end) = records::list(&tables, next.as_ref().map(|next| next.as_slice())).unwrap();
    assert_eq!((rest.len(), end), (3, None));
    assert!(rest[0].accessor > first.last().unwrap().accessor);
}

#[test]
fn minting_past_the_limit_purges_expired_tokens_first_and_else_is_refused() {
    let mut tables = MemoryTables::default();
    for seed in 0..crate::limits::TOKENS_COUNT_MAX as u32 {
        let mut random = [1u8; ACCESSOR_BYTES + SECRET_BYTES];
        random[..4].copy_from_slice(&seed.to_be_bytes());
        // The first ten expire at 1_010.
        let ttl = if seed < 10 { Some(10) } else { None };
        run(&mut tables, 1_000, create(&CapabilityToken::from_random(random), vec![Capability::ClusterRead], ttl))
            .unwrap();
    }
    let refused = run(&mut tables, 1_005, create(&token(200), vec![Capability::All], None)).unwrap_err();
    assert_eq!(refused.code, ErrorCode::TooLarge);
    run(&mut tables, 1_010, create(&token(200), vec![Capability::All], None)).unwrap();
    let (page, _) = records::list(&tables, None).unwrap();
    assert!(page.iter().all(|info| info.expires_ms.is_none()));
}

#[test]
fn requests_with_bad_scopes_are_refused_before_anything_is_proposed() {
    let create = |capabilities: Vec<Capability>, ttl_ms, join| TokenRequest::Create {
        name: "n".into(),
        capabilities,
        ttl_ms,
        join,
    };
    let invalid = |request: TokenRequest| request.validate().unwrap_err().code;
    assert_eq!(invalid(create(vec![], None, None)), ErrorCode::InvalidArgument);
    assert_eq!(invalid(create(vec![Capability::ClusterJoin], None, None)), ErrorCode::InvalidArgument);
    assert_eq!(
        invalid(create(vec![Capability::Node { node_id: 1, promote: true }], None, None)),
        ErrorCode::InvalidArgument
    );
    let join = Some(JoinSpec { uses: 1, voter: false });
    assert_eq!(invalid(create(vec![Capability::All], None, join)), ErrorCode::InvalidArgument);
    assert_eq!(invalid(create(vec![Capability::ClusterJoin], Some(0), join)), ErrorCode::InvalidArgument);
    let too_many = Some(JoinSpec { uses: crate::limits::JOIN_TOKEN_USES_MAX + 1, voter: false });
    assert_eq!(invalid(create(vec![Capability::ClusterJoin], None, too_many)), ErrorCode::InvalidArgument);
    assert!(create(vec![Capability::ClusterJoin], None, join).validate().is_ok());
    assert!(create(vec![Capability::KvRead { prefix: bytes("app/") }], Some(0), None).validate().is_ok());
    assert_eq!(invalid(TokenRequest::Revoke { accessor: bytes("abc") }), ErrorCode::InvalidArgument);
}

#[test]
fn capabilities_are_checked_by_prefix_and_a_member_key_may_only_act_on_its_own_node() {
    let read_only = [Capability::KvRead { prefix: bytes("app/") }];
    assert!(allows(&read_only, Access::KvRead(b"app/x")));
    assert!(!allows(&read_only, Access::KvRead(b"other")));
    assert!(!allows(&read_only, Access::KvWrite(b"app/x")));
    assert!(!allows(&read_only, Access::ClusterRead));
    assert!(!allows(&read_only, Access::TokenAdmin));
    let member = [Capability::Node { node_id: 4, promote: false }];
    assert!(allows(&member, Access::ClusterRead));
    assert!(allows(&member, Access::NodeAddress(4)));
    assert!(!allows(&member, Access::NodeAddress(5)));
    assert!(!allows(&member, Access::Promote(4)));
    assert!(!allows(&member, Access::KvRead(b"")));
    assert!(!allows(&member, Access::ClusterAdmin));
    assert!(allows(&[Capability::Node { node_id: 4, promote: true }], Access::Promote(4)));
    let joiner = [Capability::ClusterJoin];
    assert!(allows(&joiner, Access::ClusterJoin));
    assert!(!allows(&joiner, Access::ClusterRead));
}

#[test]
fn a_token_debug_print_shows_the_accessor_and_hides_the_secret() {
    let printed = format!("{:?}", token(11));
    assert!(printed.contains(&hex(&token(11).accessor)));
    assert!(!printed.contains(&hex(&token(11).secret)));
    assert!(printed.contains("redacted"));
}

#[test]
fn each_member_secret_rotation_is_the_next_epoch_and_a_malformed_secret_changes_nothing() {
    let mut tables = MemoryTables::default();
    assert_eq!(records::member_secret(&tables).unwrap(), None, "never rotated: the founding secret holds");
    let rotate = |byte: u8, len: usize| TokenCommand::RotateMemberSecret {
        secret: records::SecretBytes(Bytes::from(vec![byte; len])),
    };
    let short = run(&mut tables, 5, rotate(1, 31)).unwrap_err();
    assert_eq!(short.code, ErrorCode::InvalidArgument);
    assert_eq!(records::member_secret(&tables).unwrap(), None);
    assert_eq!(
        run(&mut tables, 10, rotate(1, 32)).unwrap(),
        TokenOutput::MemberSecretRotated { epoch: 1, rotated_ms: 10 }
    );
    assert_eq!(
        run(&mut tables, 20, rotate(2, 32)).unwrap(),
        TokenOutput::MemberSecretRotated { epoch: 2, rotated_ms: 20 }
    );
    let current = records::member_secret(&tables).unwrap().unwrap();
    assert_eq!((current.epoch, current.key().unwrap(), current.rotated_ms), (2, [2; 32], 20));
    // A traced command or record never shows the secret.
    assert!(!format!("{:?} {current:?}", rotate(7, 32)).contains("7, 7"));
}

#[test]
fn a_file_system_token_reads_or_writes_the_file_system_and_hears_its_changes_only() {
    let reader = [Capability::Fs { write: false, as_ids: None }];
    let writer = [Capability::Fs { write: true, as_ids: None }];
    assert!(allows(&reader, Access::FsRead) && !allows(&reader, Access::FsWrite));
    assert!(allows(&writer, Access::FsRead) && allows(&writer, Access::FsWrite));
    assert!(allows(&reader, Access::HookStream(crate::hook::FS_CHANGED_SUBJECT)));
    assert!(!allows(&writer, Access::HookStream(">")), "no other events");
    assert!(!allows(&writer, Access::KvRead(b"")), "no keys");
    let prefix = [Capability::KvWrite { prefix: bytes("") }];
    assert!(!allows(&prefix, Access::FsRead), "a KV token does not reach the file system");
}

#[test]
fn a_file_system_token_with_fixed_ids_runs_every_request_as_them_unless_it_is_also_trusted() {
    let squashed = Capability::Fs { write: true, as_ids: Some((1000, 100)) };
    assert_eq!(fs_ids(std::slice::from_ref(&squashed)), Some((1000, 100)));
    assert_eq!(fs_ids(&[squashed.clone(), Capability::All]), None, "an admin names its caller");
    assert_eq!(fs_ids(&[squashed, Capability::Fs { write: false, as_ids: None }]), None);
    assert_eq!(fs_ids(&[Capability::ClusterRead]), None);
}
