//! The host functions of sealed storage and of the caller's scope: what a plugin that keeps secrets needs.
//!
//! Sealed rows (`pando_protocol::plugin::sealed`) are the plugin's own: the host reaches them with the plugin's
//! identity, never checked against the calling client's token, because the client must not reach them at all. The
//! plugin decides what its caller may do with them, by asking [`caller_may`] about the KV paths it uses as its
//! policy names (the secrets engine asks about `plugin/secrets/kv/data/<path>`), so one kind of token capability
//! covers the KV and the engines on top of it.

use pando_protocol::error::ErrorCode;
use pando_protocol::plugin::Permission;
use pando_protocol::plugin::sealed::{SealedOp, SealedRead, SealedReadAnswer};
use pando_protocol::plugin_abi::{self as abi, HostResult};
use pando_protocol::token::{Access, Capability, allows};

use super::{CALL_SCOPE, HostContext, budget, refuse, wire};

fn read(context: &HostContext, read: SealedRead, stale: bool) -> HostResult<SealedReadAnswer> {
    context.require(Permission::SealedStorage)?;
    let answer = context.runtime.block_on(context.services.sealed_read(context.plugin.clone(), read, stale, budget()));
    answer.map_err(wire)
}

pub(super) fn get(context: &HostContext, args: abi::SealedGetArgs) -> HostResult<abi::SealedValue> {
    match read(context, SealedRead::Get { key: args.key }, args.stale)? {
        SealedReadAnswer::Value(value) => Ok(abi::SealedValue { value }),
        other => Err(refuse(ErrorCode::Internal, format!("a sealed get produced {other:?}"))),
    }
}

pub(super) fn scan(context: &HostContext, args: abi::SealedScanArgs) -> HostResult<abi::SealedScanPage> {
    let request = SealedRead::Scan { prefix: args.prefix, after: args.after, limit: args.limit };
    match read(context, request, args.stale)? {
        SealedReadAnswer::Page(page) => Ok(abi::SealedScanPage {
            entries: page.entries.into_iter().map(|(key, value)| abi::SealedEntry { key, value }).collect(),
            next: page.next,
        }),
        SealedReadAnswer::Value(_) => Err(refuse(ErrorCode::Internal, "a sealed scan produced a value")),
    }
}

pub(super) fn write(context: &HostContext, args: abi::SealedWriteArgs) -> HostResult<abi::SealedWritten> {
    context.require(Permission::SealedStorage)?;
    let ops = args
        .ops
        .into_iter()
        .map(|op| match op {
            abi::SealedOp::Check { key, expected } => {
                SealedOp::Check { key: key.into(), expected: expected.map(Into::into) }
            }
            abi::SealedOp::Put { key, value } => SealedOp::Put { key: key.into(), value: value.into() },
            abi::SealedOp::Delete { key } => SealedOp::Delete { key: key.into() },
        })
        .collect();
    let written = context.runtime.block_on(context.services.sealed_write(context.plugin.clone(), ops, budget()));
    let written = written.map_err(|error| {
        if error.code == ErrorCode::Unauthorized {
            tracing::warn!(plugin = %context.plugin, %error, "plugin sealed write refused");
        }
        wire(error)
    })?;
    Ok(abi::SealedWritten { changed: written.changed, rows: written.usage.rows, bytes: written.usage.bytes })
}

/// Whether the client the running call serves may read (or write) each key, or something under it. Needs no
/// permission: it says only what the client could find out by trying.
pub(super) fn caller_may(_context: &HostContext, args: abi::CallerArgs) -> HostResult<abi::CallerAnswer> {
    if args.checks.len() > abi::CALLER_CHECKS_MAX {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("{} checks in one call; the limit is {}", args.checks.len(), abi::CALLER_CHECKS_MAX),
        ));
    }
    let allowed = CALL_SCOPE.with(|current| match current.borrow().as_ref() {
        None => vec![true; args.checks.len()],
        Some(scope) => args.checks.iter().map(|check| scope_allows(scope, check)).collect(),
    });
    Ok(abi::CallerAnswer { allowed })
}

/// One check against a client's capabilities: the key itself, or with `under` any key that starts with it (a
/// capability whose prefix starts with the key grants some of them).
fn scope_allows(scope: &[Capability], check: &abi::CallerCheck) -> bool {
    let access = if check.write { Access::KvWrite(&check.key) } else { Access::KvRead(&check.key) };
    allows(scope, access)
        || (check.under
            && scope.iter().any(|capability| match capability {
                Capability::KvWrite { prefix } => prefix.starts_with(&check.key),
                Capability::KvRead { prefix } => !check.write && prefix.starts_with(&check.key),
                _ => false,
            }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pando_protocol::kv::bytes;

    fn check(key: &str, write: bool, under: bool) -> abi::CallerCheck {
        abi::CallerCheck { key: key.as_bytes().to_vec(), write, under }
    }

    #[test]
    fn a_scoped_caller_may_reach_its_prefixes_and_the_folders_above_them_only() {
        let scope = vec![
            Capability::KvRead { prefix: bytes("plugin/secrets/kv/data/app/") },
            Capability::KvWrite { prefix: bytes("plugin/secrets/kv/data/app/db") },
        ];
        let cases = [
            (check("plugin/secrets/kv/data/app/web", false, false), true),
            (check("plugin/secrets/kv/data/app/web", true, false), false),
            (check("plugin/secrets/kv/data/app/db", true, false), true),
            (check("plugin/secrets/kv/data/other", false, false), false),
            // Folders: the one above the grant holds something readable; a sibling does not.
            (check("plugin/secrets/kv/data/", false, true), true),
            (check("plugin/secrets/kv/data/", false, false), false),
            (check("plugin/secrets/kv/data/ops/", false, true), false),
            (check("plugin/secrets/kv/data/", true, true), true),
            (check("plugin/secrets/kv/data/app/web", true, true), false),
        ];
        for (check, expected) in cases {
            assert_eq!(scope_allows(&scope, &check), expected, "{check:?}");
        }
        assert!(scope_allows(&[Capability::All], &check("anything", true, false)));
        assert!(!scope_allows(&[Capability::PluginCall { plugin: None }], &check("plugin/", false, true)));
    }
}
