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
    use ractor::{Actor, ActorProcessingErr};

    use super::*;

    struct Subscriber;

    impl Actor for Subscriber {
        type Msg = HookSubscriberMsg;
        type State = ();
        type Arguments = GroupAnswer;

        async fn pre_start(&self, _: ActorRef<HookSubscriberMsg>, _: GroupAnswer) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _: ActorRef<HookSubscriberMsg>,
            message: HookSubscriberMsg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            let HookSubscriberMsg::Deliver(input, reply) = message;
            let event: serde_json::Value = serde_json::from_slice(&input)?;
            let answer =
                if event["subject"] == "deploy.bad" { GroupAnswer::Term("bad".into()) } else { GroupAnswer::Ack };
            let _ = reply.send(answer.encode());
            Ok(())
        }
    }

    fn delivery(subject: &str) -> Delivery {
        Delivery {
            hook: "h".into(),
            attempt: 1,
            fence: 1,
            ack_by_ms: 0,
            event: pando_protocol::hook::HookEvent {
                seq: 7,
                subject: subject.into(),
                time_ms: 0,
                revision: 0,
                body: pando_protocol::hook::EventBody::User { data: Vec::new().into() },
            },
        }
    }

    #[tokio::test]
    async fn a_group_member_answers_and_an_empty_group_fails_the_attempt() {
        let scope = "pando.test.hooks";
        let limit = Duration::from_secs(1);
        let outcome = deliver(scope, "audit", &delivery("deploy.ok"), limit).await;
        assert!(matches!(outcome, Outcome::Nack(error) if error.contains("no member")));
        let (actor, handle) = Actor::spawn(None, Subscriber, GroupAnswer::Ack).await.unwrap();
        join(scope, "audit", &actor);
        assert_eq!(deliver(scope, "audit", &delivery("deploy.ok"), limit).await, Outcome::Ack);
        assert_eq!(deliver(scope, "audit", &delivery("deploy.bad"), limit).await, Outcome::Term("bad".into()));
        actor.stop(None);
        handle.await.unwrap();
    }
}
