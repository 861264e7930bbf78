//! Tickets: everything a client needs to reach a cluster, as one copyable string.
//!
//! A ticket lists nodes (id, public key, addresses), the cluster id and, for clients, a capability token (a ticket
//! without one only says where the cluster is). Text form:
//! `pando1` followed by unpadded base64url of the MessagePack encoding.

use serde::{Deserialize, Serialize};

use crate::cluster::MemberNode;
use crate::kv::Bytes;
use crate::limits::{TICKET_NODES_COUNT_MAX, TICKET_TEXT_BYTES_MAX};
use crate::token::CapabilityToken;

const TICKET_PREFIX: &str = "pando1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketNode {
    pub node_id: u64,
    pub node: MemberNode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub cluster_id: Bytes,
    pub nodes: Vec<TicketNode>,
    pub token: Option<CapabilityToken>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("ticket must start with `{TICKET_PREFIX}`")]
    Prefix,
    #[error("ticket is longer than {TICKET_TEXT_BYTES_MAX} characters")]
    TooLong,
    #[error("ticket is not valid base64url: {0}")]
    Encoding(String),
    #[error("ticket contents cannot be decoded: {0}")]
    Contents(String),
    #[error("ticket lists no nodes")]
    NoNodes,
    #[error("ticket lists more than {TICKET_NODES_COUNT_MAX} nodes")]
    TooManyNodes,
}

impl Ticket {
    pub fn encode(&self) -> String {
        // Plain data: encoding cannot fail.
        let bytes = rmp_serde::to_vec_named(self).expect("tickets always encode");
        format!("{TICKET_PREFIX}{}", data_encoding::BASE64URL_NOPAD.encode(&bytes))
    }

    pub fn decode(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        if text.len() > TICKET_TEXT_BYTES_MAX {
            return Err(TicketError::TooLong);
        }
        let body = text.strip_prefix(TICKET_PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|error| TicketError::Encoding(error.to_string()))?;
        let ticket: Ticket = rmp_serde::from_slice(&bytes).map_err(|error| TicketError::Contents(error.to_string()))?;
        if ticket.nodes.is_empty() {
            return Err(TicketError::NoNodes);
        }
        if ticket.nodes.len() > TICKET_NODES_COUNT_MAX {
            return Err(TicketError::TooManyNodes);
        }
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let ticket = Ticket {
            cluster_id: Bytes::from(vec![1; 16]),
            nodes: vec![TicketNode {
                node_id: 1,
                node: MemberNode {
                    public_key: Bytes::from(vec![3; 32]),
                    addrs: vec!["127.0.0.1:7001".parse().unwrap()],
                },
            }],
            token: None,
        };
        let text = ticket.encode();
        assert!(text.starts_with("pando1"));
        assert_eq!(Ticket::decode(&format!("  {text}\n")), Ok(ticket));
        assert_eq!(Ticket::decode("nope"), Err(TicketError::Prefix));
        assert!(matches!(Ticket::decode("pando1!!"), Err(TicketError::Encoding(_))));
        assert!(matches!(Ticket::decode("pando1AAAA"), Err(TicketError::Contents(_))));
    }

    #[test]
    fn a_ticket_with_the_most_members_and_a_token_encodes_and_decodes() {
        use crate::limits::{CLUSTER_MEMBERS_MAX, MEMBER_ADDRS_COUNT_MAX};
        let nodes = (1..=CLUSTER_MEMBERS_MAX as u64)
            .map(|node_id| TicketNode {
                node_id: u64::MAX - node_id,
                node: MemberNode {
                    public_key: Bytes::from(vec![0xff; 32]),
                    addrs: (0..MEMBER_ADDRS_COUNT_MAX)
                        .map(|port| {
                            format!("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:{}", 65_000 + port).parse().unwrap()
                        })
                        .collect(),
                },
            })
            .collect();
        let ticket = Ticket {
            cluster_id: Bytes::from(vec![1; 16]),
            nodes,
            token: Some(crate::token::CapabilityToken::from_random([0xff; 48])),
        };
        let text = ticket.encode();
        assert!(text.len() <= TICKET_TEXT_BYTES_MAX, "{} characters", text.len());
        assert_eq!(Ticket::decode(&text), Ok(ticket));
    }
}
