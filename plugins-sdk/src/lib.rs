//! Write Pando plugins in Rust.
//!
//! A plugin is a `cdylib` built for `wasm32-unknown-unknown` (or `wasm32-wasip1`). Its handlers are plain Rust
//! functions from a JSON-decoded input to a JSON-encoded output; [`handler!`] exports one under its own name. The
//! host functions (KV, blobs, cluster info, randomness, signing, timers, hooks) are typed functions of this crate;
//! each is checked against the permissions of the plugin's manifest on the node, and a refusal comes back as an
//! [`Error`] with the node's stable code (`UNAUTHORIZED`, `NOT_FOUND`, `CONFLICT`, ...), never as a trap.
//!
//! The ten lines of a working plugin (`Cargo.toml` has `crate-type = ["cdylib"]` and depends on this crate and
//! `serde`):
//!
//! ```
//! use pando_plugin_sdk::{Error, handler, kv};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! pub struct Greeting { name: String }
//! #[derive(Serialize)]
//! pub struct Reply { message: String, times: u64 }
//!
//! pub fn greet(input: Greeting) -> Result<Reply, Error> {
//!     let key = format!("plugin/hello/seen/{}", input.name);
//!     let times = kv::get(key.as_bytes())?.map_or(0, |entry| entry.value.len() as u64) + 1;
//!     kv::put(key.as_bytes(), &vec![b'x'; times as usize])?;
//!     Ok(Reply { message: format!("hello, {}", input.name), times })
//! }
//! handler!(greet);
//!
//! # // Off wasm the host functions run against an in-memory test host, so handlers can be unit-tested natively.
//! # pando_plugin_sdk::testing::reset();
//! # assert_eq!(greet(Greeting { name: "ada".into() }).unwrap().times, 1);
//! # assert_eq!(greet(Greeting { name: "ada".into() }).unwrap().message, "hello, ada");
//! # assert_eq!(greet(Greeting { name: "ada".into() }).unwrap().times, 3);
//! ```
//!
//! Its manifest (`plugin.toml`) asks for what it uses; everything else is denied:
//!
//! ```toml
//! name = "hello"
//! version = "0.1.0"
//! permissions = ["kv_read", "kv_write"]   # keys under plugin/hello/ only, unless kv_prefixes says otherwise
//! ```
//!
//! Build and install it:
//!
//! ```text
//! cargo build --release --target wasm32-unknown-unknown
//! pando plugin install target/wasm32-unknown-unknown/release/hello.wasm --manifest plugin.toml
//! pando plugin call hello greet '{"name":"ada"}'
//! ```
//!
//! Off wasm (unit tests, doc tests) the host functions run against [`testing`], an in-memory host, so a plugin's
//! logic can be tested with `cargo test` before it is built for wasm.

#[path = "../../protocol/src/plugin_abi.rs"]
pub mod abi;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use abi::{Entry, LogLevel, NodeInfo, ScanPage, Signed, TimerFired};

/// A refusal from the host, or an error a handler returns to its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// A stable code: the node's for host refusals (`UNAUTHORIZED`, `CONFLICT`, ...), the plugin's own otherwise.
    pub code: String,
    pub message: String,
}

impl Error {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Error {
        Error { code: code.into(), message: message.into() }
    }

    /// An error the caller sees as the plugin's answer (`PLUGIN_FAILED` on the wire, with this message).
    pub fn msg(message: impl Into<String>) -> Error {
        Error::new("PLUGIN", message)
    }

