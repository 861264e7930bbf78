//! `pando_client`: the one client library for Pando. Connection reuse, per-request deadlines on every stage
//! (connect, open, write, read), typed KV and cluster calls.

mod blob_client;
mod client;
mod error;
mod fs;
mod hooks;
pub mod human;
mod jobs;
mod observe;
pub mod secrets_client;
pub mod settings;
mod stream;
mod tokens;
mod transport;
mod watch;

pub use blob_client::BLOB_COMMIT_TIMEOUT_MS;
pub use client::{Client, ClientOptions, ScanPage, client_quic_transport_config, node_quic_transport_config};
pub use error::ClientError;
pub use hooks::HookWatch;
pub use jobs::Submitted;
pub use observe::Observation;
pub use pando_protocol;
pub use secrets_client::{Listing as SecretsListing, SECRETS_PLUGIN, Secrets, kv2, transit_api};
pub use stream::{WATCH_RESUME_ATTEMPTS_MAX, WATCH_RESUME_BACKOFF_MS};
pub use tokens::{MemberSecretRotation, MintedToken, TokenPage};
pub use transport::{IrohTransport, Link, RecvHalf, SendHalf, Transport};
pub use watch::{WATCH_HEARTBEAT_MS, WATCH_REREAD_PAGE_KEYS, WATCH_SILENT_INTERVALS_MAX, Watch, WatchItem};
