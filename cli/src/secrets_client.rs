//! The secrets engine's typed client: KV v2 and transit calls on the shipped `secrets` plugin, with the plugin's
//! own request and answer types, so the CLI and the engine cannot disagree on the wire.
//!
//! The engine is a plugin written with the SDK alone (`fixtures/plugins/secrets`); its KV v2 core ([`kv2`]) and
//! transit's wire types ([`transit_api`], without the ciphers) are compiled in here as they are into the plugin. Calls go through the
//! node's plugin call path: the caller's token needs the `plugin` call right, and the engine checks nothing of
//! its own yet (per-path policies are the next step of the engine).

#[allow(dead_code)] // The rules themselves run in the plugin; a client uses the types and the limits.
#[path = "../../fixtures/plugins/secrets/src/kv2.rs"]
pub mod kv2;
#[path = "../../fixtures/plugins/secrets/src/transit_api.rs"]
pub mod transit_api;

use pando_protocol::error::{ErrorCode, WireError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError};

/// The name the engine is installed under.
pub const SECRETS_PLUGIN: &str = "secrets";

/// One page of names under a folder, as the engine's `kv_list` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Relative to the folder, sorted; a subfolder ends in `/`.
    pub keys: Vec<String>,
    /// More names follow: ask again with `after` set to this.
    pub next: Option<String>,
}

#[derive(Serialize)]
struct KvCall<'a> {
    path: &'a str,
    op: &'a kv2::Op,
}

#[derive(Serialize)]
struct TransitCall<'a> {
    name: &'a str,
    op: &'a transit_api::Op,
}

#[derive(Serialize)]
struct ListCall<'a> {
    folder: &'a str,
    recursive: bool,
    after: Option<&'a str>,
    limit: u32,
}

/// The secrets engine as seen through one client.
pub struct Secrets<'a> {
    client: &'a Client,
}

impl Client {
    /// The secrets engine (installed as plugin [`SECRETS_PLUGIN`]).
    pub fn secrets(&self) -> Secrets<'_> {
        Secrets { client: self }
    }
}

impl Secrets<'_> {
    async fn call<T: DeserializeOwned>(&self, function: &str, input: &impl Serialize) -> Result<T, ClientError> {
        let input = serde_json::to_vec(input).map_err(|error| ClientError::Invalid(error.to_string()))?;
        let (output, _node, _generation) =
            self.client.plugin_call(SECRETS_PLUGIN, function, &input).await.map_err(not_enabled_hint)?;
        serde_json::from_slice(&output).map_err(|error| {
            ClientError::Protocol(format!("the secrets engine's `{function}` answered something else: {error}"))
        })
    }

    /// One KV v2 operation on `path`.
    pub async fn kv(&self, path: &str, op: &kv2::Op) -> Result<kv2::Answer, ClientError> {
        self.call("kv_op", &KvCall { path, op }).await
    }

    /// One page of the names under `folder` (`""` for the top, else ending in `/`), after `after`, at most `limit`
    /// (0: the engine's page size); `recursive` lists every path below the folder instead of its children.
    pub async fn kv_list(
        &self,
        folder: &str,
        recursive: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Listing, ClientError> {
        self.call("kv_list", &ListCall { folder, recursive, after, limit }).await
    }

    /// The mount's settings: the defaults of every path that does not set its own.
    pub async fn kv_config(&self) -> Result<kv2::Config, ClientError> {
        self.call("kv_config_get", &()).await
    }

    /// One transit operation on key ring `name`.
    pub async fn transit(&self, name: &str, op: &transit_api::Op) -> Result<transit_api::Answer, ClientError> {
        self.call("transit_op", &TransitCall { name, op }).await
    }

    /// The engine's known-answer tests, run by the wasm on the node this client talks to; fails when one does.
    pub async fn transit_self_test(&self) -> Result<Vec<transit_api::KnownAnswer>, ClientError> {
        self.call("transit_self_test", &()).await
    }

    /// Replaces the mount's settings.
    pub async fn kv_config_put(&self, config: &kv2::Config) -> Result<kv2::Config, ClientError> {
        self.call("kv_config_put", config).await
    }
}

/// A call to an engine that runs nowhere says how to enable it.
fn not_enabled_hint(error: ClientError) -> ClientError {
    match error {
        ClientError::Wire(wire) if wire.code == ErrorCode::NotFound && wire.message.contains("no plugin") => {
            ClientError::Wire(WireError::new(
                ErrorCode::NotFound,
                format!("{} (run `pando secrets enable` first)", wire.message),
            ))
        }
        other => other,
    }
}
