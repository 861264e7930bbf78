//! The simulator's stand-in for extism: a deterministic plugin engine behind the same seam as wasm (a generation's
//! [`Module`](super::load::Module)), so the simulated world runs the real plugin lifecycle around it.
//!
//! Extism cannot run inside a seed: compiling runs on a blocking thread, every instance's worker is an OS thread
//! blocking on its queue, and wasmtime's epoch and timeout threads keep the wall clock. None of that replays from a
//! seed on the simulator's one thread. So in the simulated world ([`PluginEngine::Simulated`](super::PluginEngine))
//! a module is a small descriptor instead of wasm, and an instance is a task on the simulated runtime that takes
//! calls from the same bounded queue. Everything around it is the node's own code: the registry in the log, the wasm
//! blob fetched from the cluster and checked against its hash, reconciling on the commit stream, load reports,
//! switching routes only once the new generation's instances run, draining the old generation, and replacing failed
//! instances (and quarantine past the restart intensity).
//!
//! A simulated module answers two functions: `whoami` (the generation of the instance that ran the call and the
//! module's label, as text: the simulator's checker uses it to see which generation really answered, whatever the
//! route said) and `trap` (fails like a wasm trap: the caller gets `PLUGIN_FAILED` and the instance is replaced).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::TryRecvError;
use pando_protocol::error::{ErrorCode, WireError};
use ractor::ActorRef;

use super::instance::{InstanceArgs, InstanceMsg};
use super::load::LoadError;

/// What every simulated module starts with; the rest is the module's label (any text, so versions hash apart).
pub const SIM_MODULE_MAGIC: &[u8] = b"\0pando-simulated-plugin\n";
/// How often an idle simulated instance looks at its queue (simulated time).
const POLL: Duration = Duration::from_millis(10);
/// What a call takes (simulated time): enough that calls and switches interleave.
const CALL_TIME: Duration = Duration::from_millis(2);

/// A module the simulated engine "compiled": the descriptor's label.
#[derive(Debug)]
pub struct SimModule {
    pub label: String,
}

/// The bytes of a simulated module labelled `label` (what the simulator's operator installs as the plugin's wasm).
pub fn sim_module(label: &str) -> Vec<u8> {
    [SIM_MODULE_MAGIC, label.as_bytes()].concat()
}

/// "Compiles" a simulated module: anything that is not a descriptor does not compile (a fatal load error, reported
/// as malformed wasm's would be).
pub(super) fn compile(bytes: &[u8]) -> Result<SimModule, LoadError> {
    let fatal =
        |message: &str| LoadError { message: format!("the wasm does not compile: {message}"), transient: false };
    let label = bytes
        .strip_prefix(SIM_MODULE_MAGIC)
        .ok_or_else(|| fatal("not a simulated module (the simulated engine runs no real wasm)"))?;
    let label = std::str::from_utf8(label).map_err(|_| fatal("the module's label is not UTF-8"))?;
    Ok(SimModule { label: label.to_string() })
}

/// One simulated instance's worker: takes calls from its generation's queue until the queue closes and empties (then
/// tells its actor it drained), the actor goes (`stop`), or a call traps (then tells its actor it failed).
pub(super) async fn serve(
    module: Arc<SimModule>,
    args: InstanceArgs,
    stop: Arc<AtomicBool>,
    actor: ActorRef<InstanceMsg>,
) {
    let label = &module.label;
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let job = match args.queue.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Empty) => {
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(TryRecvError::Disconnected) => {
                let _ = actor.cast(InstanceMsg::Drained);
                return;
            }
        };
        if job.reply.as_ref().is_some_and(|reply| reply.is_closed())
            || tokio::time::Instant::now().into_std() >= job.deadline
        {
            continue;
        }
        tokio::time::sleep(CALL_TIME).await;
        args.calls.fetch_add(1, Ordering::Relaxed);
        let plugin = &args.plugin;
        let (answer, trapped) = match job.function.as_str() {
            "whoami" => (Ok(format!("{} {label}", args.generation).into_bytes()), false),
            "trap" => (
                Err(WireError::new(ErrorCode::PluginFailed, format!("plugin `{plugin}` trapped: simulated trap"))),
                true,
            ),
            _ => (Err(WireError::new(ErrorCode::NotFound, format!("plugin `{plugin}` has no such function"))), false),
        };
        if let Some(reply) = job.reply {
            let _ = reply.send(answer);
        }
        if trapped {
            let _ = actor.cast(InstanceMsg::Failed("simulated trap".into()));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_compiles_to_its_label_and_anything_else_does_not_compile() {
        assert_eq!(compile(&sim_module("echo v2")).unwrap().label, "echo v2");
        let refused = compile(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(refused.message.starts_with("the wasm does not compile") && !refused.transient, "{}", refused.message);
        assert!(compile(&[SIM_MODULE_MAGIC, &[0xff, 0xfe][..]].concat()).is_err());
    }
}
