//! Subjects and subject patterns, as NATS defines them, and the encoding of arbitrary key bytes into subject tokens.
//!
//! A subject is tokens separated by `.` (`kv.put.app.db`). A pattern may use two wildcards, each a whole token: `*`
//! matches exactly one token, `>` matches one or more trailing tokens and may only come last. So `kv.put.app.>`
//! matches `kv.put.app.db` and `kv.put.app.db.primary` but not `kv.put.app`, and `kv.*.app.db` matches both puts and
//! deletes of `app/db`. Tokens are never empty. Pando is stricter than NATS about token characters (no whitespace, no
//! control bytes, and `*` and `>` only as whole tokens), so a pattern means the same in both and never surprises.
//!
//! Keys and names are bytes, not tokens: [`encode_key`] splits a key at `/` (the keyspace's usual separator, so a
//! key prefix `app/` is the pattern `kv.put.app.>`) and writes every segment as one token, keeping `[A-Za-z0-9_-~]`
//! and percent-encoding every other byte (`.` becomes `%2E`, a non-UTF-8 byte `%FF`). An empty segment (a key
//! starting, ending or doubling a `/`) is the token `%`, which the escape never produces alone. The encoding is a
//! bijection between keys and token sequences, so [`decode_key`] gives back the exact bytes (proptested).

use std::collections::BTreeMap;

use crate::error::WireError;
use crate::limits::{HOOK_PATTERN_BYTES_MAX, HOOK_PATTERN_TOKENS_MAX};

/// The wildcard matching one token.
pub const ONE: &str = "*";
/// The wildcard matching one or more trailing tokens.
pub const REST: &str = ">";

/// Whether `byte` may appear in a token (any printable ASCII but the separator and the wildcards).
fn token_byte(byte: u8) -> bool {
    byte.is_ascii_graphic() && !matches!(byte, b'.' | b'*' | b'>')
}

fn check_tokens(text: &str, what: &str, wildcards: bool) -> Result<(), WireError> {
    if text.is_empty() {
        return Err(WireError::invalid(format!("a {what} needs at least one token")));
    }
    if text.len() > HOOK_PATTERN_BYTES_MAX {
        return Err(WireError::too_large(format!(
            "a {what} is {} bytes, the limit is {HOOK_PATTERN_BYTES_MAX}",
            text.len()
        )));
    }
    let tokens: Vec<&str> = text.split('.').collect();
    if tokens.len() > HOOK_PATTERN_TOKENS_MAX {
        return Err(WireError::too_large(format!(
            "a {what} has {} tokens, the limit is {HOOK_PATTERN_TOKENS_MAX}",
            tokens.len()
        )));
    }
    for (position, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(WireError::invalid(format!(
                "{what} {text:?} has an empty token (two dots, or a dot at an end)"
            )));
        }
        if *token == ONE || *token == REST {
            if !wildcards {
                return Err(WireError::invalid(format!("{what} {text:?} may not contain the wildcard {token:?}")));
            }
            if *token == REST && position + 1 != tokens.len() {
                return Err(WireError::invalid(format!("{what} {text:?}: `>` may only be the last token")));
            }
            continue;
        }
        if let Some(bad) = token.bytes().find(|byte| !token_byte(*byte)) {
            return Err(WireError::invalid(format!(
                "{what} {text:?} has the byte {bad:#04x} in a token (tokens are printable ASCII without `.`, and `*` \
                 and `>` are whole tokens)"
            )));
        }
    }
    Ok(())
}

/// Checks a subject an event is published on (no wildcards).
pub fn validate_subject(subject: &str) -> Result<(), WireError> {
    check_tokens(subject, "subject", false)
}

/// Checks a subscription pattern.
pub fn validate_pattern(pattern: &str) -> Result<(), WireError> {
    check_tokens(pattern, "pattern", true)
}

/// Whether `subject` matches `pattern` (both valid), as NATS matches them.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for wanted in pattern.split('.') {
        if wanted == REST {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(token) if wanted == ONE || wanted == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Whether a key byte is kept as is in a token.
fn plain_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'~')
}

/// Appends the tokens of `key` (one per `/`-separated segment) to `subject`, each after a `.`.
pub fn push_key_tokens(subject: &mut String, key: &[u8]) {
    for segment in key.split(|byte| *byte == b'/') {
        subject.push('.');
        if segment.is_empty() {
            subject.push('%');
            continue;
        }
        for byte in segment {
            if plain_key_byte(*byte) {
                subject.push(*byte as char);
            } else {
                subject.push_str(&format!("%{byte:02X}"));
            }
        }
    }
}

/// The tokens of `key`, joined by `.` (`app/db` → `app.db`).
pub fn encode_key(key: &[u8]) -> String {
    let mut subject = String::with_capacity(key.len() + 8);
    push_key_tokens(&mut subject, key);
    subject.remove(0);
    subject
}

