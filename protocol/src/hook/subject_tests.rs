//! Subjects: validation, matching against a reference matcher, the trie against matching one by one, and the key
//! encoding's round trip.

use proptest::prelude::*;

use super::*;

/// NATS's rule written as directly as possible: a recursive walk over token lists.
fn reference(pattern: &[&str], subject: &[&str]) -> bool {
    match (pattern.split_first(), subject.split_first()) {
        (None, None) => true,
        (Some((&">", [])), Some(_)) => true,
        (Some((&"*", pattern)), Some((_, subject))) => reference(pattern, subject),
        (Some((wanted, pattern)), Some((token, subject))) => wanted == token && reference(pattern, subject),
        _ => false,
    }
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("kv".to_string()), "[a-c]{1,2}"]
}

fn subject() -> impl Strategy<Value = String> {
    proptest::collection::vec(token(), 1..6).prop_map(|tokens| tokens.join("."))
}

fn pattern() -> impl Strategy<Value = String> {
    (proptest::collection::vec(prop_oneof![3 => token(), 1 => Just("*".to_string())], 1..6), any::<bool>()).prop_map(
        |(mut tokens, rest)| {
            if rest {
                *tokens.last_mut().expect("at least one token") = ">".to_string();
            }
            tokens.join(".")
        },
    )
}

proptest! {
    #[test]
    fn matching_agrees_with_the_reference_matcher(pattern in pattern(), subject in subject()) {
        prop_assert!(validate_pattern(&pattern).is_ok());
        prop_assert!(validate_subject(&subject).is_ok());
        let tokens_of = |text: &str| text.split('.').map(str::to_string).collect::<Vec<_>>();
        let (pattern_tokens, subject_tokens) = (tokens_of(&pattern), tokens_of(&subject));
        let pattern_refs: Vec<&str> = pattern_tokens.iter().map(String::as_str).collect();
        let subject_refs: Vec<&str> = subject_tokens.iter().map(String::as_str).collect();
        prop_assert_eq!(matches(&pattern, &subject), reference(&pattern_refs, &subject_refs));
    }

    #[test]
    fn the_trie_finds_exactly_the_patterns_that_match(
        patterns in proptest::collection::vec(pattern(), 0..40),
        removed in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        subjects in proptest::collection::vec(subject(), 1..20),
    ) {
        let mut trie = SubjectTrie::new();
        let mut held: Vec<(String, usize)> = Vec::new();
        for (id, pattern) in patterns.iter().enumerate() {
            trie.insert(pattern, id);
            held.push((pattern.clone(), id));
        }
        for index in removed {
            if held.is_empty() {
                break;
            }
            let (pattern, id) = held.remove(index.index(held.len()));
            prop_assert!(trie.remove(&pattern, &id));
            prop_assert!(!trie.remove(&pattern, &id), "a value is removed once");
        }
        prop_assert_eq!(trie.len(), held.len());
        for subject in &subjects {
            let mut found = trie.matches(subject);
            found.sort_unstable();
            let mut expected: Vec<usize> =
                held.iter().filter(|(pattern, _)| matches(pattern, subject)).map(|(_, id)| *id).collect();
            expected.sort_unstable();
            prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn any_key_round_trips_through_its_tokens(key in proptest::collection::vec(any::<u8>(), 0..64)) {
        let tokens = encode_key(&key);
        prop_assert!(validate_subject(&format!("kv.put.{tokens}")).is_ok(), "{tokens:?} is not a valid subject");
        prop_assert_eq!(decode_key(&tokens), Some(key));
    }

    #[test]
    fn keys_with_separators_round_trip(segments in proptest::collection::vec("[a-z./%*> ]{0,4}", 1..5)) {
        let key = segments.join("/").into_bytes();
        prop_assert_eq!(decode_key(&encode_key(&key)), Some(key));
    }

    #[test]
    fn distinct_keys_never_share_tokens(a in proptest::collection::vec(any::<u8>(), 0..16), b in proptest::collection::vec(any::<u8>(), 0..16)) {
        prop_assume!(a != b);
        prop_assert_ne!(encode_key(&a), encode_key(&b));
    }
}

#[test]
fn a_key_prefix_is_a_pattern_prefix() {
    assert_eq!(encode_key(b"app/db"), "app.db");
    assert!(matches("kv.put.app.>", &format!("kv.put.{}", encode_key(b"app/db/primary"))));
    assert!(!matches("kv.put.app.>", &format!("kv.put.{}", encode_key(b"app"))));
    assert_eq!(encode_key(b"a.b"), "a%2Eb");
    assert_eq!(encode_key(b"/x/"), "%.x.%");
    assert_eq!(encode_key(&[0xff, b' ']), "%FF%20");
}

#[test]
fn non_canonical_tokens_are_no_key() {
    for tokens in ["%61", "a%2e", "%G0", "%2", "a..b", "a b", "a*"] {
        assert_eq!(decode_key(tokens), None, "{tokens:?}");
    }
}

#[test]
fn patterns_follow_the_nats_rules() {
    for good in ["a", "a.*", "a.>", "*", ">", "*.*.>", "kv.put.app%2Fx"] {
        assert!(validate_pattern(good).is_ok(), "{good:?}");
    }
    for bad in ["", "a..b", ".a", "a.", "a.>.b", "a b", "a*", "a.b>", "é"] {
        assert!(validate_pattern(bad).is_err(), "{bad:?}");
    }
    assert!(validate_subject("a.*").is_err());
    assert!(validate_subject("a.>").is_err());
    assert!(validate_pattern("a.".repeat(200).trim_end_matches('.')).is_ok());
    assert!(validate_pattern("a.".repeat(600).trim_end_matches('.')).is_err());
}

#[test]
fn wildcards_match_as_in_nats() {
    assert!(matches("a.*.c", "a.b.c"));
    assert!(!matches("a.*.c", "a.b.b.c"));
    assert!(matches("a.>", "a.b.c"));
    assert!(!matches("a.>", "a"));
    assert!(matches(">", "a"));
    assert!(!matches("a.b", "a.b.c"));
    assert!(!matches("a.b.c", "a.b"));
}
