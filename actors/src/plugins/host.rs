//! The host functions a plugin calls, running with the plugin's identity and permissions.
//!
//! Each checks the manifest's permission before doing anything and answers a [`HostResult`]: a refusal is a value the
//! plugin can handle, logged on the node, never a trap. KV access is checked twice: here, and where it takes effect
//! (the state machine for writes, the read path over the same snapshot as the registry for reads), so a plugin can
//! reach nothing outside its prefixes even if this glue had a bug. Host functions run on the instance's worker
//! thread, never on an async one: they may block on the node's runtime to reach other subsystems.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use extism::{CurrentPlugin, Function, PTR, UserData, Val};
use pando_protocol::blob::BlobHash;
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::{Bytes, Consistency, KvRequest, KvResponse, WriteOp};
use pando_protocol::plugin::sealed::{SealedOp, SealedRead, SealedReadAnswer, SealedWritten};
use pando_protocol::plugin::{Permission, PluginManifest};
use pando_protocol::plugin_abi::{self as abi, HostError, HostResult, names};
use pando_protocol::token::{Access, Capability, allows};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::instance::Job;
use super::{PluginRoutes, PluginsArgs};
use crate::clock::Clock;
use crate::raft::RaftHandle;

/// What a plugin's host functions reach in the rest of the node: KV and blobs, on the plugin's behalf. The node's
/// services implement it (`services::plugins::ServicesHost`), so this subsystem imports no service: the services sit
/// above the plugins (calls go through them) and the host functions reach back only through this trait.
pub trait PluginHost: Send + Sync + 'static {
    /// A read as plugin `plugin`, checked against its prefixes by the read path.
    fn kv_read(&self, plugin: &str, request: &KvRequest) -> Result<KvResponse, WireError>;
    /// A write as plugin `plugin`, checked by the state machine, answered once this node applied it.
    fn kv_write(
        &self,
        plugin: String,
        request: KvRequest,
        timeout: Duration,
    ) -> BoxFuture<Result<KvResponse, WireError>>;
    /// A blob's bytes, at most `size_max` of them, fetched from a holder if this node has no copy.
    fn blob_get(&self, hash: BlobHash, size_max: u64, timeout: Duration) -> BoxFuture<Result<Vec<u8>, WireError>>;
    /// Adds bytes as a blob, answered once this node recorded it.
    fn blob_add(&self, data: Vec<u8>, timeout: Duration) -> BoxFuture<Result<BlobHash, WireError>>;
    /// Whether the cluster holds a blob.
    fn blob_has(&self, hash: &BlobHash) -> Result<bool, WireError>;
    /// A read of plugin `plugin`'s sealed storage, checked against the registry by the read path (after a read
    /// index unless `stale`).
    fn sealed_read(
        &self,
        plugin: String,
        read: SealedRead,
        stale: bool,
        timeout: Duration,
    ) -> BoxFuture<Result<SealedReadAnswer, WireError>>;
    /// A write to plugin `plugin`'s sealed storage, checked by the state machine, answered once committed.
    fn sealed_write(
        &self,
        plugin: String,
        ops: Vec<SealedOp>,
        timeout: Duration,
    ) -> BoxFuture<Result<SealedWritten, WireError>>;
}

/// A future a [`PluginHost`] answers with.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Longest a host function waits on the rest of the node (a commit, a blob fetch); never beyond the call's own
/// remaining time.
const HOST_CALL_TIMEOUT: Duration = Duration::from_secs(10);

thread_local! {
    /// What is left of the running call's timeout, set on entry to every host function.
    static CALL_BUDGET: std::cell::Cell<Duration> = const { std::cell::Cell::new(HOST_CALL_TIMEOUT) };
    /// The scope of the client whose call runs on this thread (`None`: the plugin's own scope only, as for a timer).
    static CALL_SCOPE: std::cell::RefCell<Option<CallScope>> = const { std::cell::RefCell::new(None) };
}

/// The capabilities of the client a call runs for: a plugin call runs with them intersected with the plugin's own
/// manifest, so a token cannot reach through a plugin what it could not reach itself.
pub type CallScope = Arc<[Capability]>;

