//! Admission of client connections that have not authenticated yet. Such a connection costs the node a slot and a
//! task while proving nothing, so these connections have limits of their own, apart from the node's connection limit:
//! at most [`RPC_UNVERIFIED_CONNECTIONS_MAX`] at once, and once [`RPC_UNVERIFIED_CONNECTIONS_PRESSURE`] are open, at
//! most [`RPC_UNVERIFIED_CONNECTIONS_PER_SOURCE_MAX`] from one source (an IPv4 address, an IPv6 /64, or for a relayed
//! connection the client's key). Below that pressure one host may open many connections at once (an application
//! starting its workers) without any being closed before it authenticates.
//!
//! A limit is kept by closing the *oldest* unauthenticated connection of the source (or of the node), never by
//! refusing the newest: an honest client authenticates within one round trip of connecting, so it is never the oldest
//! for long, while a flood that wants to hold the slots must keep replacing all of them faster than a client's round
//! trip. A connection leaves the registry the moment its first token verifies ([`UnverifiedSlot`] dropped) or it
//! ends; only then may it hold a slot for as long as it lives.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{
    RPC_UNVERIFIED_CONNECTIONS_MAX, RPC_UNVERIFIED_CONNECTIONS_PER_SOURCE_MAX, RPC_UNVERIFIED_CONNECTIONS_PRESSURE,
};

/// Where a connection comes from, as far as the limits care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// An IPv4 address, or the /64 network of an IPv6 address (one host owns a whole /64).
    Ip(IpAddr),
    /// A connection over a relay: the client's key is all that tells it apart.
    Key([u8; 32]),
    /// A simulated client.
    Simulated(u64),
}

impl Source {
    /// The source of a connection from `ip` (IPv4-mapped IPv6 addresses count as their IPv4 address).
    pub(crate) fn ip(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                Source::Ip(IpAddr::V6(network.into()))
            }
        }
    }
}

/// The unauthenticated connections of one gateway, oldest first.
#[derive(Default)]
pub(crate) struct Unverified {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// By admission order: the first entry is the oldest.
    by_age: BTreeMap<u64, Entry>,
    per_source: HashMap<Source, usize>,
    evicted_total: u64,
}

struct Entry {
    source: Source,
    evict: CancellationToken,
}

/// A connection's place among the unauthenticated ones; dropping it (on authentication or when the connection ends)
/// gives the place back.
pub(crate) struct UnverifiedSlot {
    registry: Arc<Unverified>,
    id: u64,
}

impl Drop for UnverifiedSlot {
    fn drop(&mut self) {
        self.registry.lock().remove(self.id);
    }
}

