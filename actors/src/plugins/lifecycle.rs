//! What the PluginSupervisor does with the registry: reconciles (once its node caught up with the cluster), loads
//! generations and switches calls to them, stops and drains what the registry no longer wants, quarantines a plugin
//! whose instances fail too often, and reports each change through the log.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use pando_protocol::command::Command;
use pando_protocol::error::ErrorCode;
use pando_protocol::plugin::{NodePluginState, NodePluginStatus, PluginCommand, PluginRecord};
use ractor::{ActorId, ActorRef};
use tokio::time::Instant;

use super::instance::{InstanceArgs, PluginActor};
use super::load::{Compiled, LoadError, load};
use super::routes::{PluginRoutes, Route};
use super::{Generation, LocalPlugin, PluginsMsg, PluginsState};
use crate::sim::{PlantedBug, planted_bug};
use crate::supervision::{ChildSpec, Intensity, Pool, Restart};

impl PluginsState {
    pub(super) fn routes(&self) -> PluginRoutes {
        self.args.handle.routes.clone()
    }

    /// Calls go by the routes once the node caught up and nothing is loading: every plugin the registry named then is
    /// served, or refused with the reason.
    pub(super) fn start_serving_once_loaded(&self) {
        if self.caught_up && self.plugins.values().all(|local| local.loading.is_none()) {
            self.routes().started();
        }
    }

    /// Starts loading every generation the registry wants and this node does not run; stops what it no longer
    /// wants. Nothing before the node caught up with the cluster.
    pub(super) fn reconcile(&mut self, myself: &ActorRef<PluginsMsg>) {
        if !self.caught_up {
            return;
        }
        self.reconcile_caught_up(myself);
        self.start_serving_once_loaded();
    }

    pub(super) fn reconcile_caught_up(&mut self, myself: &ActorRef<PluginsMsg>) {
        let Ok(reader) = self.args.storage.reader() else { return };
        let records = match reader.plugins() {
            Ok(records) => records,
            Err(fault) => {
                tracing::error!(%fault, "cannot read the plugin registry");
                return;
            }
        };
        let wanted: std::collections::BTreeSet<&str> =
            records.iter().map(|record| record.manifest.name.as_str()).collect();
        let removed: Vec<String> =
            self.plugins.keys().filter(|name| !wanted.contains(name.as_str())).cloned().collect();
        for name in removed {
            tracing::info!(plugin = %name, "plugin removed; stopping it");
            self.stop_serving(&name);
            self.routes().set(&name, None);
            if let Some(local) = self.plugins.get_mut(&name) {
                // Draining generations finish what they hold; the entry goes once they are gone.
                *local = LocalPlugin { draining: std::mem::take(&mut local.draining), ..LocalPlugin::default() };
            }
            self.plugins.retain(|key, local| key != &name || !local.draining.is_empty());
        }
        for record in records {
            let name = record.manifest.name.clone();
            let generation = record.generation;
            let local = self.plugins.entry(name.clone()).or_default();
            if !record.enabled {
                if local.disabled != Some(generation) {
                    local.disabled = Some(generation);
                    local.loading = None;
                    local.quarantined = None;
                    local.failed = None;
                    self.stop_serving(&name);
                    self.routes().set(&name, Some(Route::Disabled { generation }));
                    self.report(&name, generation, NodePluginState::Stopped, None);
                }
                continue;
            }
            local.disabled = None;
            let current = local.serving.as_ref().map(|serving| serving.generation);
            let settled = current == Some(generation)
                || (current.is_some() && planted_bug(PlantedBug::PluginReconcileSkipsUpgrade))
                || local.loading == Some(generation)
                || local.quarantined.as_ref().is_some_and(|(quarantined, _)| *quarantined == generation)
                || local.failed.as_ref().is_some_and(|(failed, _, retry)| {
                    *failed == generation && retry.is_none_or(|at| Instant::now() < at)
                });
            if settled {
                continue;
            }
            local.loading = Some(generation);
            tracing::info!(plugin = %name, generation, "loading plugin generation");
            let args = self.args.clone();
            let actor = myself.clone();
            tokio::spawn(async move {
                let result = load(&record, &args).await;
                let _ = actor.cast(PluginsMsg::Compiled { record, result });
            });
        }
    }