/// Runs `call` with `scope` as the running call's client scope (the instance's thread runs one call at a time).
pub(crate) fn with_call_scope<T>(scope: Option<CallScope>, call: impl FnOnce() -> T) -> T {
    CALL_SCOPE.with(|current| *current.borrow_mut() = scope);
    let result = call();
    CALL_SCOPE.with(|current| *current.borrow_mut() = None);
    result
}

/// Refuses what the running call's client may not do.
fn caller_allows(plugin: &str, needs: &[Access<'_>]) -> HostResult<()> {
    CALL_SCOPE.with(|current| match current.borrow().as_ref() {
        Some(scope) => match needs.iter().find(|access| !allows(scope, **access)) {
            Some(refused) => {
                tracing::debug!(plugin, ?refused, "plugin host call outside its caller's scope");
                Err(refuse(ErrorCode::Unauthorized, format!("the caller of `{plugin}` may not do this: {refused:?}")))
            }
            None => Ok(()),
        },
        None => Ok(()),
    })
}

/// How long a host function may wait on the rest of the node.
fn budget() -> Duration {
    CALL_BUDGET.with(|budget| budget.get()).min(HOST_CALL_TIMEOUT).max(Duration::from_millis(1))
}
/// Domain separation of the per-plugin signing keys.
const SIGNING_KEY_CONTEXT: &str = "pando 2026 plugin signing key v1";

/// What the host functions of one plugin generation share.
pub struct HostContext {
    pub plugin: String,
    pub generation: u64,
    pub manifest: PluginManifest,
    pub node_id: u64,
    clock: Clock,
    raft: RaftHandle,
    services: Arc<dyn PluginHost>,
    pub runtime: tokio::runtime::Handle,
    signing: SigningRoot,
    /// The signing key of the member secret's epoch it was last derived for.
    signing_key: Mutex<Option<(u64, SigningKey)>>,
    pub(crate) timers: Mutex<Timers>,
    pub(crate) hooks: Mutex<BTreeSet<String>>,
    routes: PluginRoutes,
}

#[derive(Default)]
pub(crate) struct Timers {
    next: u64,
    pending: BTreeMap<u64, tokio::task::JoinHandle<()>>,
}

impl Drop for HostContext {
    fn drop(&mut self) {
        // A generation's timers die with it: the next generation schedules its own.
        if let Ok(timers) = self.timers.get_mut() {
            for (_, timer) in std::mem::take(&mut timers.pending) {
                timer.abort();
            }
        }
    }
}

impl HostContext {
    pub(crate) fn new(manifest: PluginManifest, generation: u64, args: &PluginsArgs) -> HostContext {
        HostContext {
            plugin: manifest.name.clone(),
            generation,
            signing: SigningRoot { founding: args.cluster_secret, storage: args.storage.clone() },
            signing_key: Mutex::new(None),
            manifest,
            node_id: args.node_id,
            clock: args.clock,
            raft: args.raft.clone(),
            services: args.host.clone(),
            runtime: tokio::runtime::Handle::current(),
            timers: Mutex::new(Timers::default()),
            hooks: Mutex::new(BTreeSet::new()),
            routes: args.handle.routes.clone(),
        }
    }

    fn require(&self, permission: Permission) -> HostResult<()> {
        if self.manifest.allows(permission) {
            return Ok(());
        }
        tracing::warn!(plugin = %self.plugin, permission = permission.as_str(), "plugin host call refused");
        Err(HostError {
            code: ErrorCode::Unauthorized.as_str().into(),
            message: format!("plugin `{}` lacks the `{}` permission", self.plugin, permission.as_str()),
        })
    }

    pub(crate) fn hook_subscriptions(&self) -> Vec<String> {
        self.hooks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect()
    }

    pub(crate) fn pending_timers(&self) -> usize {
        self.timers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pending.len()
    }
}

/// Where a plugin's signing key comes from: the member secret of the latest rotation this node applied, or the
/// secret the node was founded or joined with until the first rotation.
#[derive(Clone)]
pub struct SigningRoot {
    pub founding: [u8; 32],
    pub storage: crate::storage_actor::StorageHandle,
}

impl SigningRoot {
    /// The member secret's current epoch and secret, as this node last applied.
    pub fn current(&self) -> Result<(u64, [u8; 32]), WireError> {
        let reader = self.storage.reader().map_err(|_| WireError::new(ErrorCode::Unavailable, "storage restarting"))?;
        let rotated = reader.member_secret().map_err(|fault| WireError::new(ErrorCode::Internal, fault.to_string()))?;
        match rotated {
            None => Ok((0, self.founding)),
            Some(record) => {
                let key = record.key().map_err(|fault| WireError::new(ErrorCode::Internal, fault.to_string()))?;
                Ok((record.epoch, key))
            }
        }
    }
}

impl HostContext {
    /// The plugin's signing key for the member secret as last applied here (derived again only after a rotation).
    fn signing_key(&self) -> HostResult<SigningKey> {
        let (epoch, secret) = self.signing.current().map_err(wire)?;
        let mut cached = self.signing_key.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*cached {
            Some((derived_for, key)) if *derived_for == epoch => Ok(key.clone()),
            _ => {
                let key = plugin_signing_key(&secret, &self.plugin);
                *cached = Some((epoch, key.clone()));
                Ok(key)
            }
        }
    }
}

/// The plugin's signing key: derived from the cluster secret and the plugin's name, so every node signs with the
/// same key for it, and no two plugins (nor the node) share one.
pub fn plugin_signing_key(cluster_secret: &[u8; 32], plugin: &str) -> SigningKey {
    let mut material = cluster_secret.to_vec();
    material.extend_from_slice(plugin.as_bytes());
    SigningKey::from_bytes(&blake3::derive_key(SIGNING_KEY_CONTEXT, &material))
}

fn wire(error: WireError) -> HostError {
    HostError { code: error.code.as_str().into(), message: error.message }
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> HostError {
    HostError { code: code.as_str().into(), message: message.into() }
}

/// Every host function, bound to `context`.
pub(crate) fn functions(context: Arc<HostContext>) -> Vec<Function> {
    vec![
        function(names::LOG, &context, log),
        function(names::TIME, &context, |context, (): ()| Ok(context.clock.now_ms())),
        function(names::KV_GET, &context, kv_get),
        function(names::KV_PUT, &context, kv_put),
        function(names::KV_DELETE, &context, kv_delete),
        function(names::KV_SCAN, &context, kv_scan),
        function(names::KV_CAS, &context, kv_cas),
        function(names::KV_BATCH, &context, kv_batch),
        function(names::BLOB_GET, &context, blob_get),
        function(names::BLOB_PUT, &context, blob_put),
        function(names::BLOB_HAS, &context, blob_has),
        function(names::NODE_INFO, &context, node_info),
        function(names::RANDOM, &context, random),
        function(names::SIGN, &context, sign),
        function(names::VERIFY, &context, verify),
        function(names::TIMER_SCHEDULE, &context, timer_schedule),
        function(names::TIMER_CANCEL, &context, timer_cancel),
        function(names::HOOK_SUBSCRIBE, &context, hook_subscribe),
        function(names::HOOK_UNSUBSCRIBE, &context, hook_unsubscribe),
        function(names::SEALED_GET, &context, sealed::get),
        function(names::SEALED_SCAN, &context, sealed::scan),
        function(names::SEALED_WRITE, &context, sealed::write),
        function(names::CALLER_MAY, &context, sealed::caller_may),
    ]
}

#[path = "host_sealed.rs"]
mod sealed;

/// One host function: decodes the arguments, runs `body`, encodes its answer into a new block of plugin memory.
fn function<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    name: &'static str,
    context: &Arc<HostContext>,
    body: fn(&HostContext, A) -> HostResult<R>,
) -> Function {
    Function::new(
        name,
        [PTR],
        [PTR],
        UserData::new(context.clone()),
        move |plugin: &mut CurrentPlugin,
              inputs: &[Val],
              outputs: &mut [Val],
              user_data: UserData<Arc<HostContext>>| {
            let context = user_data.get()?.lock().map_err(|_| extism::Error::msg("host context poisoned"))?.clone();
            let remaining = plugin.time_remaining().unwrap_or(HOST_CALL_TIMEOUT);
            CALL_BUDGET.with(|budget| budget.set(remaining));
            let input: Vec<u8> = plugin.memory_get_val(&inputs[0])?;
            let answer = abi::decode::<A>(&input).and_then(|args| body(&context, args));
            let handle = plugin.memory_new(abi::encode(&answer))?;
            outputs[0] = plugin.memory_to_val(handle);
            Ok(())
        },
    )
}

fn log(context: &HostContext, args: abi::LogArgs) -> HostResult<()> {
    let mut message = args.message;
    if message.len() > abi::LOG_MESSAGE_BYTES_MAX {
        let mut end = abi::LOG_MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    let plugin = &context.plugin;
    match args.level {
        abi::LogLevel::Error => tracing::error!(plugin, "{message}"),
        abi::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
        abi::LogLevel::Info => tracing::info!(plugin, "{message}"),
        abi::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
    }
    Ok(())
}

/// A read, checked by the read path against the registry in the same snapshot.
fn kv_read(context: &HostContext, request: KvRequest) -> HostResult<KvResponse> {
    context.require(Permission::KvRead).or_else(|refusal| context.require(Permission::KvWrite).map_err(|_| refusal))?;
    let needs: Vec<Access<'_>> = request.keys().into_iter().map(Access::KvRead).collect();
    caller_allows(&context.plugin, &needs)?;
    context.services.kv_read(&context.plugin, &request).map_err(|error| {
        if error.code != ErrorCode::InvalidArgument {
            tracing::warn!(plugin = %context.plugin, %error, "plugin KV read refused");
        }
        wire(error)
    })
}

/// A write, proposed as a plugin command: the state machine checks the registry when it applies it. The answer waits
/// until this node applied it (read-your-writes), within the call's budget.
fn kv_write(context: &HostContext, request: KvRequest) -> HostResult<KvResponse> {
    context.require(Permission::KvWrite)?;
    let needs: Vec<Access<'_>> = request.keys().into_iter().map(Access::KvWrite).collect();
    caller_allows(&context.plugin, &needs)?;
    let outcome = context.runtime.block_on(context.services.kv_write(context.plugin.clone(), request, budget()));
    outcome.map_err(|error| {
        if error.code == ErrorCode::Unauthorized {
            tracing::warn!(plugin = %context.plugin, %error, "plugin KV write refused");
        }
        wire(error)
    })
}

fn entry(entry: pando_protocol::kv::KvEntry) -> abi::Entry {
    abi::Entry {
        key: entry.key.to_vec(),
        value: entry.value.to_vec(),
        version: entry.version,
        mod_revision: entry.mod_revision,
    }
}

fn kv_get(context: &HostContext, args: abi::KeyArgs) -> HostResult<Option<abi::Entry>> {
    let request = KvRequest::Get { key: Bytes::from(args.key), consistency: Consistency::Stale };
    match kv_read(context, request)? {
        KvResponse::Entry { entry: found } => Ok(found.map(entry)),
        other => Err(refuse(ErrorCode::Internal, format!("a get produced {other:?}"))),
    }
}

fn kv_scan(context: &HostContext, args: abi::ScanArgs) -> HostResult<abi::ScanPage> {
    let request = KvRequest::Scan {
        prefix: Bytes::from(args.prefix),
        limit: args.limit.clamp(1, pando_protocol::limits::SCAN_LIMIT_COUNT_MAX),
        after: args.after.map(Bytes::from),
        consistency: Consistency::Stale,
    };
    match kv_read(context, request)? {
        KvResponse::ScanPage { entries, next, .. } => Ok(abi::ScanPage {
            entries: entries.into_iter().map(entry).collect(),
            next: next.map(|next| next.to_vec()),
        }),
        other => Err(refuse(ErrorCode::Internal, format!("a scan produced {other:?}"))),
    }
}

fn written(response: KvResponse) -> HostResult<abi::Written> {
    match response {
        KvResponse::Written { revision } => Ok(abi::Written { revision }),
        other => Err(refuse(ErrorCode::Internal, format!("a write produced {other:?}"))),
    }
}

fn kv_put(context: &HostContext, args: abi::PutArgs) -> HostResult<abi::Written> {
    let request = KvRequest::Put { key: Bytes::from(args.key), value: Bytes::from(args.value), lease: None };
    written(kv_write(context, request)?)
}

fn kv_delete(context: &HostContext, args: abi::KeyArgs) -> HostResult<abi::Deleted> {
    match kv_write(context, KvRequest::Delete { key: Bytes::from(args.key) })? {
        KvResponse::Deleted { revision, existed } => Ok(abi::Deleted { revision, existed }),
        other => Err(refuse(ErrorCode::Internal, format!("a delete produced {other:?}"))),
    }
}

fn kv_cas(context: &HostContext, args: abi::CasArgs) -> HostResult<abi::Written> {
    let request = KvRequest::Cas {
        key: Bytes::from(args.key),
        expected: args.expected.map(Bytes::from),
        value: Bytes::from(args.value),
    };
    written(kv_write(context, request)?)
}

fn kv_batch(context: &HostContext, args: abi::BatchArgs) -> HostResult<abi::Written> {
    let ops = args
        .ops
        .into_iter()
        .map(|op| match op {
            abi::BatchOp::Put { key, value } => WriteOp::Put { key: Bytes::from(key), value: Bytes::from(value) },
            abi::BatchOp::Delete { key } => WriteOp::Delete { key: Bytes::from(key) },
        })
        .collect();
    written(kv_write(context, KvRequest::BatchWrite { ops })?)
}

fn parse_hash(text: &str) -> HostResult<BlobHash> {
    BlobHash::parse(text).map_err(wire)
}

fn blob_get(context: &HostContext, args: abi::BlobArgs) -> HostResult<abi::BlobData> {
    context.require(Permission::BlobRead)?;
    caller_allows(&context.plugin, &[Access::BlobRead])?;
    let hash = parse_hash(&args.hash)?;
    let data = context.runtime.block_on(context.services.blob_get(hash, abi::BLOB_BYTES_MAX as u64, budget()));
    Ok(abi::BlobData { data: data.map_err(wire)? })
}

fn blob_put(context: &HostContext, args: abi::BlobData) -> HostResult<abi::BlobArgs> {
    context.require(Permission::BlobWrite)?;
    caller_allows(&context.plugin, &[Access::BlobWrite])?;
    if args.data.len() > abi::BLOB_BYTES_MAX {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("a plugin adds at most {} bytes at once", abi::BLOB_BYTES_MAX),
        ));
    }
    // As for KV writes: the plugin finds what it added on this node.
    let hash = context.runtime.block_on(context.services.blob_add(args.data, budget())).map_err(wire)?;
    Ok(abi::BlobArgs { hash: hash.to_hex() })
}

