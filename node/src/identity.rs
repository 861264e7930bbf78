//! The node's persistent identity and cluster membership facts, kept as small files in the data directory.
//!
//! `node.key` (the node's ed25519 secret, mode 0600) is its iroh identity and its credential toward the cluster;
//! `cluster.key` (mode 0600) is the members' shared secret (the actor mesh's cookie and plugins' signing keys derive
//! from it; it mints no token); `node.json` holds the node id, cluster id, the address the node listens on and whether
//! the founder recorded its admin token, so a restart reuses them; `ticket` (mode 0600) lists the members, and on the
//! founder carries the admin token minted on its first start. `node.key.next` (mode 0600) exists only while a key
//! rotation is pending (`pando-node --rotate-key`): the running node registers it with the cluster, then renames it
//! over `node.key` and restarts itself with it.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;

const NODE_KEY_FILE: &str = "node.key";
const NEXT_NODE_KEY_FILE: &str = "node.key.next";
const CLUSTER_KEY_FILE: &str = "cluster.key";
const NODE_FILE: &str = "node.json";
const SECRET_KEY_BYTES: usize = 32;
const CLUSTER_ID_BYTES: usize = 16;

/// What the node remembers across restarts.
#[derive(Clone, Debug)]
pub struct NodeRecord {
    pub node_id: u64,
    pub cluster_id: Vec<u8>,
    pub bind: SocketAddr,
    /// The node that initialised the cluster offers the single-node bootstrap on every start (openraft ignores it once
    /// the log holds a membership); a node that joined never does.
    pub founder: bool,
    /// Public keys of the members this node was told about when it joined: trusted for Raft traffic before its own
    /// log holds the membership.
    pub seeds: Vec<[u8; 32]>,
    /// On the founder: the admin token of its first start is recorded in the cluster (never minted again).
    pub admin_minted: bool,
}

pub struct Identity {
    pub node_key: [u8; SECRET_KEY_BYTES],
    pub cluster_key: [u8; SECRET_KEY_BYTES],
    /// `None` on the very first start.
    pub record: Option<NodeRecord>,
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes);
    bytes
}

/// Creates the data directory (mode 0700) when missing.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    Ok(())
}

/// Loads the node's keys and record, creating keys on first start.
pub fn load_or_create(dir: &Path) -> anyhow::Result<Identity> {
    let node_key = load_or_create_key(&dir.join(NODE_KEY_FILE))?;
    let cluster_key = load_or_create_key(&dir.join(CLUSTER_KEY_FILE))?;
    let record = load_record(dir)?;
    Ok(Identity { node_key, cluster_key, record })
}

/// Starts a key rotation: writes a new key beside the current one, or keeps the one a pending rotation already wrote.
/// Answers the new key and whether it was just made.
pub fn begin_key_rotation(dir: &Path) -> anyhow::Result<([u8; SECRET_KEY_BYTES], bool)> {
    if let Some(pending) = pending_key(dir)? {
        return Ok((pending, false));
    }
    let key = random_bytes::<SECRET_KEY_BYTES>();
    write_private(&dir.join(NEXT_NODE_KEY_FILE), &key)?;
    Ok((key, true))
}

/// The key of a pending rotation, if one is pending.
pub fn pending_key(dir: &Path) -> anyhow::Result<Option<[u8; SECRET_KEY_BYTES]>> {
    let path = dir.join(NEXT_NODE_KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    load_key(&path).map(Some)
}

/// Ends a rotation the cluster registered: the pending key becomes the node's key (an atomic rename, made durable).
pub fn finish_key_rotation(dir: &Path) -> anyhow::Result<()> {
    let (next, current) = (dir.join(NEXT_NODE_KEY_FILE), dir.join(NODE_KEY_FILE));
    fs::rename(&next, &current).with_context(|| format!("cannot move {} to {}", next.display(), current.display()))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|directory| directory.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

fn load_key(path: &Path) -> anyhow::Result<[u8; SECRET_KEY_BYTES]> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    check_private(path)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} must hold exactly {SECRET_KEY_BYTES} bytes", path.display()))
}

fn check_private(path: &Path) -> anyhow::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("{} is readable by others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display());
    }
    Ok(())
}

fn load_or_create_key(path: &Path) -> anyhow::Result<[u8; SECRET_KEY_BYTES]> {
    if path.exists() {
        return load_key(path);
    }
    let key = random_bytes::<SECRET_KEY_BYTES>();
    write_private(path, &key)?;
    Ok(key)
}

/// Writes a file readable only by its owner, atomically (temporary file, fsync, rename).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))?;
    // The rename itself survives a crash only once the directory is synced.
    path.parent().map_or(Ok(()), sync_dir)
}

fn load_record(dir: &Path) -> anyhow::Result<Option<NodeRecord>> {
    let path = dir.join(NODE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let node_id = value["node_id"].as_u64().with_context(|| format!("{} lacks node_id", path.display()))?;
    let cluster_id = data_encoding::HEXLOWER
        .decode(value["cluster_id"].as_str().unwrap_or_default().as_bytes())
        .with_context(|| format!("{} has an invalid cluster_id", path.display()))?;
    if cluster_id.len() != CLUSTER_ID_BYTES {
        bail!("{} has a cluster_id of {} bytes, expected {CLUSTER_ID_BYTES}", path.display(), cluster_id.len());
    }
    let bind = value["bind"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("{} has an invalid bind address", path.display()))?;
    let founder = value["founder"].as_bool().unwrap_or(true);
    // A founder's data directory from before token records gets an admin token on its next start.
    let admin_minted = value["admin_minted"].as_bool().unwrap_or(false);
    let mut seeds = Vec::new();
    for seed in value["seeds"].as_array().into_iter().flatten() {
        let bytes = data_encoding::HEXLOWER
            .decode(seed.as_str().unwrap_or_default().as_bytes())
            .with_context(|| format!("{} has an invalid seed key", path.display()))?;
        seeds.push(
            bytes.try_into().map_err(|_| anyhow::anyhow!("{} has a seed key that is not 32 bytes", path.display()))?,
        );
    }
    Ok(Some(NodeRecord { node_id, cluster_id, bind, founder, seeds, admin_minted }))
}

pub fn save_record(dir: &Path, record: &NodeRecord) -> anyhow::Result<()> {
    let value = json!({
        "node_id": record.node_id,
        "cluster_id": data_encoding::HEXLOWER.encode(&record.cluster_id),
        "bind": record.bind.to_string(),
        "founder": record.founder,
        "admin_minted": record.admin_minted,
        "seeds": record.seeds.iter().map(|seed| data_encoding::HEXLOWER.encode(seed)).collect::<Vec<_>>(),
    });
    write_private(&dir.join(NODE_FILE), serde_json::to_string_pretty(&value)?.as_bytes())
}

pub fn new_cluster_id() -> Vec<u8> {
    random_bytes::<CLUSTER_ID_BYTES>().to_vec()
}

pub fn ticket_path(dir: &Path) -> PathBuf {
    dir.join("ticket")
}

pub fn cluster_key_path(dir: &Path) -> PathBuf {
    dir.join(CLUSTER_KEY_FILE)
}
