//! Hook deliveries to actors: a durable hook whose target is a process group (`HookTarget::Group`) is delivered to one
//! member of the ractor process group `pando.hooks.<group>`, as the delivering node's mesh scope sees it: an actor on
//! that node or, through the actor mesh, on any other member. The member gets a call with the event's JSON and
//! answers a [`GroupAnswer`] (MessagePack): ack, nack with an error, or term. Members take turns by sequence, so a
//! group of several actors shares the work; a group with no member fails the attempt (the retry curve applies).
//!
//! An application that embeds Pando joins an actor taking [`HookSubscriberMsg`] with [`join`]; the payloads are bytes
//! decoded by the receiver, so a malformed message from a peer is an error answer, never a panic in a session.

use std::time::Duration;

use pando_protocol::hook::durable::Delivery;
use ractor::{ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use super::exec::Outcome;

/// What a hook subscriber actor takes.
#[derive(RactorClusterMessage)]
pub enum HookSubscriberMsg {
    /// One delivery: the event as JSON; answer a MessagePack [`GroupAnswer`].
    #[rpc]
    Deliver(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// How a subscriber answers a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupAnswer {
    Ack,
    Nack(String),
    /// The event can never succeed: it goes to the dead-letter list at once.
    Term(String),
}

impl GroupAnswer {
    /// The bytes a subscriber replies with.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }
}

/// The process group of hook group `group`.
pub fn group_name(group: &str) -> String {
    format!("pando.hooks.{group}")
}

/// Joins `actor` to hook group `group` in mesh scope `scope` (`MeshHandle::scope`).
pub fn join(scope: &str, group: &str, actor: &ActorRef<HookSubscriberMsg>) {
    ractor::pg::join_scoped(scope.to_string(), group_name(group), vec![actor.get_cell()]);
}

/// Delivers to one member of `group` within `limit`.
pub async fn deliver(scope: &str, group: &str, delivery: &Delivery, limit: Duration) -> Outcome {
    let mut members = ractor::pg::get_scoped_members(&scope.to_string(), &group_name(group));
    if members.is_empty() {
        return Outcome::Nack(format!("process group {} has no member", group_name(group)));
    }
    // A fixed order (process groups keep hash order), then turns by sequence.
    members.sort_by_key(|cell| cell.get_id());
    let cell = members.swap_remove((delivery.event.seq % members.len() as u64) as usize);
    let who = cell.get_id();
    let subscriber = ActorRef::<HookSubscriberMsg>::from(cell);
    let input = pando_protocol::hook::json::to_json_line(&delivery.event);
    match subscriber.call(|reply| HookSubscriberMsg::Deliver(input, reply), Some(limit)).await {
        Ok(ractor::rpc::CallResult::Success(bytes)) => match rmp_serde::from_slice::<GroupAnswer>(&bytes) {
            Ok(GroupAnswer::Ack) => Outcome::Ack,
            Ok(GroupAnswer::Nack(error)) => Outcome::Nack(error),
            Ok(GroupAnswer::Term(error)) => Outcome::Term(error),
            Err(error) => Outcome::Nack(format!("actor {who} answered something that is not a hook answer: {error}")),
        },
        Ok(ractor::rpc::CallResult::Timeout) => Outcome::Nack(format!("actor {who} did not answer in time")),
        _ => Outcome::Nack(format!("cannot reach actor {who}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use ractor::{Actor, ActorProcessingErr};

    use super::*;
    use crate::mesh::test_support::{connected_pair, remote_members};

    /// Acks every event but `deploy.bad` (terminated), and counts what it was given.
    struct Subscriber;

    impl Actor for Subscriber {
        type Msg = HookSubscriberMsg;
        type State = Arc<AtomicU64>;
        type Arguments = Arc<AtomicU64>;

        async fn pre_start(
            &self,
            _: ActorRef<HookSubscriberMsg>,
            count: Arc<AtomicU64>,
        ) -> Result<Arc<AtomicU64>, ActorProcessingErr> {
            Ok(count)
        }

        async fn handle(
            &self,
            _: ActorRef<HookSubscriberMsg>,
            message: HookSubscriberMsg,
            count: &mut Arc<AtomicU64>,
        ) -> Result<(), ActorProcessingErr> {
            let HookSubscriberMsg::Deliver(input, reply) = message;
            count.fetch_add(1, Ordering::SeqCst);
            let event: serde_json::Value = serde_json::from_slice(&input)?;
            let answer =
                if event["subject"] == "deploy.bad" { GroupAnswer::Term("bad".into()) } else { GroupAnswer::Ack };
            let _ = reply.send(answer.encode());
            Ok(())
        }
    }

    fn delivery(subject: &str, seq: u64) -> Delivery {
        Delivery {
            hook: "h".into(),
            attempt: 1,
            fence: 1,
            ack_by_ms: 0,
            event: pando_protocol::hook::HookEvent {
                seq,
                subject: subject.into(),
                time_ms: 0,
                revision: 0,
                body: pando_protocol::hook::EventBody::User { data: Vec::new().into() },
            },
        }
    }

    async fn subscriber() -> (ActorRef<HookSubscriberMsg>, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        let (actor, _) = Actor::spawn(None, Subscriber, count.clone()).await.unwrap();
        (actor, count)
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "{what} never happened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_group_member_answers_and_an_empty_group_fails_the_attempt() {
        let scope = "pando.test.hooks";
        let limit = Duration::from_secs(1);
        let outcome = deliver(scope, "audit", &delivery("deploy.ok", 7), limit).await;
        assert!(matches!(outcome, Outcome::Nack(error) if error.contains("no member")));
        let (actor, count) = subscriber().await;
        join(scope, "audit", &actor);
        assert_eq!(deliver(scope, "audit", &delivery("deploy.ok", 7), limit).await, Outcome::Ack);
        assert_eq!(deliver(scope, "audit", &delivery("deploy.bad", 8), limit).await, Outcome::Term("bad".into()));
        assert_eq!(count.load(Ordering::SeqCst), 2);
        actor.stop(None);
    }

    #[tokio::test]
    async fn a_member_on_another_node_answers_through_the_mesh_and_takes_turns_with_a_local_one() {
        let (scope_1, scope_2) = ("pando.test.hooks.cross.1", "pando.test.hooks.cross.2");
        let limit = Duration::from_secs(5);
        let [server_1, server_2] = connected_pair((scope_1, scope_2)).await;
        let (remote, remote_count) = subscriber().await;
        join(scope_2, "audit", &remote);
        until("the remote join", || remote_members(scope_1, &group_name("audit")) == 1).await;

        // Only the remote member: each delivery crosses the session, and its answer comes back.
        assert_eq!(deliver(scope_1, "audit", &delivery("deploy.ok", 7), limit).await, Outcome::Ack);
        assert_eq!(deliver(scope_1, "audit", &delivery("deploy.bad", 8), limit).await, Outcome::Term("bad".into()));
        assert_eq!(remote_count.load(Ordering::SeqCst), 2);

        // A member on the delivering node joins: the two take turns by sequence.
        let (local, local_count) = subscriber().await;
        join(scope_1, "audit", &local);
        for seq in 10..20 {
            assert_eq!(deliver(scope_1, "audit", &delivery("deploy.ok", seq), limit).await, Outcome::Ack);
        }
        assert_eq!((local_count.load(Ordering::SeqCst), remote_count.load(Ordering::SeqCst)), (5, 7));

        // The remote node goes: its member leaves node 1's view, and the local member takes every event.
        server_2.stop(None);
        until("the remote member's departure", || remote_members(scope_1, &group_name("audit")) == 0).await;
        for seq in 20..24 {
            assert_eq!(deliver(scope_1, "audit", &delivery("deploy.ok", seq), limit).await, Outcome::Ack);
        }
        assert_eq!((local_count.load(Ordering::SeqCst), remote_count.load(Ordering::SeqCst)), (9, 7));
        for actor in [local, remote] {
            actor.stop(None);
        }
        server_1.stop(None);
    }
}
