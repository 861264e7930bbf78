//! A service registry with TTL health checks, after Consul's: an instance of a service registers its address (and
//! tags) with a TTL, and stays `passing` while it heartbeats within the TTL. A missed TTL makes it `critical`; an
//! instance critical for its `deregister_after` is removed. An instance may also report its own health (`passing`,
//! `warning`, `critical`, with a note) between heartbeats. A registration may be tied to a lease, and goes when the
//! lease ends. Discovery lists a service's instances, or only the passing ones.
//!
//! Rows: `v/<scoped service><instance>`; the TTL runs on a [timer](super::timer).

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::keys::{self, scoped, unscope};
use super::lease::{LEASE_ATTACHMENTS_COUNT_MAX, attachments, load_lease, save_lease};
use super::timer::{self, TimerKind};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::StorageFault;

pub const SERVICE_TTL_MS_MIN: u64 = 1_000;
pub const SERVICE_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Longest an instance may stay critical before it is removed.
pub const SERVICE_DEREGISTER_AFTER_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Longest instance name, address, tag or health note.
pub const SERVICE_FIELD_BYTES_MAX: usize = 512;
pub const SERVICE_TAGS_COUNT_MAX: usize = 32;
/// Most instances one service may have, and most one discovery answers.
pub const SERVICE_INSTANCES_COUNT_MAX: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstance {
    pub service: Bytes,
    pub instance: Bytes,
    pub address: String,
    pub tags: Vec<String>,
    pub health: Health,
    pub note: String,
    pub ttl_ms: u64,
    pub deregister_after_ms: u64,
    /// Lease the registration is tied to.
    pub lease: Option<u64>,
    pub registered_ms: u64,
    /// When the TTL runs out (log time) unless a heartbeat comes; once critical, when the instance is removed.
    pub deadline_ms: u64,
}

/// A registration, as a lease lists the ones tied to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    pub service: Bytes,
    pub instance: Bytes,
}

pub(crate) fn validate_registration(
    instance: &[u8],
    address: &str,
    tags: &[String],
    ttl_ms: u64,
    deregister_after_ms: u64,
) -> Result<(), WireError> {
    validate_instance(instance)?;
    validate_field("address", address.as_bytes())?;
    if tags.len() > SERVICE_TAGS_COUNT_MAX {
        return Err(WireError::too_large(format!("an instance has at most {SERVICE_TAGS_COUNT_MAX} tags")));
    }
    for tag in tags {
        validate_field("tag", tag.as_bytes())?;
    }
    if !(SERVICE_TTL_MS_MIN..=SERVICE_TTL_MS_MAX).contains(&ttl_ms) {
        return Err(WireError::invalid(format!(
            "TTL must be between {SERVICE_TTL_MS_MIN} ms and {SERVICE_TTL_MS_MAX} ms"
        )));
    }
    if deregister_after_ms > SERVICE_DEREGISTER_AFTER_MS_MAX {
        return Err(WireError::invalid(format!("deregister-after is at most {SERVICE_DEREGISTER_AFTER_MS_MAX} ms")));
    }
    Ok(())
}

pub(crate) fn validate_instance(instance: &[u8]) -> Result<(), WireError> {
    if instance.is_empty() {
        return Err(WireError::invalid("instance must not be empty"));
    }
    validate_field("instance", instance)
}

pub(crate) fn validate_field(what: &str, field: &[u8]) -> Result<(), WireError> {
    if field.len() > SERVICE_FIELD_BYTES_MAX {
        return Err(WireError::too_large(format!("{what} is at most {SERVICE_FIELD_BYTES_MAX} bytes")));
    }
    Ok(())
}

fn instance_key(service: &[u8], instance: &[u8]) -> Vec<u8> {
    let mut key = scoped(keys::SERVICE, service);
    key.extend_from_slice(instance);
    key
}

/// Subject of the instance's timer: its key without the prefix.
fn subject(service: &[u8], instance: &[u8]) -> Vec<u8> {
    instance_key(service, instance).split_off(keys::SERVICE.len())
}

