//! The JSON form of a hook event: what `pando hook watch` prints (one object a line), what a shell hook reads on
//! stdin and what a plugin's `on_hook` receives. Bytes that are UTF-8 are strings; others are base64 under a
//! `_base64` name, so nothing is lost or mangled.
//!
//! ```json
//! {"seq":12,"subject":"kv.put.app.db","time_ms":1764800000000,"revision":7,"type":"kv.put",
//!  "key":"app/db","value":"hello","create_revision":7,"mod_revision":7,"version":1,"prev_revision":0}
//! ```

use serde_json::{Map, Value, json};

use super::{ClusterEvent, EventBody, HookEvent, HookNotice};
use crate::watch::EventKind;

fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_string(), Value::String(text.to_string())),
        Err(_) => object.insert(format!("{name}_base64"), Value::String(data_encoding::BASE64.encode(bytes))),
    };
}

/// The event as one JSON object.
pub fn to_json(event: &HookEvent) -> Value {
    let mut object = Map::new();
    object.insert("seq".into(), json!(event.seq));
    object.insert("subject".into(), json!(event.subject));
    object.insert("time_ms".into(), json!(event.time_ms));
    object.insert("revision".into(), json!(event.revision));
    match &event.body {
        EventBody::Kv(change) => {
            let kind = if change.kind == EventKind::Put { "kv.put" } else { "kv.delete" };
            object.insert("type".into(), json!(kind));
            put_bytes(&mut object, "key", &change.entry.key);
            if change.kind == EventKind::Put {
                match &change.entry.blob {
                    Some(blob) => {
                        object.insert("blob".into(), json!(blob.hash.to_hex()));
                        object.insert("size".into(), json!(blob.size));
                    }
                    None => put_bytes(&mut object, "value", &change.entry.value),
                }
                object.insert("create_revision".into(), json!(change.entry.create_revision));
                object.insert("version".into(), json!(change.entry.version));
            }
            object.insert("mod_revision".into(), json!(change.entry.mod_revision));
            object.insert("prev_revision".into(), json!(change.prev_revision));
        }
        EventBody::Coord(coord) => {
            object.insert("type".into(), json!("coord"));
            object.insert("event".into(), serde_json::to_value(coord).unwrap_or(Value::Null));
        }
        EventBody::Cluster(ClusterEvent::LeaderElected { node, term }) => {
            object.insert("type".into(), json!("cluster.leader_elected"));
            object.insert("node".into(), json!(node));
            object.insert("term".into(), json!(term));
        }
        EventBody::Cluster(ClusterEvent::MembershipChanged { voters, learners }) => {
            object.insert("type".into(), json!("cluster.member.changed"));
            object.insert("voters".into(), json!(voters));
            object.insert("learners".into(), json!(learners));
        }
        EventBody::Hook(HookNotice::DeadLettered { hook, seq, attempts, error }) => {
            object.insert("type".into(), json!("sys.hook.dlq"));
            object.insert("hook".into(), json!(hook));
            object.insert("dead_seq".into(), json!(seq));
            object.insert("attempts".into(), json!(attempts));
            object.insert("error".into(), json!(error));
        }
        EventBody::User { data } => {
            object.insert("type".into(), json!("user"));
            match serde_json::from_slice::<Value>(data) {
                Ok(value) => object.insert("data".into(), value),
                Err(_) => {
                    put_bytes(&mut object, "data", data);
                    None
                }
            };
        }
    }
    Value::Object(object)
}

/// The event as one line of JSON, newline included.
pub fn to_json_line(event: &HookEvent) -> Vec<u8> {
    let mut line = serde_json::to_vec(&to_json(event)).unwrap_or_default();
    line.push(b'\n');
    line
}