    pub fn is_conflict(&self) -> bool {
        self.code == "CONFLICT"
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<abi::HostError> for Error {
    fn from(error: abi::HostError) -> Error {
        Error { code: error.code, message: error.message }
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Error {
        Error::new("INVALID_ARGUMENT", format!("bad JSON: {error}"))
    }
}

/// Calls host function `name` with `args`, decoding its answer.
fn call<A: Serialize, R: DeserializeOwned>(name: &'static str, args: &A) -> Result<R, Error> {
    let answer = host::call(name, abi::encode(args))?;
    let result: abi::HostResult<R> = abi::decode(&answer)?;
    result.map_err(Error::from)
}

/// Writes to the node's log, tagged with the plugin's name. Needs no permission.
pub fn log(level: LogLevel, message: impl Into<String>) {
    let _ = call::<_, ()>(abi::names::LOG, &abi::LogArgs { level, message: message.into() });
}

/// Milliseconds since the Unix epoch, by the node's clock. Needs no permission.
pub fn now_ms() -> u64 {
    call(abi::names::TIME, &()).unwrap_or(0)
}

/// The node running the call, the current Raft leader, and the plugin's generation (`cluster_info`).
pub fn node_info() -> Result<NodeInfo, Error> {
    call(abi::names::NODE_INFO, &())
}

/// Cryptographically secure random bytes from the host, at most [`abi::RANDOM_BYTES_MAX`] (`randomness`).
pub fn random_bytes(len: u32) -> Result<Vec<u8>, Error> {
    let data: abi::BlobData = call(abi::names::RANDOM, &abi::RandomArgs { len })?;
    Ok(data.data)
}

/// The KV store, limited to the plugin's prefixes (`kv_read`, `kv_write`). Reads see this node's applied state.
pub mod kv {
    use super::{Entry, Error, ScanPage, abi, call};

    pub fn get(key: &[u8]) -> Result<Option<Entry>, Error> {
        call(abi::names::KV_GET, &abi::KeyArgs { key: key.to_vec() })
    }

    /// Writes `value`, answering the store revision of the write.
    pub fn put(key: &[u8], value: &[u8]) -> Result<u64, Error> {
        let written: abi::Written =
            call(abi::names::KV_PUT, &abi::PutArgs { key: key.to_vec(), value: value.to_vec() })?;
        Ok(written.revision)
    }

    /// Deletes `key`, saying whether it existed.
    pub fn delete(key: &[u8]) -> Result<bool, Error> {
        let deleted: abi::Deleted = call(abi::names::KV_DELETE, &abi::KeyArgs { key: key.to_vec() })?;
        Ok(deleted.existed)
    }

    /// One page of the keys under `prefix`, after `after` (the previous page's `next`).
    pub fn scan(prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Result<ScanPage, Error> {
        call(abi::names::KV_SCAN, &abi::ScanArgs { prefix: prefix.to_vec(), after: after.map(<[u8]>::to_vec), limit })
    }

    /// Writes `value` if the key holds `expected` (`None`: does not exist); a mismatch is an error with
    /// [`Error::is_conflict`].
    pub fn cas(key: &[u8], expected: Option<&[u8]>, value: &[u8]) -> Result<u64, Error> {
        let args = abi::CasArgs { key: key.to_vec(), expected: expected.map(<[u8]>::to_vec), value: value.to_vec() };
        let written: abi::Written = call(abi::names::KV_CAS, &args)?;
        Ok(written.revision)
    }

    /// Applies puts and deletes atomically.
    pub fn batch(ops: Vec<abi::BatchOp>) -> Result<u64, Error> {
        let written: abi::Written = call(abi::names::KV_BATCH, &abi::BatchArgs { ops })?;
        Ok(written.revision)
    }
}

/// Content-addressed blobs of the cluster (`blob_read`, `blob_write`), up to [`abi::BLOB_BYTES_MAX`] through a plugin.
pub mod blob {
    use super::{Error, abi, call};

    pub fn get(hash: &str) -> Result<Vec<u8>, Error> {
        let data: abi::BlobData = call(abi::names::BLOB_GET, &abi::BlobArgs { hash: hash.into() })?;
        Ok(data.data)
    }

    /// Stores `data`, answering its BLAKE3 hash (hex).
    pub fn put(data: &[u8]) -> Result<String, Error> {
        let hash: abi::BlobArgs = call(abi::names::BLOB_PUT, &abi::BlobData { data: data.to_vec() })?;
        Ok(hash.hash)
    }

    pub fn has(hash: &str) -> Result<bool, Error> {
        call(abi::names::BLOB_HAS, &abi::BlobArgs { hash: hash.into() })
    }
}

/// Ed25519 signatures with a key of the plugin's own, derived by the cluster for this plugin's name and the same on
/// every node; never the node's key (`signing`).
pub mod signing {
    use super::{Error, Signed, abi, call};

    pub fn sign(message: &[u8]) -> Result<Signed, Error> {
        call(abi::names::SIGN, &abi::SignArgs { message: message.to_vec() })
    }

    /// Verifies against `public_key`, or the plugin's own key when `None`.
    pub fn verify(message: &[u8], signature: &[u8], public_key: Option<&[u8]>) -> Result<bool, Error> {
        let args = abi::VerifyArgs {
            message: message.to_vec(),
            signature: signature.to_vec(),
            public_key: public_key.map(<[u8]>::to_vec),
        };
        call(abi::names::VERIFY, &args)
    }
}

/// Timers of the node running the call: after `delay_ms` the plugin's `on_timer` export (see [`on_timer!`]) is called
/// with the payload (`timers`). Timers live in the node's memory: a restart forgets them.
pub mod timers {
    use super::{Error, abi, call};

    pub fn schedule(delay_ms: u64, payload: &[u8]) -> Result<u64, Error> {
        let id: abi::TimerId =
            call(abi::names::TIMER_SCHEDULE, &abi::TimerArgs { delay_ms, payload: payload.to_vec() })?;
        Ok(id.id)
    }

    /// Cancels a pending timer, saying whether it was pending.
    pub fn cancel(id: u64) -> Result<bool, Error> {
        call(abi::names::TIMER_CANCEL, &abi::TimerId { id })
    }
}

/// Subscriptions to the node's hook events, delivered to the `on_hook` export once the hook router exists (`hooks`).
pub mod hooks {
    use super::{Error, abi, call};

    pub fn subscribe(subject: &str) -> Result<(), Error> {
        call(abi::names::HOOK_SUBSCRIBE, &abi::HookArgs { subject: subject.into() })
    }

    pub fn unsubscribe(subject: &str) -> Result<bool, Error> {
        call(abi::names::HOOK_UNSUBSCRIBE, &abi::HookArgs { subject: subject.into() })
    }
}

/// Sealed storage (`sealed_storage`): rows of the plugin's own that no client request reads, not even an admin's scan
/// of the whole keyspace, a watch or a hook stream. Reads are linearizable by default (a read index through the
/// leader, from any node), so a plugin never acts on state another node already replaced; `get_stale` and
/// `scan_stale` read this node's applied state as it is. A write is all or nothing: [`sealed::Op::Check`]s first,
/// then puts and deletes.
pub mod sealed {
    pub use super::abi::SealedOp as Op;
    use super::{Error, abi, call};

    /// One row's value, linearizably.
    pub fn get(key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        read(key, false)
    }

    /// One row's value as this node applied it.
    pub fn get_stale(key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        read(key, true)
    }

    fn read(key: &[u8], stale: bool) -> Result<Option<Vec<u8>>, Error> {
        let answer: abi::SealedValue = call(abi::names::SEALED_GET, &abi::SealedGetArgs { key: key.to_vec(), stale })?;
        Ok(answer.value)
    }

    /// One page of the rows under `prefix`, after `after` (the previous page's `next`), linearizably.
    pub fn scan(prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Result<abi::SealedScanPage, Error> {
        scan_as(prefix, after, limit, false)
    }

    /// [`scan`] of this node's applied state as it is.
    pub fn scan_stale(prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Result<abi::SealedScanPage, Error> {
        scan_as(prefix, after, limit, true)
    }

    fn scan_as(prefix: &[u8], after: Option<&[u8]>, limit: u32, stale: bool) -> Result<abi::SealedScanPage, Error> {
        let args = abi::SealedScanArgs { prefix: prefix.to_vec(), after: after.map(<[u8]>::to_vec), limit, stale };
        call(abi::names::SEALED_SCAN, &args)
    }

    /// Applies `ops` in one replicated entry; a failed check is an error with [`Error::is_conflict`].
    pub fn write(ops: Vec<Op>) -> Result<abi::SealedWritten, Error> {
        call(abi::names::SEALED_WRITE, &abi::SealedWriteArgs { ops })
    }

    pub fn put(key: &[u8], value: &[u8]) -> Result<(), Error> {
        write(vec![Op::Put { key: key.to_vec(), value: value.to_vec() }]).map(|_| ())
    }

    /// Writes `value` (`None`: deletes the row) if the row holds `expected` (`None`: does not exist).
    pub fn cas(key: &[u8], expected: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), Error> {
        let check = Op::Check { key: key.to_vec(), expected: expected.map(<[u8]>::to_vec) };
        let change = match value {
            Some(value) => Op::Put { key: key.to_vec(), value: value.to_vec() },
            None => Op::Delete { key: key.to_vec() },
        };
        write(vec![check, change]).map(|_| ())
    }
}

/// The client a call runs for: what its token may do, asked of KV paths the plugin uses as its policy names. Outside
/// a client's call (`init`, a timer, a hook delivery) and for a token with every capability, everything is allowed.
pub mod caller {
    pub use super::abi::CallerCheck as Check;
    use super::{Error, abi, call};

    /// One answer per check, in order.
    pub fn may(checks: Vec<Check>) -> Result<Vec<bool>, Error> {
        let answer: abi::CallerAnswer = call(abi::names::CALLER_MAY, &abi::CallerArgs { checks })?;
        Ok(answer.allowed)
    }

    /// Whether the caller may read `key`.
    pub fn may_read(key: &[u8]) -> Result<bool, Error> {
        Ok(may(vec![Check { key: key.to_vec(), write: false, under: false }])?.first() == Some(&true))
    }

    /// Whether the caller may write `key`.
    pub fn may_write(key: &[u8]) -> Result<bool, Error> {
        Ok(may(vec![Check { key: key.to_vec(), write: true, under: false }])?.first() == Some(&true))
    }
}

/// Exports `fn name(I) -> Result<O, Error>` (`I: Deserialize`, `O: Serialize`, both JSON; an empty input decodes as
/// `null`) as the plugin function `name`.
#[macro_export]
macro_rules! handler {
    ($name:ident) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(export_name = stringify!($name))]
            pub extern "C" fn __pando_export() -> i32 {
                $crate::__private::run_json($name)
            }
        };
    };
}

/// Exports `fn name(Vec<u8>) -> Result<Vec<u8>, Error>` as the plugin function `name`, bytes in and out.
#[macro_export]
macro_rules! raw_handler {
    ($name:ident) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(export_name = stringify!($name))]
            pub extern "C" fn __pando_export() -> i32 {
                $crate::__private::run_raw($name)
            }
        };
    };
}