fn blob_has(context: &HostContext, args: abi::BlobArgs) -> HostResult<bool> {
    context.require(Permission::BlobRead)?;
    caller_allows(&context.plugin, &[Access::BlobRead])?;
    let hash = parse_hash(&args.hash)?;
    context.services.blob_has(&hash).map_err(wire)
}

fn node_info(context: &HostContext, (): ()) -> HostResult<abi::NodeInfo> {
    context.require(Permission::ClusterInfo)?;
    let leader_id = context.raft.leader();
    Ok(abi::NodeInfo {
        node_id: context.node_id,
        leader_id,
        plugin: context.plugin.clone(),
        generation: context.generation,
    })
}

fn random(context: &HostContext, args: abi::RandomArgs) -> HostResult<abi::BlobData> {
    context.require(Permission::Randomness)?;
    if args.len > abi::RANDOM_BYTES_MAX {
        return Err(refuse(ErrorCode::TooLarge, format!("at most {} random bytes per call", abi::RANDOM_BYTES_MAX)));
    }
    let mut data = vec![0u8; args.len as usize];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    Ok(abi::BlobData { data })
}

fn sign(context: &HostContext, args: abi::SignArgs) -> HostResult<abi::Signed> {
    context.require(Permission::Signing)?;
    if args.message.len() > abi::SIGN_MESSAGE_BYTES_MAX {
        return Err(refuse(ErrorCode::TooLarge, format!("messages are at most {} bytes", abi::SIGN_MESSAGE_BYTES_MAX)));
    }
    let key = context.signing_key()?;
    let signature = key.sign(&args.message);
    Ok(abi::Signed { signature: signature.to_bytes().to_vec(), public_key: key.verifying_key().to_bytes().to_vec() })
}

