//! `pando cluster ...` and `pando version`: the requests, and their human output as pure functions of
//! the answers (so a test renders each with every optional field present and absent).

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use pando_client::pando_protocol::cluster::{
    ClusterRequest, ClusterResponse, ClusterStatus, MemberNode, MeshReport, NodeVersion,
};
use pando_client::{Client, ClientOptions};
use serde_json::json;

use crate::output::print_json;
use crate::token;

/// A voter further behind than this makes `pando cluster health` fail.
const HEALTH_LAG_COUNT_MAX: u64 = 1_000;
/// How long `pando version` waits for the node (it prints its own version either way).
const VERSION_TIMEOUT_MS: u64 = 3_000;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, term, log and applied indexes, each member's match index and lag.
    Status,
    /// Exit 0 when a leader is known and every voter is within 1,000 entries of it, else 1.
    Health,
    /// Prometheus text metrics of the node.
    Metrics,
    /// Add a node as a learner (it replicates but does not vote).
    AddLearner {
        node_id: u64,
        /// The node's public key in hex (its iroh id).
        #[arg(long)]
        public_key: String,
        /// Address the node listens on (repeatable).
        #[arg(long = "addr", required = true)]
        addrs: Vec<std::net::SocketAddr>,
    },
    /// Make a caught-up learner a voter.
    Promote { node_id: u64 },
    /// Remove a node from the cluster.
    Remove { node_id: u64 },
    /// Make an actor of the node panic (only on nodes started with --enable-fault-injection).
    InjectPanic {
        /// `raft` or `mesh`.
        #[arg(long, default_value = "raft")]
        actor: String,
    },
    /// The node's actor mesh: its sessions to other members, and a ping from it to every node agent in the
    /// cluster-wide process group.
    Mesh,
    /// Join tokens: `join-token create [--ttl 1h] [--uses 1] [--as learner|voter]` prints a join ticket.
    #[command(subcommand)]
    JoinToken(JoinTokenCommand),
    /// Replace the member secret (the root of the plugins' signing keys) with a fresh one: every member signs with
    /// the new keys once it applied the change; a removed member's copy of the old secret signs nothing current.
    RotateSecret,
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Mint a join token and print the join ticket for `pando-node --join`.
    Create(token::JoinTokenArgs),
}

pub async fn cluster(client: &Client, command: ClusterCommand, json_output: bool) -> anyhow::Result<()> {
    match command {
        ClusterCommand::JoinToken(JoinTokenCommand::Create(args)) => token::join_token(client, args, json_output).await,
        ClusterCommand::RotateSecret => {
            let rotated = client.rotate_member_secret().await?;
            if json_output {
                print_json(&json!({ "epoch": rotated.epoch, "rotated_ms": rotated.rotated_ms }));
            } else {
                println!("OK member secret rotated: epoch {}", rotated.epoch);
            }
            Ok(())
        }
        ClusterCommand::Mesh => {
            let ClusterResponse::Mesh(report) = client.cluster(ClusterRequest::Mesh).await? else {
                bail!("unexpected response to a mesh request");
            };
            if json_output {
                print_json(&serde_json::to_value(&report)?);
            } else {
                print!("{}", render_mesh(&report));
            }
            Ok(())
        }
        ClusterCommand::InjectPanic { actor } => {
            let ClusterResponse::Injected = client.cluster(ClusterRequest::InjectPanic { actor }).await? else {
                bail!("unexpected response to a panic injection");
            };
            println!("OK panic injected");
            Ok(())
        }
        ClusterCommand::Health => {
            let status = client.cluster_status().await?;
            let (healthy, lagging) = health(&status);
            if json_output {
                print_json(&json!({ "healthy": healthy, "leader_id": status.leader_id, "lagging": lagging }));
            } else {
                println!("{}", render_health(&status));
            }
            if !healthy {
                bail!("cluster is unhealthy");
            }
            Ok(())
        }
        ClusterCommand::Metrics => {
            let ClusterResponse::Metrics { text } = client.cluster(ClusterRequest::Metrics).await? else {
                bail!("unexpected response to a metrics request");
            };
            if json_output {
                print_json(&json!({ "text": text }));
            } else {
                print!("{text}");
            }
            Ok(())
        }
        ClusterCommand::AddLearner { node_id, public_key, addrs } => {
            let public_key = data_encoding::HEXLOWER
                .decode(public_key.to_lowercase().as_bytes())
                .map_err(|_| anyhow::anyhow!("--public-key takes 64 hex characters"))?;
            let request =
                ClusterRequest::AddLearner { node_id, node: MemberNode { public_key: public_key.into(), addrs } };
            membership_change(client, request, json_output).await
        }
        ClusterCommand::Promote { node_id } => {
            membership_change(client, ClusterRequest::Promote { node_id }, json_output).await
        }
        ClusterCommand::Remove { node_id } => {
            membership_change(client, ClusterRequest::Remove { node_id }, json_output).await
        }
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            if json_output {
                print_json(&serde_json::to_value(&status)?);
            } else {
                print!("{}", render_status(&status));
            }
            Ok(())
        }
    }
}