fn unknown(service: &[u8], instance: &[u8]) -> WireError {
    WireError::new(
        ErrorCode::NotFound,
        format!(
            "instance {} of service {} is not registered",
            String::from_utf8_lossy(instance),
            String::from_utf8_lossy(service)
        ),
    )
}

fn load_instance(
    store: &impl CoordRead,
    service: &[u8],
    instance: &[u8],
) -> Result<Option<ServiceInstance>, StorageFault> {
    load(store, &instance_key(service, instance))
}

/// Saves `entry` with its timer moved from `old_deadline` (if it had one) to its deadline.
fn save_instance(
    store: &mut impl CoordWrite,
    entry: &ServiceInstance,
    old_deadline: Option<u64>,
) -> Result<(), StorageFault> {
    let subject = subject(&entry.service, &entry.instance);
    if let Some(old) = old_deadline {
        timer::disarm(store, old, TimerKind::Service, &subject)?;
    }
    timer::arm(store, entry.deadline_ms, TimerKind::Service, &subject)?;
    save(store, &instance_key(&entry.service, &entry.instance), entry)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn register(
    store: &mut impl CoordWrite,
    now: u64,
    service: &[u8],
    instance: &[u8],
    address: &str,
    tags: &[String],
    ttl_ms: u64,
    deregister_after_ms: u64,
    lease_id: Option<u64>,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let existing = load_instance(store, service, instance)?;
    if existing.is_none() && count_instances(store, service)? >= SERVICE_INSTANCES_COUNT_MAX {
        return Ok(Err(WireError::too_large(format!("a service has at most {SERVICE_INSTANCES_COUNT_MAX} instances"))));
    }
    let reference = ServiceRef { service: Bytes::from(service.to_vec()), instance: Bytes::from(instance.to_vec()) };
    if let Some(id) = lease_id {
        let mut lease = match super::lease::load_for(store, id, service)? {
            Ok(lease) => lease,
            Err(error) => return Ok(Err(error)),
        };
        if !lease.services.contains(&reference) {
            if attachments(&lease) >= LEASE_ATTACHMENTS_COUNT_MAX {
                return Ok(Err(WireError::too_large(format!("lease {id} holds {LEASE_ATTACHMENTS_COUNT_MAX} things"))));
            }
            lease.services.push(reference.clone());
            save_lease(store, &lease)?;
        }
    }
    if let Some(old) = existing.as_ref().and_then(|existing| existing.lease).filter(|old| Some(*old) != lease_id) {
        forget(store, old, &reference)?;
    }
    let entry = ServiceInstance {
        service: reference.service.clone(),
        instance: reference.instance.clone(),
        address: address.to_owned(),
        tags: tags.to_vec(),
        health: Health::Passing,
        note: String::new(),
        ttl_ms,
        deregister_after_ms,
        lease: lease_id,
        registered_ms: existing.as_ref().map_or(now, |existing| existing.registered_ms),
        deadline_ms: now.saturating_add(ttl_ms),
    };
    save_instance(store, &entry, existing.map(|existing| existing.deadline_ms))?;
    store.emit(CoordEvent::ServiceRegistered { service: reference.service, instance: reference.instance });
    Ok(Ok(CoordResponse::Service { instance: entry }))
}

fn count_instances(store: &impl CoordRead, service: &[u8]) -> Result<usize, StorageFault> {
    let mut count = 0;
    store.coord_scan(&scoped(keys::SERVICE, service), &mut |_, _| {
        count += 1;
        ControlFlow::Continue(())
    })?;
    Ok(count)
}

/// A heartbeat (`health` None) restarts the TTL and makes the instance passing; a health report sets its health and
/// note, and restarts the TTL too (a report is a sign of life).
pub(crate) fn heartbeat(
    store: &mut impl CoordWrite,
    now: u64,
    service: &[u8],
    instance: &[u8],
    health: Option<(Health, &str)>,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let Some(mut entry) = load_instance(store, service, instance)? else {
        return Ok(Err(unknown(service, instance)));
    };
    let old = entry.deadline_ms;
    let (health, note) = health.unwrap_or((Health::Passing, ""));
    let changed = entry.health != health;
    entry.health = health;
    entry.note = note.to_owned();
    entry.deadline_ms = now.saturating_add(entry.ttl_ms);
    save_instance(store, &entry, Some(old))?;
    if changed {
        store.emit(CoordEvent::ServiceHealthChanged {
            service: entry.service.clone(),
            instance: entry.instance.clone(),
            health,
        });
    }
    Ok(Ok(CoordResponse::Service { instance: entry }))
}

pub(crate) fn deregister(
    store: &mut impl CoordWrite,
    service: &[u8],
    instance: &[u8],
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let Some(entry) = load_instance(store, service, instance)? else {
        return Ok(Err(unknown(service, instance)));
    };
    remove(store, &entry, true)?;
    Ok(Ok(CoordResponse::Service { instance: entry }))
}

/// Removes a registration and its timer (and, with `untie`, its place in its lease's list).
pub(crate) fn remove(store: &mut impl CoordWrite, entry: &ServiceInstance, untie: bool) -> Result<(), StorageFault> {
    timer::disarm(store, entry.deadline_ms, TimerKind::Service, &subject(&entry.service, &entry.instance))?;
    store.coord_delete(&instance_key(&entry.service, &entry.instance))?;
    if untie && let Some(lease) = entry.lease {
        forget(store, lease, &ServiceRef { service: entry.service.clone(), instance: entry.instance.clone() })?;
    }
    store.emit(CoordEvent::ServiceDeregistered { service: entry.service.clone(), instance: entry.instance.clone() });
    Ok(())
}

/// The registration `reference` of a lease that ended.
pub(crate) fn remove_by_lease(store: &mut impl CoordWrite, reference: &ServiceRef) -> Result<(), StorageFault> {
    match load_instance(store, &reference.service, &reference.instance)? {
        Some(entry) => remove(store, &entry, false),
        None => Ok(()),
    }
}

fn forget(store: &mut impl CoordWrite, lease_id: u64, reference: &ServiceRef) -> Result<(), StorageFault> {
    let Some(mut lease) = load_lease(store, lease_id)? else { return Ok(()) };
    lease.services.retain(|held| held != reference);
    save_lease(store, &lease)
}

/// An instance's timer fired: a passing or warning instance turns critical (for its deregister-after); a critical one
/// is removed.
pub(crate) fn ttl_lapsed(store: &mut impl CoordWrite, deadline: u64, subject: &[u8]) -> Result<(), StorageFault> {
    let Some((service, instance)) = unscope(subject) else { return Err(StorageFault("bad service timer".into())) };
    let Some(mut entry) = load_instance(store, service, instance)? else { return Ok(()) };
    if entry.deadline_ms != deadline {
        return Ok(());
    }
    if entry.health == Health::Critical {
        return remove(store, &entry, true);
    }
    entry.health = Health::Critical;
    entry.note = format!("TTL of {} ms passed without a heartbeat", entry.ttl_ms);
    entry.deadline_ms = deadline.saturating_add(entry.deregister_after_ms);
    // The fired timer's row is gone already; arm the next one.
    save_instance(store, &entry, None)?;
    store.emit(CoordEvent::ServiceHealthChanged {
        service: entry.service.clone(),
        instance: entry.instance.clone(),
        health: Health::Critical,
    });
    Ok(())
}

/// A service's instances (only the passing ones with `passing_only`), in instance order.
pub(crate) fn discover(
    store: &impl CoordRead,
    service: &[u8],
    passing_only: bool,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let (mut instances, _) =
        super::load_under::<ServiceInstance>(store, &scoped(keys::SERVICE, service), SERVICE_INSTANCES_COUNT_MAX)?;
    if passing_only {
        instances.retain(|entry| entry.health == Health::Passing);
    }
    Ok(Ok(CoordResponse::Services { instances }))
}
