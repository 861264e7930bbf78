//! Observations: the state of one coordination resource now, then each time it changes, on the request's own stream
//! (like a watch, which does the same for KV keys). `pando election observe` is one: instead of asking again after
//! every change, the observer opens one stream and the node sends the election's state whenever a committed entry
//! changes it. A node that has nothing new to say repeats the state every [`OBSERVE_HEARTBEAT_MS`], so the observer
//! can tell a quiet election from a member it no longer hears.
//!
//! States of one election are ordered by [`election_order`]: a fencing token only grows, and a leader resigns after
//! it is elected. An observer that moves to a member that lags behind the last one may be shown an older state
//! again; it skips every state not after the last it delivered.

use serde::{Deserialize, Serialize};

use crate::coord::{CoordEvent, CoordRequest, ElectionInfo};
use crate::error::WireError;
use crate::kv::Bytes;
#[cfg(doc)]
use crate::limits::OBSERVE_HEARTBEAT_MS;

/// What to observe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObserveRequest {
    /// One election: its leader (or that it has none) and its last fencing token.
    Election { name: Bytes },
}

impl ObserveRequest {
    /// The coordination read that answers the current state (and carries the name's checks and access).
    pub fn as_read(&self) -> CoordRequest {
        match self {
            ObserveRequest::Election { name } => CoordRequest::ElectionGet { name: name.clone() },
        }
    }

    pub fn validate(&self) -> Result<(), WireError> {
        self.as_read().validate()
    }

    /// Whether `event` may have changed what is observed (then the node reads it again).
    pub fn concerns(&self, event: &CoordEvent) -> bool {
        match (self, event) {
            (
                ObserveRequest::Election { name },
                CoordEvent::LeaderElected { name: changed, .. }
                | CoordEvent::LeaderResigned { name: changed, .. }
                | CoordEvent::LeaderProclaimed { name: changed, .. },
            ) => name == changed,
            _ => false,
        }
    }
}

/// The frames an observation answers with on its stream, after its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObserveResponse {
    /// The election's state: first as it is when the observation opens, then after each change (and as a
    /// heartbeat, unchanged, when nothing happened for [`OBSERVE_HEARTBEAT_MS`]).
    Election { election: ElectionInfo },
    /// The observation ended (`NO_LEADER`, `SLOW_CONSUMER`, `UNAVAILABLE`): open it again on another member.
    Canceled { error: WireError },
}

/// Where an election's state stands in its history: later states compare greater. The fencing token only grows,
/// and at one token the leader is elected before it resigns (or its lease ends).
pub fn election_order(election: &ElectionInfo) -> (u64, bool) {
    (election.last_token, election.leader.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::election::ElectionLeader;
    use crate::error::ErrorCode;
    use crate::kv::bytes;

    fn state(last_token: u64, leading: bool) -> ElectionInfo {
        let leader = leading.then(|| ElectionLeader { lease: 1, token: last_token, value: bytes("v"), since_ms: 0 });
        ElectionInfo { name: bytes("e"), leader, last_token }
    }

    #[test]
    fn an_election_state_orders_after_its_election_and_before_the_next_token() {
        assert!(election_order(&state(0, false)) < election_order(&state(1, true)));
        assert!(
            election_order(&state(1, true)) < election_order(&state(1, false)),
            "a resignation follows its election"
        );
        assert!(election_order(&state(1, false)) < election_order(&state(2, true)));
    }

    #[test]
    fn an_election_observation_is_concerned_with_its_own_leaders_only() {
        let observe = ObserveRequest::Election { name: bytes("e") };
        let proclaimed = CoordEvent::LeaderProclaimed { name: bytes("e"), lease: 1, token: 1 };
        assert!(observe.concerns(&proclaimed));
        assert!(observe.concerns(&CoordEvent::LeaderResigned { name: bytes("e"), lease: 1, token: 1 }));
        assert!(!observe.concerns(&CoordEvent::LeaderElected { name: bytes("other"), lease: 1, token: 1 }));
        assert!(!observe.concerns(&CoordEvent::LockReleased { name: bytes("e"), lease: 1, token: 1 }));
    }

    #[test]
    fn an_observation_checks_its_name_like_a_read_of_the_election() {
        let empty = ObserveRequest::Election { name: bytes("") };
        assert_eq!(empty.validate().unwrap_err().code, ErrorCode::InvalidArgument);
        assert!(ObserveRequest::Election { name: bytes("leader") }.validate().is_ok());
    }
}
