//! `pando queue`: work queues with visibility timeouts, delivery tokens and dead letters.

use std::io::Read;

use anyhow::Context;
use clap::Subcommand;
use pando_client::Client;
use pando_client::pando_protocol::coord::{CoordRequest, CoordResponse, MessageState, QueueInfo, QueueMessage};
use pando_client::pando_protocol::kv::bytes;
use serde_json::json;

use crate::coord::{parse_duration_ms, unexpected};
use crate::output::{bytes_json, print_json};

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue (again with the same settings is a no-op; with others, CONFLICT).
    Create {
        name: String,
        /// How long a delivered message stays with its consumer unless acked, nacked or extended.
        #[arg(long, value_parser = parse_duration_ms, default_value = "30s")]
        visibility: u64,
        /// Deliveries after which an unacked message becomes a dead letter.
        #[arg(long, default_value_t = 5)]
        max_deliveries: u32,
    },
    /// Append a message; prints its id.
    Enqueue {
        name: String,
        /// The message (`-` reads it from stdin).
        body: String,
        /// An id seen in the last 5 minutes makes this a duplicate: nothing is added, the first id is printed.
        #[arg(long)]
        dedup_id: Option<String>,
        /// Messages of one group are delivered one at a time, in order.
        #[arg(long)]
        group: Option<String>,
    },
    /// Take up to --count messages; prints `id token delivery body` for each.
    Dequeue {
        name: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Visibility timeout of these deliveries (default: the queue's).
        #[arg(long, value_parser = parse_duration_ms, default_value = "0")]
        visibility: u64,
        /// Wait up to this long while the queue has nothing ready (parked on the node; bounded by --timeout-ms).
        #[arg(long, value_parser = parse_duration_ms, default_value = "0")]
        wait: u64,
        /// A label for who took the messages.
        #[arg(long, default_value = "")]
        consumer: String,
    },
    /// The message is done: it leaves the queue.
    Ack {
        name: String,
        id: u64,
        #[arg(long)]
        token: u64,
    },
    /// Give the message back (a dead letter if that was its last delivery).
    Nack {
        name: String,
        id: u64,
        #[arg(long)]
        token: u64,
    },
    /// Keep the message for another visibility timeout from now.
    Extend {
        name: String,
        id: u64,
        #[arg(long)]
        token: u64,
        #[arg(long, value_parser = parse_duration_ms, default_value = "0")]
        visibility: u64,
    },
    /// The next ready messages, without taking them.
    Peek {
        name: String,
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Counts and settings.
    Status { name: String },
    /// The dead letters.
    Dlq {
        name: String,
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Return up to --count dead letters to the queue.
    Redrive {
        name: String,
        #[arg(long, default_value_t = 1_000)]
        count: u32,
    },
    /// Delete the queue and every message in it.
    Delete { name: String },
    /// The queues whose names start with a prefix (default: every queue, which needs read access to the whole
    /// keyspace).
    List {
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

fn queue_json(queue: &QueueInfo) -> serde_json::Value {
    json!({
        "name": String::from_utf8_lossy(&queue.name),
        "visibility_ms": queue.visibility_ms,
        "max_deliveries": queue.max_deliveries,
        "ready": queue.ready,
        "in_flight": queue.in_flight,
        "waiting": queue.waiting,
        "dead": queue.dead,
        "enqueued_total": queue.enqueued_total,
        "acked_total": queue.acked_total,
        "dead_lettered_total": queue.dead_lettered_total,
    })
}

fn message_json(message: &QueueMessage) -> serde_json::Value {
    let state = match &message.state {
        MessageState::Ready => json!("ready"),
        MessageState::Waiting => json!("waiting"),
        MessageState::InFlight { token, until_ms, consumer } => json!({
            "in_flight": {"token": token, "until_ms": until_ms, "consumer": String::from_utf8_lossy(consumer)}
        }),
        MessageState::Dead { reason } => json!({"dead": reason}),
    };
    json!({
        "id": message.id,
        "body": bytes_json(&message.body),
        "group": message.group.as_ref().map(|group| String::from_utf8_lossy(group).into_owned()),
        "dedup_id": message.dedup_id.as_ref().map(|id| String::from_utf8_lossy(id).into_owned()),
        "enqueued_ms": message.enqueued_ms,
        "deliveries": message.deliveries,
        "token": message.token(),
        "state": state,
    })
}

fn print_messages(messages: &[QueueMessage], json: bool) {
    if json {
        print_json(&json!({"messages": messages.iter().map(message_json).collect::<Vec<_>>()}));
        return;
    }
    for message in messages {
        let body = String::from_utf8_lossy(&message.body);
        match (&message.state, message.token()) {
            (_, Some(token)) => println!("{} {token} {} {body}", message.id, message.deliveries),
            (MessageState::Dead { reason }, None) => println!("{} dead ({reason}) {body}", message.id),
            _ => println!("{} {body}", message.id),
        }
    }
}

fn print_queue(queue: &QueueInfo, json: bool) {
    if json {
        print_json(&queue_json(queue));
    } else {
        println!(
            "{}: {} ready, {} in flight, {} waiting behind their group, {} dead; visibility {} ms, {} deliveries at \
             most; {} enqueued, {} acked, {} dead-lettered in all",
            String::from_utf8_lossy(&queue.name),
            queue.ready,
            queue.in_flight,
            queue.waiting,
            queue.dead,
            queue.visibility_ms,
            queue.max_deliveries,
            queue.enqueued_total,
            queue.acked_total,
            queue.dead_lettered_total
        );
    }
}

pub async fn queue(client: &Client, command: QueueCommand, json: bool) -> anyhow::Result<()> {
    let request = match command {
        QueueCommand::Create { name, visibility, max_deliveries } => {
            CoordRequest::QueueCreate { name: bytes(name), visibility_ms: visibility, max_deliveries }
        }
        QueueCommand::Enqueue { name, body, dedup_id, group } => {
            let body = if body == "-" {
                let mut body = Vec::new();
                std::io::stdin().read_to_end(&mut body).context("reading the message from stdin")?;
                body
            } else {
                body.into_bytes()
            };
            CoordRequest::QueueEnqueue {
                name: bytes(name),
                body: bytes(body),
                dedup_id: dedup_id.map(bytes),
                group: group.map(bytes),
            }
        }
        QueueCommand::Dequeue { name, count, visibility, wait, consumer } => CoordRequest::QueueDequeue {
            name: bytes(name),
            count,
            visibility_ms: visibility,
            consumer: bytes(consumer),
            wait_ms: u32::try_from(wait).context("--wait is too long")?,
        },
        QueueCommand::Ack { name, id, token } => CoordRequest::QueueAck { name: bytes(name), id, token },
        QueueCommand::Nack { name, id, token } => CoordRequest::QueueNack { name: bytes(name), id, token },
        QueueCommand::Extend { name, id, token, visibility } => {
            CoordRequest::QueueExtend { name: bytes(name), id, token, visibility_ms: visibility }
        }
        QueueCommand::Peek { name, count } => CoordRequest::QueuePeek { name: bytes(name), count },
        QueueCommand::Status { name } => CoordRequest::QueueGet { name: bytes(name) },
        QueueCommand::Dlq { name, count } => CoordRequest::QueueDeadLetters { name: bytes(name), count },
        QueueCommand::Redrive { name, count } => CoordRequest::QueueRedrive { name: bytes(name), count },
        QueueCommand::Delete { name } => CoordRequest::QueueDelete { name: bytes(name) },
        QueueCommand::List { prefix } => CoordRequest::QueueList { prefix: bytes(prefix.as_str()) },
    };
    let deleting = matches!(request, CoordRequest::QueueDelete { .. });
    match client.coord(request).await? {
        CoordResponse::Queue { queue } if deleting => {
            if json {
                print_json(&json!({"deleted": queue_json(&queue)}));
            } else {
                println!("OK deleted, with {} messages", queue.depth());
            }
        }
        CoordResponse::Queue { queue } => print_queue(&queue, json),
        CoordResponse::Queues { queues, truncated } => {
            if json {
                print_json(
                    &json!({"queues": queues.iter().map(queue_json).collect::<Vec<_>>(), "truncated": truncated}),
                );
            } else {
                queues.iter().for_each(|queue| print_queue(queue, false));
                if truncated {
                    eprintln!("(more queues not shown)");
                }
            }
        }
        CoordResponse::Enqueued { id, duplicate } => {
            if json {
                print_json(&json!({"id": id, "duplicate": duplicate}));
            } else if duplicate {
                println!("{id} (duplicate: nothing added)");
            } else {
                println!("{id}");
            }
        }
        CoordResponse::Delivered { messages } | CoordResponse::QueueMessages { messages, .. } => {
            print_messages(&messages, json)
        }
        CoordResponse::QueueMessage { message } => {
            if json {
                print_json(&message_json(&message));
            } else {
                match &message.state {
                    MessageState::InFlight { until_ms, .. } => {
                        println!("OK invisible until {}", crate::output::utc(*until_ms))
                    }
                    MessageState::Dead { reason } => println!("OK dead letter: {reason}"),
                    _ => println!("OK returned to the queue"),
                }
            }
        }
        CoordResponse::Acked { id } => {
            if json {
                print_json(&json!({"acked": id}));
            } else {
                println!("OK acked {id}");
            }
        }
        CoordResponse::Redriven { count } => {
            if json {
                print_json(&json!({"redriven": count}));
            } else {
                println!("OK redrove {count}");
            }
        }
        other => return Err(unexpected(&other)),
    }
    Ok(())
}