/// Exports `fn() -> Result<(), Error>` as `init`, run once per instance before it serves calls. An error refuses the
/// plugin's new generation on that node, which keeps serving the previous one.
#[macro_export]
macro_rules! init {
    ($function:path) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn init() -> i32 {
                $crate::__private::run_json(|(): ()| $function())
            }
        };
    };
}

/// Exports `fn(TimerFired) -> Result<(), Error>` as `on_timer`.
#[macro_export]
macro_rules! on_timer {
    ($function:path) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn on_timer() -> i32 {
                $crate::__private::run_msgpack::<$crate::TimerFired>($function)
            }
        };
    };
}

/// Exports `fn(serde_json::Value) -> Result<(), Error>` as `on_hook`.
#[macro_export]
macro_rules! on_hook {
    ($function:path) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn on_hook() -> i32 {
                $crate::__private::run_json($function)
            }
        };
    };
}

#[cfg(target_arch = "wasm32")]
mod host {
    use extism_pdk::host_fn;

    use super::{Error, abi::names};

    #[host_fn]
    extern "ExtismHost" {
        fn pando_log(input: Vec<u8>) -> Vec<u8>;
        fn pando_time(input: Vec<u8>) -> Vec<u8>;
        fn pando_kv_get(input: Vec<u8>) -> Vec<u8>;
        fn pando_kv_put(input: Vec<u8>) -> Vec<u8>;
        fn pando_kv_delete(input: Vec<u8>) -> Vec<u8>;
        fn pando_kv_scan(input: Vec<u8>) -> Vec<u8>;
        fn pando_kv_cas(input: Vec<u8>) -> Vec<u8>;
        fn pando_kv_batch(input: Vec<u8>) -> Vec<u8>;
        fn pando_blob_get(input: Vec<u8>) -> Vec<u8>;
        fn pando_blob_put(input: Vec<u8>) -> Vec<u8>;
        fn pando_blob_has(input: Vec<u8>) -> Vec<u8>;
        fn pando_node_info(input: Vec<u8>) -> Vec<u8>;
        fn pando_random(input: Vec<u8>) -> Vec<u8>;
        fn pando_sign(input: Vec<u8>) -> Vec<u8>;
        fn pando_verify(input: Vec<u8>) -> Vec<u8>;
        fn pando_timer_schedule(input: Vec<u8>) -> Vec<u8>;
        fn pando_timer_cancel(input: Vec<u8>) -> Vec<u8>;
        fn pando_hook_subscribe(input: Vec<u8>) -> Vec<u8>;
        fn pando_hook_unsubscribe(input: Vec<u8>) -> Vec<u8>;
        fn pando_sealed_get(input: Vec<u8>) -> Vec<u8>;
        fn pando_sealed_scan(input: Vec<u8>) -> Vec<u8>;
        fn pando_sealed_write(input: Vec<u8>) -> Vec<u8>;
        fn pando_caller_may(input: Vec<u8>) -> Vec<u8>;
    }