async fn membership_change(client: &Client, request: ClusterRequest, json_output: bool) -> anyhow::Result<()> {
    let ClusterResponse::MembershipChanged { log_index } = client.cluster(request).await? else {
        bail!("unexpected response to a membership change");
    };
    if json_output {
        print_json(&json!({ "log_index": log_index }));
    } else {
        println!("OK membership changed at log index {log_index}");
    }
    Ok(())
}

/// `pando version`: this client's version, then the node's when a ticket is at hand and the node answers.
pub async fn version(
    ticket: Option<&str>,
    timeout: Duration,
    json_output: bool,
    client_line: &str,
) -> anyhow::Result<()> {
    let node = match ticket {
        None => Err("no ticket, so no node asked".to_string()),
        Some(ticket) => {
            let timeout = timeout.min(Duration::from_millis(VERSION_TIMEOUT_MS));
            let options = ClientOptions::new(timeout).with_connect_timeout(timeout);
            match Client::new(ticket, options).await {
                Err(error) => Err(error.to_string()),
                Ok(client) => {
                    let answer = client.cluster(ClusterRequest::Version).await;
                    client.close().await;
                    match answer {
                        Ok(ClusterResponse::Version(version)) => Ok(version),
                        Ok(_) => Err("the node answered something else".to_string()),
                        Err(error) => Err(error.to_string()),
                    }
                }
            }
        }
    };
    if json_output {
        let (node, error) = match &node {
            Ok(version) => (serde_json::to_value(version)?, serde_json::Value::Null),
            Err(error) => (serde_json::Value::Null, json!(error)),
        };
        print_json(&json!({
            "client": { "version": env!("CARGO_PKG_VERSION"), "protocol": pando_client::pando_protocol::PROTOCOL_VERSION },
            "node": node,
            "node_error": error,
        }));
    } else {
        print!("{}", render_version(client_line, &node));
    }
    Ok(())
}

/// Whether the cluster is healthy, and the voters lagging too far behind.
fn health(status: &ClusterStatus) -> (bool, Vec<u64>) {
    let lagging: Vec<u64> = status
        .members
        .iter()
        .filter(|member| member.voter && member.lag.is_some_and(|lag| lag > HEALTH_LAG_COUNT_MAX))
        .map(|member| member.node_id)
        .collect();
    (status.leader_id.is_some() && lagging.is_empty(), lagging)
}