    /// A generation compiled (or failed to): start its instances and switch calls to it.
    pub(super) async fn compiled(
        &mut self,
        myself: &ActorRef<PluginsMsg>,
        record: PluginRecord,
        result: Result<Compiled, LoadError>,
    ) {
        let name = record.manifest.name.clone();
        let generation = record.generation;
        let Some(local) = self.plugins.get_mut(&name) else { return };
        if local.loading != Some(generation) {
            // Superseded (a newer generation, a disable or a removal) while it loaded.
            return;
        }
        local.loading = None;
        let compiled = match result {
            Ok(compiled) => compiled,
            Err(error) => {
                self.load_failed(&name, generation, error);
                return;
            }
        };
        let manifest = record.manifest.clone();
        let (sender, queue) = crossbeam_channel::bounded(manifest.queue as usize);
        let calls = Arc::new(AtomicU64::new(0));
        let instance = InstanceArgs {
            plugin: name.clone(),
            generation,
            index: 0,
            module: compiled.module,
            queue: queue.clone(),
            timeout_ms: manifest.timeout_ms,
            fuel: manifest.fuel,
            memory_pages: manifest.memory_pages,
            calls: calls.clone(),
        };
        let config = &self.args.config;
        let intensity = Intensity { restarts_max: config.restart_intensity, period: config.restart_period };
        // Transient: an instance that ends normally (its queue closed and emptied) is done; one that fails is replaced.
        let pool =
            Pool::new(format!("plugin {name} generation {generation}"), manifest.instances as usize, intensity, {
                move |index| {
                    ChildSpec::new(
                        "instance",
                        Restart::Transient,
                        PluginActor,
                        InstanceArgs { index, ..instance.clone() },
                    )
                }
            });
        let pool = match pool.spawn_linked(myself.get_cell()).await {
            Ok(pool) => pool,
            Err(error) => {
                let message = crate::supervision::spawn_error_text(&error);
                self.load_failed(&name, generation, LoadError { message, transient: false });
                return;
            }
        };
        self.pools.insert(pool.get_id(), (name.clone(), generation));
        let serving = Generation { generation, host: compiled.host, queue, pool, calls };
        // Every instance is up: switch calls over. Dropping the old route closes the old queue; its instances drain.
        self.routes().set(&name, Some(Route::Serving { generation, queue: sender, stale: None }));
        let local = self.plugins.entry(name.clone()).or_default();
        if let Some(old) = local.serving.replace(serving) {
            local.draining.push(old);
        }
        local.failed = None;
        local.quarantined = None;
        tracing::info!(plugin = %name, generation, "plugin generation serving");
        self.report(&name, generation, NodePluginState::Running, None);
    }

    pub(super) fn load_failed(&mut self, name: &str, generation: u64, error: LoadError) {
        tracing::warn!(plugin = %name, generation, error = %error.message, "plugin generation failed to load");
        let Some(local) = self.plugins.get_mut(name) else { return };
        let retry = error.transient.then(|| Instant::now() + self.args.config.fetch_retry);
        local.failed = Some((generation, error.message.clone(), retry));
        local.last_error = Some(error.message.clone());
        if !error.transient {
            self.report(name, generation, NodePluginState::LoadFailed, Some(error.message));
        }
    }

    /// A generation's pool ended: normally once its instances drained (or it was stopped), with `failure` when its
    /// instances failed past the restart intensity, which quarantines the plugin if that generation was serving.
    pub(super) fn pool_ended(&mut self, id: ActorId, failure: Option<String>) {
        let Some((name, generation)) = self.pools.remove(&id) else { return };
        let routes = self.routes();
        let Some(local) = self.plugins.get_mut(&name) else { return };
        local.draining.retain(|draining| draining.pool.get_id() != id);
        let was_serving = local.serving.as_ref().is_some_and(|serving| serving.pool.get_id() == id);
        if was_serving {
            local.serving = None;
            routes.set(&name, None);
            match failure {
                Some(error) => {
                    let reason = format!("its instances failed too often ({error})");
                    tracing::error!(plugin = %name, generation, %reason, "plugin quarantined");
                    local.last_error = Some(error);
                    local.quarantined = Some((generation, reason.clone()));
                    routes.set(&name, Some(Route::Quarantined { generation, reason: reason.clone() }));
                    self.report(&name, generation, NodePluginState::Quarantined, Some(reason));
                }
                // Not expected while the route holds its queue open; the next reconcile loads the generation again.
                None => tracing::warn!(plugin = %name, generation, "a serving plugin generation's pool stopped"),
            }
        }
        self.plugins.retain(|_, local| {
            local.serving.is_some()
                || !local.draining.is_empty()
                || local.loading.is_some()
                || local.failed.is_some()
                || local.quarantined.is_some()
                || local.disabled.is_some()
        });
    }

    /// Stops the serving generation's instances and drops its route (the caller sets the new one).
    pub(super) fn stop_serving(&mut self, name: &str) {
        let Some(local) = self.plugins.get_mut(name) else { return };
        if let Some(serving) = local.serving.take() {
            serving.pool.stop(Some("plugin stopped".into()));
            // Forgotten once its pool has stopped.
            local.draining.push(serving);
        }
        self.routes().set(name, None);
    }

    /// Reports, through the log, what this node runs of a plugin. Retried a few times; the periodic reconcile does
    /// not re-report, so a lost report shows as stale in `pando plugin info` until the next change.
    pub(super) fn report(&self, name: &str, generation: u64, state: NodePluginState, error: Option<String>) {
        let running = self.plugins.get(name).and_then(|local| local.serving.as_ref()).map_or(0, |s| s.generation);
        let status = NodePluginStatus { node: self.args.node_id, running, state, generation, error, reported_ms: 0 };
        let command = Command::Plugin(PluginCommand::Report { name: name.to_string(), status });
        let proposer = self.args.proposer.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            for attempt in 0..5u32 {
                match proposer.propose_anywhere(command.clone(), Duration::from_secs(5)).await {
                    Ok(_) => return,
                    Err(error) if error.code == ErrorCode::NotFound => return,
                    Err(error) => {
                        tracing::debug!(plugin = %name, %error, attempt, "plugin report not recorded yet");
                        tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
                    }
                }
            }
            tracing::warn!(plugin = %name, "gave up reporting the plugin's state");
        });
    }
}