    pub(crate) fn call(name: &'static str, input: Vec<u8>) -> Result<Vec<u8>, Error> {
        // SAFETY: every import takes and returns one extism memory block, which is what the node registers.
        let answer = unsafe {
            match name {
                names::LOG => pando_log(input),
                names::TIME => pando_time(input),
                names::KV_GET => pando_kv_get(input),
                names::KV_PUT => pando_kv_put(input),
                names::KV_DELETE => pando_kv_delete(input),
                names::KV_SCAN => pando_kv_scan(input),
                names::KV_CAS => pando_kv_cas(input),
                names::KV_BATCH => pando_kv_batch(input),
                names::BLOB_GET => pando_blob_get(input),
                names::BLOB_PUT => pando_blob_put(input),
                names::BLOB_HAS => pando_blob_has(input),
                names::NODE_INFO => pando_node_info(input),
                names::RANDOM => pando_random(input),
                names::SIGN => pando_sign(input),
                names::VERIFY => pando_verify(input),
                names::TIMER_SCHEDULE => pando_timer_schedule(input),
                names::TIMER_CANCEL => pando_timer_cancel(input),
                names::HOOK_SUBSCRIBE => pando_hook_subscribe(input),
                names::HOOK_UNSUBSCRIBE => pando_hook_unsubscribe(input),
                names::SEALED_GET => pando_sealed_get(input),
                names::SEALED_SCAN => pando_sealed_scan(input),
                names::SEALED_WRITE => pando_sealed_write(input),
                names::CALLER_MAY => pando_caller_may(input),
                other => return Err(Error::new("INTERNAL", format!("no host function {other}"))),
            }
        };
        answer.map_err(|error| Error::new("INTERNAL", format!("host call {name} failed: {error}")))
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    pub(crate) use super::testing::call;
}

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use wasm::*;

