//! Leader elections: one leader per election, held by a lease, with a value it proclaims (an address, an id). A
//! campaign wins when nobody leads; otherwise it is refused (or parked by the node with `wait_ms`) until the leader
//! resigns or its lease ends. Each term of leadership gets a fencing token larger than every earlier one.

use serde::{Deserialize, Serialize};

use super::keys::{self, with};
use super::lease::{Held, LEASE_ATTACHMENTS_COUNT_MAX, attachments, forget, load_for, save_lease};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::limits::VALUE_SIZE_BYTES_MAX;
use crate::state_machine::StorageFault;

/// Largest value a leader may proclaim.
pub const ELECTION_VALUE_BYTES_MAX: usize = 64 * 1024;
const _: () = assert!(ELECTION_VALUE_BYTES_MAX <= VALUE_SIZE_BYTES_MAX);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionLeader {
    pub lease: u64,
    pub token: u64,
    pub value: Bytes,
    /// Log-clock time leadership began.
    pub since_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionInfo {
    pub name: Bytes,
    pub leader: Option<ElectionLeader>,
    pub last_token: u64,
}

pub(crate) fn validate_value(value: &[u8]) -> Result<(), WireError> {
    if value.len() > ELECTION_VALUE_BYTES_MAX {
        return Err(WireError::too_large(format!("a proclaimed value is at most {ELECTION_VALUE_BYTES_MAX} bytes")));
    }
    Ok(())
}

fn election_key(name: &[u8]) -> Vec<u8> {
    with(keys::ELECTION, name)
}

fn load_election(store: &impl CoordRead, name: &[u8]) -> Result<ElectionInfo, StorageFault> {
    Ok(load(store, &election_key(name))?
        .unwrap_or_else(|| ElectionInfo { name: Bytes::from(name.to_vec()), ..ElectionInfo::default() }))
}

pub(crate) fn campaign(
    store: &mut impl CoordWrite,
    now: u64,
    name: &[u8],
    lease_id: u64,
    value: &[u8],
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let mut lease = match load_for(store, lease_id, name)? {
        Ok(lease) => lease,
        Err(error) => return Ok(Err(error)),
    };
    let mut election = load_election(store, name)?;
    match &mut election.leader {
        // Campaigning again as the leader updates the proclaimed value, keeping the term's token.
        Some(leader) if leader.lease == lease_id => {
            leader.value = Bytes::from(value.to_vec());
            let token = leader.token;
            save(store, &election_key(name), &election)?;
            store.emit(CoordEvent::LeaderProclaimed { name: Bytes::from(name.to_vec()), lease: lease_id, token });
            return Ok(Ok(CoordResponse::Election { election }));
        }
        Some(leader) => {
            return Ok(Err(WireError::new(
                ErrorCode::Conflict,
                format!("lease {} leads with token {}", leader.lease, leader.token),
            )));
        }
        None => {}
    }
    if attachments(&lease) >= LEASE_ATTACHMENTS_COUNT_MAX {
        return Ok(Err(WireError::too_large(format!("lease {lease_id} holds {LEASE_ATTACHMENTS_COUNT_MAX} things"))));
    }
    let Some(token) = election.last_token.checked_add(1) else {
        return Ok(Err(WireError::new(ErrorCode::Conflict, "the election has used every token")));
    };
    election.last_token = token;
    election.leader =
        Some(ElectionLeader { lease: lease_id, token, value: Bytes::from(value.to_vec()), since_ms: now });
    save(store, &election_key(name), &election)?;
    lease.elections.push(Bytes::from(name.to_vec()));
    save_lease(store, &lease)?;
    store.emit(CoordEvent::LeaderElected { name: Bytes::from(name.to_vec()), lease: lease_id, token });
    Ok(Ok(CoordResponse::Election { election }))
}

pub(crate) fn resign(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if !resign_by_lease(store, name, lease_id)? {
        return Ok(Err(WireError::new(ErrorCode::Conflict, format!("lease {lease_id} does not lead this election"))));
    }
    forget(store, lease_id, Held::Election, name)?;
    Ok(Ok(CoordResponse::Released))
}

/// Ends `lease_id`'s leadership (the lease's own list is the caller's business); says whether it led.
pub(crate) fn resign_by_lease(store: &mut impl CoordWrite, name: &[u8], lease_id: u64) -> Result<bool, StorageFault> {
    let mut election = load_election(store, name)?;
    let Some(leader) = election.leader.take_if(|leader| leader.lease == lease_id) else { return Ok(false) };
    save(store, &election_key(name), &election)?;
    store.emit(CoordEvent::LeaderResigned { name: Bytes::from(name.to_vec()), lease: lease_id, token: leader.token });
    Ok(true)
}

/// The current leader's token, if someone leads.
pub(crate) fn leader_token(store: &impl CoordRead, name: &[u8]) -> Result<Option<u64>, StorageFault> {
    Ok(load_election(store, name)?.leader.map(|leader| leader.token))
}

pub(crate) fn get(store: &impl CoordRead, name: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    Ok(Ok(CoordResponse::Election { election: load_election(store, name)? }))
}