/// The key that `tokens` (as [`encode_key`] wrote them) encode; `None` if they are not such an encoding.
pub fn decode_key(tokens: &str) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(tokens.len());
    for (position, token) in tokens.split('.').enumerate() {
        if position > 0 {
            key.push(b'/');
        }
        if token == "%" {
            continue;
        }
        if token.is_empty() {
            return None;
        }
        let bytes = token.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            match bytes[at] {
                b'%' => {
                    let hex = bytes.get(at + 1..at + 3)?;
                    if !hex.iter().all(|digit| digit.is_ascii_digit() || (b'A'..=b'F').contains(digit)) {
                        return None;
                    }
                    let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                    // Canonical only: a byte that is kept plain is never escaped.
                    if plain_key_byte(byte) {
                        return None;
                    }
                    key.push(byte);
                    at += 3;
                }
                byte if plain_key_byte(byte) => {
                    key.push(byte);
                    at += 1;
                }
                _ => return None,
            }
        }
    }
    Some(key)
}

/// Subscriptions indexed by their patterns: a match walks the subject's tokens down the tree (each level: the literal
/// token, `*`, and `>`), so its cost grows with the subject's length and the matches, not with the number of
/// subscriptions.
#[derive(Clone, Debug)]
pub struct SubjectTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Clone, Debug)]
struct Node<T> {
    literal: BTreeMap<String, Node<T>>,
    one: Option<Box<Node<T>>>,
    /// Subscriptions whose pattern ends here with `>`.
    rest: Vec<T>,
    /// Subscriptions whose pattern ends here.
    here: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Node<T> {
        Node { literal: BTreeMap::new(), one: None, rest: Vec::new(), here: Vec::new() }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.one.is_none() && self.rest.is_empty() && self.here.is_empty()
    }
}

impl<T> Default for SubjectTrie<T> {
    fn default() -> SubjectTrie<T> {
        SubjectTrie { root: Node::default(), len: 0 }
    }
}

impl<T: PartialEq + Clone> SubjectTrie<T> {
    pub fn new() -> SubjectTrie<T> {
        SubjectTrie::default()
    }

    /// How many (pattern, value) pairs it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern` (valid).
    pub fn insert(&mut self, pattern: &str, value: T) {
        let mut node = &mut self.root;
        for token in pattern.split('.') {
            if token == REST {
                node.rest.push(value);
                self.len += 1;
                return;
            }
            node = if token == ONE {
                node.one.get_or_insert_with(Box::default)
            } else {
                node.literal.entry(token.to_string()).or_default()
            };
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes one `value` under `pattern`, saying whether it was there; empty branches go with it.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = Self::remove_at(&mut self.root, &tokens, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<T>, tokens: &[&str], value: &T) -> bool {
        let take = |list: &mut Vec<T>| match list.iter().position(|held| held == value) {
            Some(position) => {
                list.remove(position);
                true
            }
            None => false,
        };
        let Some((first, rest)) = tokens.split_first() else {
            return take(&mut node.here);
        };
        if *first == REST {
            return take(&mut node.rest);
        }
        if *first == ONE {
            let Some(child) = node.one.as_deref_mut() else { return false };
            let removed = Self::remove_at(child, rest, value);
            if child.is_empty() {
                node.one = None;
            }
            return removed;
        }
        let Some(child) = node.literal.get_mut(*first) else { return false };
        let removed = Self::remove_at(child, rest, value);
        if child.is_empty() {
            node.literal.remove(*first);
        }
        removed
    }

    /// Visits every value whose pattern matches `subject` (valid), once per (pattern, value) pair.
    pub fn matching(&self, subject: &str, visit: &mut impl FnMut(&T)) {
        let tokens: Vec<&str> = subject.split('.').collect();
        Self::match_at(&self.root, &tokens, visit);
    }

    fn match_at(node: &Node<T>, tokens: &[&str], visit: &mut impl FnMut(&T)) {
        let Some((first, rest)) = tokens.split_first() else {
            node.here.iter().for_each(&mut *visit);
            return;
        };
        node.rest.iter().for_each(&mut *visit);
        if let Some(child) = node.literal.get(*first) {
            Self::match_at(child, rest, visit);
        }
        if let Some(child) = node.one.as_deref() {
            Self::match_at(child, rest, visit);
        }
    }

    /// Every value whose pattern matches `subject`, cloned.
    pub fn matches(&self, subject: &str) -> Vec<T> {
        let mut found = Vec::new();
        self.matching(subject, &mut |value| found.push(value.clone()));
        found
    }
}

#[cfg(test)]
#[path = "subject_tests.rs"]
mod tests;