    #[cfg(target_arch = "wasm32")]
    mod wasm {
        use serde::Serialize;
        use serde::de::DeserializeOwned;

        use crate::Error;

        fn fail(error: &Error) -> i32 {
            let message = error.to_string();
            if let Ok(memory) = extism_pdk::Memory::from_bytes(message.as_bytes()) {
                // SAFETY: hands the host an extism memory block holding the message, as extism-pdk itself does.
                unsafe { extism_pdk::extism::error_set(memory.offset()) };
            }
            1
        }

        fn finish(output: Result<Vec<u8>, Error>) -> i32 {
            match output
                .and_then(|bytes| extism_pdk::output(bytes).map_err(|error| Error::new("INTERNAL", error.to_string())))
            {
                Ok(()) => 0,
                Err(error) => fail(&error),
            }
        }

        pub fn run_json<I: DeserializeOwned, O: Serialize>(handler: impl FnOnce(I) -> Result<O, Error>) -> i32 {
            let input = extism_pdk::input_bytes();
            let input = if input.is_empty() { b"null".to_vec() } else { input };
            finish(
                serde_json::from_slice(&input)
                    .map_err(Error::from)
                    .and_then(handler)
                    .and_then(|output| serde_json::to_vec(&output).map_err(Error::from)),
            )
        }

        pub fn run_raw(handler: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, Error>) -> i32 {
            finish(handler(extism_pdk::input_bytes()))
        }

        pub fn run_msgpack<I: DeserializeOwned>(handler: impl FnOnce(I) -> Result<(), Error>) -> i32 {
            let input = extism_pdk::input_bytes();
            finish(crate::abi::decode(&input).map_err(Error::from).and_then(handler).map(|()| Vec::new()))
        }
    }
}