/// A list of ids as people write them: `1, 2 and 3`, or `none`.
fn ids(ids: &[u64]) -> String {
    match ids {
        [] => "none".to_string(),
        [only] => only.to_string(),
        [init @ .., last] => {
            format!("{} and {last}", init.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        }
    }
}

fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

fn render_health(status: &ClusterStatus) -> String {
    let (healthy, lagging) = health(status);
    let leader = status.leader_id.map_or_else(|| "no leader".to_string(), |leader| format!("leader {leader}"));
    let lagging = if lagging.is_empty() {
        String::new()
    } else {
        format!(", lagging more than {HEALTH_LAG_COUNT_MAX} entries: {}", ids(&lagging))
    };
    format!("{}: {leader}, {} members{lagging}", if healthy { "healthy" } else { "unhealthy" }, status.members.len())
}

fn render_status(status: &ClusterStatus) -> String {
    let leader = status.leader_id.map_or_else(|| "no leader known".to_string(), |leader| format!("leader {leader}"));
    let mut out = format!("cluster {}\n", status.cluster_id);
    out += &format!("node {} ({}), {leader}, term {}\n", status.node_id, status.role.to_lowercase(), status.term);
    out += &format!(
        "last log index {}, last applied {}, revision {}\n",
        optional(status.last_log_index),
        optional(status.last_applied_index),
        status.revision
    );
    for member in &status.members {
        let kind = if member.voter { "voter" } else { "learner" };
        let replication = match (member.matched_index, member.lag) {
            (Some(matched), Some(lag)) => format!(" matched {matched} lag {lag}"),
            _ => String::new(),
        };
        let addrs: Vec<String> = member.addrs.iter().map(ToString::to_string).collect();
        let addrs = if addrs.is_empty() { "no address".to_string() } else { addrs.join(", ") };
        out += &format!("  member {} {kind} at {addrs} key {}{replication}\n", member.node_id, member.public_key);
    }
    out
}

fn render_mesh(report: &MeshReport) -> String {
    let mut out = format!("node {}: {} actor sessions\n", report.node_id, report.sessions.len());
    for session in &report.sessions {
        let peer = session.node_id.map_or_else(|| "?".to_string(), |id| id.to_string());
        let direction = if session.incoming { "in " } else { "out" };
        out += &format!("  node {peer:<4} {direction} {}\n", session.peer_name.as_deref().unwrap_or("(handshake)"));
    }
    if !report.unconnected.is_empty() {
        out += &format!("  not connected: {}\n", ids(&report.unconnected));
    }
    out += &format!("group {}: {} agents\n", report.group, report.pings.len());
    for ping in &report.pings {
        let node = ping.node_id.map_or_else(|| "?".to_string(), |id| id.to_string());
        let place = if ping.local { "local " } else { "remote" };
        out += &match (ping.round_trip_us, &ping.error) {
            (Some(us), None) => format!("  node {node:<4} {place} {:.3} ms\n", us as f64 / 1000.0),
            (_, error) => format!("  node {node:<4} {place} error: {}\n", error.as_deref().unwrap_or("no answer")),
        };
    }
    out
}

fn render_version(client_line: &str, node: &Result<NodeVersion, String>) -> String {
    let node = match node {
        Ok(node) => format!("node {}: pando-node {} (protocol {})", node.node_id, node.version, node.protocol),
        Err(error) => format!("node: unknown ({error})"),
    };
    format!("pando {client_line}\n{node}\n")
}

#[cfg(test)]
mod tests {
    use pando_client::human::debug_artifacts;
    use pando_client::pando_protocol::cluster::{MemberStatus, MeshPing, MeshSession};

    use super::*;

    fn status(known: bool) -> ClusterStatus {
        let member = |node_id, voter, lag: Option<u64>| MemberStatus {
            node_id,
            public_key: "ab".repeat(32),
            addrs: if known { vec!["127.0.0.1:7001".parse().unwrap(), "[::1]:7001".parse().unwrap()] } else { vec![] },
            voter,
            matched_index: lag.map(|lag| 10_u64.saturating_sub(lag)),
            lag,
        };
        ClusterStatus {
            cluster_id: "cd".repeat(16),
            node_id: 1,
            role: "Leader".into(),
            leader_id: known.then_some(1),
            term: 3,
            last_log_index: known.then_some(10),
            last_applied_index: known.then_some(10),
            revision: 7,
            snapshot_index: None,
            purged_index: None,
            members: vec![member(1, true, known.then_some(0)), member(2, false, known.then_some(5_000))],
            applied_digest: String::new(),
            applied_digest_index: None,
            process_cpu_ms: None,
        }
    }

    fn assert_human(text: &str) {
        let artifacts = debug_artifacts(text);
        assert!(artifacts.is_empty(), "debug formatting in human output: {artifacts:?}\n{text}");
    }

    #[test]
    fn cluster_status_and_health_read_as_text_with_and_without_a_leader() {
        for known in [true, false] {
            let status = status(known);
            let rendered = render_status(&status);
            assert_human(&rendered);
            assert_human(&render_health(&status));
            assert!(rendered.contains(if known { "leader 1" } else { "no leader known" }), "{rendered}");
        }
        let mut lagging = status(true);
        lagging.members[1].voter = true;
        let health = render_health(&lagging);
        assert!(health.starts_with("unhealthy") && health.contains("lagging more than 1000 entries: 2"), "{health}");
    }

    #[test]
    fn mesh_and_version_read_as_text() {
        let report = MeshReport {
            node_id: 1,
            sessions: vec![
                MeshSession { node_id: Some(2), peer_name: Some("node-2".into()), incoming: true },
                MeshSession { node_id: None, peer_name: None, incoming: false },
            ],
            unconnected: vec![3, 4],
            group: "pando.nodes".into(),
            pings: vec![
                MeshPing { node_id: Some(2), local: false, round_trip_us: Some(1_250), error: None },
                MeshPing { node_id: None, local: false, round_trip_us: None, error: None },
            ],
        };
        let mesh = render_mesh(&report);
        assert_human(&mesh);
        assert!(mesh.contains("not connected: 3 and 4"), "{mesh}");
        let node = NodeVersion { node_id: 1, version: "0.1.0".into(), protocol: 1 };
        assert_human(&render_version("0.1.0 (protocol 1)", &Ok(node)));
        assert_human(&render_version("0.1.0 (protocol 1)", &Err("no ticket, so no node asked".into())));
    }

    #[test]
    fn id_lists_read_as_prose() {
        assert_eq!(ids(&[]), "none");
        assert_eq!(ids(&[4]), "4");
        assert_eq!(ids(&[1, 2, 3]), "1, 2 and 3");
    }
}