fn verify(context: &HostContext, args: abi::VerifyArgs) -> HostResult<bool> {
    context.require(Permission::Signing)?;
    if args.message.len() > abi::SIGN_MESSAGE_BYTES_MAX {
        return Err(refuse(ErrorCode::TooLarge, format!("messages are at most {} bytes", abi::SIGN_MESSAGE_BYTES_MAX)));
    }
    let key = match args.public_key {
        None => context.signing_key()?.verifying_key(),
        Some(bytes) => {
            let bytes: [u8; 32] =
                bytes.try_into().map_err(|_| refuse(ErrorCode::InvalidArgument, "a public key is 32 bytes"))?;
            VerifyingKey::from_bytes(&bytes).map_err(|_| refuse(ErrorCode::InvalidArgument, "not an ed25519 key"))?
        }
    };
    let Ok(signature) = Signature::from_slice(&args.signature) else { return Ok(false) };
    Ok(key.verify(&args.message, &signature).is_ok())
}

fn timer_schedule(context: &HostContext, args: abi::TimerArgs) -> HostResult<abi::TimerId> {
    context.require(Permission::Timers)?;
    if args.delay_ms > abi::TIMER_DELAY_MS_MAX {
        return Err(refuse(ErrorCode::InvalidArgument, format!("timers fire within {} ms", abi::TIMER_DELAY_MS_MAX)));
    }
    if args.payload.len() > abi::TIMER_PAYLOAD_BYTES_MAX {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("timer payloads are at most {} bytes", abi::TIMER_PAYLOAD_BYTES_MAX),
        ));
    }
    let mut timers = context.timers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    timers.pending.retain(|_, timer| !timer.is_finished());
    if timers.pending.len() >= abi::TIMERS_PER_PLUGIN_MAX {
        return Err(refuse(ErrorCode::Busy, format!("{} timers are pending", abi::TIMERS_PER_PLUGIN_MAX)));
    }
    timers.next += 1;
    let id = timers.next;
    let routes = context.routes.clone();
    let plugin = context.plugin.clone();
    let generation = context.generation;
    let fired = abi::encode(&abi::TimerFired { id, payload: args.payload });
    let timer = context.runtime.spawn(async move {
        tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
        let job = Job {
            function: abi::exports::ON_TIMER.into(),
            input: fired,
            // On the runtime's clock, as every plugin call's deadline (the simulator's, in a simulated world).
            deadline: (tokio::time::Instant::now() + Duration::from_secs(60)).into_std(),
            reply: None,
            scope: None,
        };
        if let Err(refused) = routes.submit_to(&plugin, Some(generation), job) {
            let error = refused.into_error(&plugin);
            tracing::warn!(%plugin, id, %error, "a plugin timer could not fire");
        }
    });
    timers.pending.insert(id, timer);
    Ok(abi::TimerId { id })
}

fn timer_cancel(context: &HostContext, args: abi::TimerId) -> HostResult<bool> {
    context.require(Permission::Timers)?;
    let mut timers = context.timers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(match timers.pending.remove(&args.id) {
        Some(timer) if !timer.is_finished() => {
            timer.abort();
            true
        }
        _ => false,
    })
}

fn hook_subscribe(context: &HostContext, args: abi::HookArgs) -> HostResult<()> {
    context.require(Permission::Hooks)?;
    if args.subject.is_empty() || args.subject.len() > 256 {
        return Err(refuse(ErrorCode::InvalidArgument, "a subject is 1 to 256 bytes"));
    }
    let mut hooks = context.hooks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !hooks.contains(&args.subject) && hooks.len() >= abi::HOOK_SUBSCRIPTIONS_MAX {
        return Err(refuse(ErrorCode::TooLarge, format!("at most {} subscriptions", abi::HOOK_SUBSCRIPTIONS_MAX)));
    }
    hooks.insert(args.subject);
    Ok(())
}

fn hook_unsubscribe(context: &HostContext, args: abi::HookArgs) -> HostResult<bool> {
    context.require(Permission::Hooks)?;
    Ok(context.hooks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&args.subject))
}
