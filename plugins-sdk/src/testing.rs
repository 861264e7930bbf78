//! An in-memory host for testing plugin logic natively: KV (no prefix checks), sealed storage, a caller's scope
//! ([`set_caller`]), the clock, logs, timers, hooks and randomness (deterministic: a SplitMix64 stream from a seed,
//! [`set_random_seed`], so a test's draws repeat; never secure). Blobs and signing answer `UNAVAILABLE`. Each thread
//! has its own host.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::{Error, abi};

#[derive(Default)]
struct Host {
    kv: BTreeMap<Vec<u8>, abi::Entry>,
    revision: u64,
    logs: Vec<(abi::LogLevel, String)>,
    timers: BTreeMap<u64, abi::TimerArgs>,
    next_timer: u64,
    hooks: Vec<String>,
    now_ms: u64,
    random_state: u64,
    sealed: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The calling client's KV prefixes, each readable or also writable; `None`: no client (every answer yes).
    caller: Option<Vec<(Vec<u8>, bool)>>,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

/// Forgets everything the test host holds.
pub fn reset() {
    HOST.with(|host| *host.borrow_mut() = Host::default());
}

/// Sets the clock `now_ms` answers.
pub fn set_now_ms(now_ms: u64) {
    HOST.with(|host| host.borrow_mut().now_ms = now_ms);
}

/// Seeds the test host's random stream (its draws are a function of the seed alone).
pub fn set_random_seed(seed: u64) {
    HOST.with(|host| host.borrow_mut().random_state = seed);
}

/// SplitMix64: the next 8 bytes of the test host's random stream.
fn next_random(state: &mut u64) -> [u8; 8] {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).to_le_bytes()
}

/// Makes the following calls run for a client whose token holds these KV prefixes (`true`: writable too);
/// `None`: for no client, as `init`, timers and hook deliveries run.
pub fn set_caller(prefixes: Option<&[(&str, bool)]>) {
    let caller =
        prefixes.map(|prefixes| prefixes.iter().map(|(prefix, write)| (prefix.as_bytes().to_vec(), *write)).collect());
    HOST.with(|host| host.borrow_mut().caller = caller);
}

/// Every sealed row, in key order.
pub fn sealed_rows() -> Vec<(Vec<u8>, Vec<u8>)> {
    HOST.with(|host| host.borrow().sealed.iter().map(|(key, value)| (key.clone(), value.clone())).collect())
}

fn caller_may(caller: &Option<Vec<(Vec<u8>, bool)>>, check: &abi::CallerCheck) -> bool {
    let Some(prefixes) = caller else { return true };
    prefixes.iter().any(|(prefix, writable)| {
        (*writable || !check.write)
            && (check.key.starts_with(prefix) || (check.under && prefix.starts_with(&check.key)))
    })
}

/// What the plugin logged so far.
pub fn logs() -> Vec<(abi::LogLevel, String)> {
    HOST.with(|host| host.borrow().logs.clone())
}

/// Pending timers: id, delay and payload.
pub fn timers() -> Vec<(u64, u64, Vec<u8>)> {
    HOST.with(|host| {
        host.borrow().timers.iter().map(|(id, timer)| (*id, timer.delay_ms, timer.payload.clone())).collect()
    })
}

fn answer<T: serde::Serialize>(result: abi::HostResult<T>) -> Vec<u8> {
    abi::encode(&result)
}

fn args<T: serde::de::DeserializeOwned>(input: &[u8]) -> Result<T, Error> {
    abi::decode(input).map_err(Error::from)
}

fn refuse(code: &str, message: &str) -> abi::HostError {
    abi::HostError { code: code.into(), message: message.into() }
}

fn write(host: &mut Host, key: Vec<u8>, value: Vec<u8>) -> u64 {
    host.revision += 1;
    let version = host.kv.get(&key).map_or(0, |entry| entry.version) + 1;
    let entry = abi::Entry { key: key.clone(), value, version, mod_revision: host.revision };
    host.kv.insert(key, entry);
    host.revision
}

/// One page of `rows` under `prefix` strictly after `after`, as the node pages a scan: at most `limit` (1 to 1,000),
/// and the last key when more follow.
fn page<V: Keyed>(
    rows: &BTreeMap<Vec<u8>, V>,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: u32,
) -> (Vec<V::Row>, Option<Vec<u8>>) {
    let limit = limit.clamp(1, 1_000) as usize;
    let mut page: Vec<(&Vec<u8>, &V)> = rows
        .range(prefix.to_vec()..)
        .take_while(|(key, _)| key.starts_with(prefix))
        .filter(|(key, _)| after.is_none_or(|after| key.as_slice() > after))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next = if more { page.last().map(|(key, _)| (*key).clone()) } else { None };
    (page.into_iter().map(|(key, value)| value.row(key)).collect(), next)
}

/// What a scan answers per stored value.
trait Keyed {
    type Row;
    fn row(&self, key: &[u8]) -> Self::Row;
}

impl Keyed for abi::Entry {
    type Row = abi::Entry;
    fn row(&self, _: &[u8]) -> abi::Entry {
        self.clone()
    }
}

impl Keyed for Vec<u8> {
    type Row = (Vec<u8>, Vec<u8>);
    fn row(&self, key: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (key.to_vec(), self.clone())
    }
}