impl Unverified {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a new connection from `source`, closing the oldest unauthenticated connection of the same source (under
    /// pressure), and then of the node, where a limit is reached. The token is cancelled if this connection is itself
    /// closed to make room later.
    pub(crate) fn admit(self: &Arc<Self>, source: Source) -> (UnverifiedSlot, CancellationToken) {
        let mut inner = self.lock();
        if inner.by_age.len() >= RPC_UNVERIFIED_CONNECTIONS_PRESSURE
            && inner.per_source.get(&source).copied().unwrap_or(0) >= RPC_UNVERIFIED_CONNECTIONS_PER_SOURCE_MAX
        {
            let oldest = inner.by_age.iter().find(|(_, entry)| entry.source == source).map(|(id, _)| *id);
            inner.evict(oldest);
        }
        if inner.by_age.len() >= RPC_UNVERIFIED_CONNECTIONS_MAX {
            let oldest = inner.by_age.keys().next().copied();
            inner.evict(oldest);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let evict = CancellationToken::new();
        inner.by_age.insert(id, Entry { source, evict: evict.clone() });
        *inner.per_source.entry(source).or_default() += 1;
        (UnverifiedSlot { registry: self.clone(), id }, evict)
    }

    /// Closes the oldest unauthenticated connection, if any, to make room for another connection.
    pub(crate) fn evict_oldest(&self) -> bool {
        let mut inner = self.lock();
        let oldest = inner.by_age.keys().next().copied();
        inner.evict(oldest)
    }

    /// Unauthenticated connections now, and how many were closed to make room so far.
    pub(crate) fn counts(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.by_age.len(), inner.evicted_total)
    }
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.by_age.remove(&id)?;
        if let Some(count) = self.per_source.get_mut(&entry.source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    fn evict(&mut self, id: Option<u64>) -> bool {
        let Some(entry) = id.and_then(|id| self.remove(id)) else { return false };
        self.evicted_total += 1;
        entry.evict.cancel();
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn one_host_may_open_many_connections_at_once_while_the_node_is_calm() {
        let registry = Arc::new(Unverified::default());
        let host = Source::ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let slots: Vec<_> = (0..RPC_UNVERIFIED_CONNECTIONS_PRESSURE).map(|_| registry.admit(host)).collect();
        assert!(slots.iter().all(|(_, evicted)| !evicted.is_cancelled()));
        assert_eq!(registry.counts(), (RPC_UNVERIFIED_CONNECTIONS_PRESSURE, 0));
    }

    #[test]
    fn under_pressure_a_source_at_its_limit_loses_its_oldest_connection_and_others_keep_theirs() {
        let registry = Arc::new(Unverified::default());
        let flood = Source::ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let honest = Source::ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        let (_honest_slot, honest_evicted) = registry.admit(honest);
        // With the honest one, these make exactly the pressure: nobody is closed yet.
        let mut flood_slots: Vec<_> = (1..RPC_UNVERIFIED_CONNECTIONS_PRESSURE).map(|_| registry.admit(flood)).collect();
        assert!(flood_slots.iter().all(|(_, evicted)| !evicted.is_cancelled()), "no pressure yet");
        flood_slots.push(registry.admit(flood));
        assert!(flood_slots[0].1.is_cancelled(), "the flood's oldest connection makes room");
        assert!(flood_slots[1..].iter().all(|(_, evicted)| !evicted.is_cancelled()));
        assert!(!honest_evicted.is_cancelled(), "another source's connection is not touched");
        // A newcomer from another source is admitted without closing anyone.
        let (_newcomer, newcomer_evicted) = registry.admit(Source::ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))));
        assert!(!newcomer_evicted.is_cancelled() && !honest_evicted.is_cancelled());
        assert_eq!(registry.counts(), (RPC_UNVERIFIED_CONNECTIONS_PRESSURE + 1, 1));
    }

    #[test]
    fn the_node_limit_closes_the_oldest_and_an_authenticated_connection_leaves_the_registry() {
        let registry = Arc::new(Unverified::default());
        let mut slots = Vec::new();
        for index in 0..RPC_UNVERIFIED_CONNECTIONS_MAX {
            slots.push(registry.admit(Source::Simulated(index as u64)));
        }
        // The first authenticates: it leaves, and the limit now has room without closing anyone.
        let (first, first_evicted) = slots.remove(0);
        drop(first);
        let newcomer = registry.admit(Source::Simulated(10_000));
        assert!(!first_evicted.is_cancelled() && slots.iter().all(|(_, evicted)| !evicted.is_cancelled()));
        // At the limit again: the next newcomer closes the oldest still unauthenticated.
        let _next = registry.admit(Source::Simulated(10_001));
        assert!(slots[0].1.is_cancelled());
        assert!(!newcomer.1.is_cancelled());
        assert_eq!(registry.counts(), (RPC_UNVERIFIED_CONNECTIONS_MAX, 1));
        assert!(registry.evict_oldest());
        assert!(slots[1].1.is_cancelled());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_a_mapped_ipv4_address_as_itself() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::ip(a.into()), Source::ip(b.into()));
        assert_ne!(Source::ip(a.into()), Source::ip(other.into()));
        let mapped = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped();
        assert_eq!(Source::ip(mapped.into()), Source::ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))));
    }
}