pub(crate) fn call(name: &'static str, input: Vec<u8>) -> Result<Vec<u8>, Error> {
    use abi::names;
    HOST.with(|host| {
        let host = &mut *host.borrow_mut();
        Ok(match name {
            names::LOG => {
                let log: abi::LogArgs = args(&input)?;
                host.logs.push((log.level, log.message));
                answer(Ok(()))
            }
            names::TIME => answer(Ok(host.now_ms)),
            names::RANDOM => {
                let random: abi::RandomArgs = args(&input)?;
                if random.len > abi::RANDOM_BYTES_MAX {
                    return Ok(answer::<abi::BlobData>(Err(refuse(
                        "TOO_LARGE",
                        "more random bytes than one call may ask for",
                    ))));
                }
                let mut data = Vec::with_capacity(random.len as usize + 8);
                while data.len() < random.len as usize {
                    data.extend_from_slice(&next_random(&mut host.random_state));
                }
                data.truncate(random.len as usize);
                answer(Ok(abi::BlobData { data }))
            }
            names::KV_GET => {
                let key: abi::KeyArgs = args(&input)?;
                answer(Ok(host.kv.get(&key.key).cloned()))
            }
            names::KV_PUT => {
                let put: abi::PutArgs = args(&input)?;
                answer(Ok(abi::Written { revision: write(host, put.key, put.value) }))
            }
            names::KV_DELETE => {
                let key: abi::KeyArgs = args(&input)?;
                let existed = host.kv.remove(&key.key).is_some();
                if existed {
                    host.revision += 1;
                }
                answer(Ok(abi::Deleted { revision: host.revision, existed }))
            }
            names::KV_SCAN => {
                let scan: abi::ScanArgs = args(&input)?;
                let (entries, next) = page(&host.kv, &scan.prefix, scan.after.as_deref(), scan.limit);
                answer(Ok(abi::ScanPage { entries, next }))
            }
            names::KV_CAS => {
                let cas: abi::CasArgs = args(&input)?;
                let current = host.kv.get(&cas.key).map(|entry| entry.value.clone());
                if current != cas.expected {
                    answer::<abi::Written>(Err(refuse("CONFLICT", "current value differs")))
                } else {
                    answer(Ok(abi::Written { revision: write(host, cas.key, cas.value) }))
                }
            }
            names::KV_BATCH => {
                let batch: abi::BatchArgs = args(&input)?;
                for op in batch.ops {
                    match op {
                        abi::BatchOp::Put { key, value } => {
                            write(host, key, value);
                        }
                        abi::BatchOp::Delete { key } => {
                            host.kv.remove(&key);
                        }
                    }
                }
                answer(Ok(abi::Written { revision: host.revision }))
            }
            names::NODE_INFO => {
                answer(Ok(abi::NodeInfo { node_id: 1, leader_id: Some(1), plugin: "test".into(), generation: 1 }))
            }
            names::TIMER_SCHEDULE => {
                let timer: abi::TimerArgs = args(&input)?;
                host.next_timer += 1;
                host.timers.insert(host.next_timer, timer);
                answer(Ok(abi::TimerId { id: host.next_timer }))
            }
            names::TIMER_CANCEL => {
                let id: abi::TimerId = args(&input)?;
                answer(Ok(host.timers.remove(&id.id).is_some()))
            }
            names::HOOK_SUBSCRIBE => {
                let hook: abi::HookArgs = args(&input)?;
                host.hooks.push(hook.subject);
                answer(Ok(()))
            }
            names::HOOK_UNSUBSCRIBE => {
                let hook: abi::HookArgs = args(&input)?;
                let before = host.hooks.len();
                host.hooks.retain(|subject| *subject != hook.subject);
                answer(Ok(host.hooks.len() != before))
            }
            names::SEALED_GET => {
                let get: abi::SealedGetArgs = args(&input)?;
                answer(Ok(abi::SealedValue { value: host.sealed.get(&get.key).cloned() }))
            }
            names::SEALED_SCAN => {
                let scan: abi::SealedScanArgs = args(&input)?;
                let (rows, next) = page(&host.sealed, &scan.prefix, scan.after.as_deref(), scan.limit);
                let entries = rows.into_iter().map(|value| abi::SealedEntry { key: value.0, value: value.1 }).collect();
                answer(Ok(abi::SealedScanPage { entries, next }))
            }
            names::SEALED_WRITE => {
                let write: abi::SealedWriteArgs = args(&input)?;
                let failed = write.ops.iter().find_map(|op| match op {
                    abi::SealedOp::Check { key, expected } if host.sealed.get(key) != expected.as_ref() => {
                        Some(String::from_utf8_lossy(key).into_owned())
                    }
                    _ => None,
                });
                if let Some(key) = failed {
                    return Ok(answer::<abi::SealedWritten>(Err(refuse(
                        "CONFLICT",
                        &format!("sealed key {key:?} differs"),
                    ))));
                }
                let mut changed = 0;
                for op in write.ops {
                    match op {
                        abi::SealedOp::Check { .. } => {}
                        abi::SealedOp::Put { key, value } => {
                            host.sealed.insert(key, value);
                            changed += 1;
                        }
                        abi::SealedOp::Delete { key } => changed += u32::from(host.sealed.remove(&key).is_some()),
                    }
                }
                let bytes = host.sealed.iter().map(|(key, value)| (key.len() + value.len()) as u64).sum();
                answer(Ok(abi::SealedWritten { changed, rows: host.sealed.len() as u64, bytes }))
            }
            names::CALLER_MAY => {
                let checks: abi::CallerArgs = args(&input)?;
                let allowed = checks.checks.iter().map(|check| caller_may(&host.caller, check)).collect();
                answer(Ok(abi::CallerAnswer { allowed }))
            }
            _ => answer::<()>(Err(refuse("UNAVAILABLE", "the test host does not provide this host function"))),
        })
    })
}
