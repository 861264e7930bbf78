//! Every bound of the protocol, as a named constant with its unit last.
//!
//! The node enforces these before anything is proposed, so an oversized request is rejected with a clear error and
//! changes nothing. The state machine checks them again, because a replicated entry must be valid on every replica.

/// Most rows of one plugin's sealed storage (see [`crate::plugin::sealed`]).
pub const PLUGIN_SEALED_ROWS_MAX: u64 = 100_000;
/// Most bytes (keys and values) of one plugin's sealed storage.
pub const PLUGIN_SEALED_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Most steps (checks, puts, deletes) of one sealed write.
pub const PLUGIN_SEALED_OPS_MAX: usize = 64;
/// Most bytes of keys and values one sealed write carries.
pub const PLUGIN_SEALED_WRITE_BYTES_MAX: usize = 2 * 1024 * 1024 + 64 * 1024;

/// Largest frame (length prefix excluded) either side accepts.
pub const FRAME_SIZE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest key.
pub const KEY_SIZE_BYTES_MAX: usize = 4 * 1024;
/// Largest value stored inline in the KV (larger values will become blob references).
pub const VALUE_SIZE_BYTES_MAX: usize = 1024 * 1024;
/// Largest sum of key and value bytes in one write request (batch or transaction).
pub const WRITE_PAYLOAD_BYTES_MAX: usize = 3 * 1024 * 1024;
/// Most operations in one atomic batch write, batch read, or one branch of a transaction.
pub const BATCH_OPS_COUNT_MAX: usize = 128;
/// Most compares in one transaction.
pub const TXN_COMPARES_COUNT_MAX: usize = 64;
/// Most entries one scan page returns.
pub const SCAN_LIMIT_COUNT_MAX: u32 = 1_000;
/// Entries one scan page returns when the client does not say.
pub const SCAN_LIMIT_COUNT_DEFAULT: u32 = 100;
/// A scan page stops early (with a continuation) once its keys and values exceed this.
pub const SCAN_RESPONSE_BYTES_MAX: usize = 3 * 1024 * 1024;
/// Most bytes of a token's name.
pub const TOKEN_NAME_BYTES_MAX: usize = 256;
/// Most tokens the cluster records (expired ones are purged when a mint would pass it).
pub const TOKENS_COUNT_MAX: usize = 10_000;
/// Most tokens one `pando token list` page shows.
pub const TOKEN_LIST_COUNT_MAX: usize = 500;
/// Longest lifetime a token may be given (0 asks for no expiry, an admin's explicit choice).
pub const TOKEN_TTL_MS_MAX: u64 = 10 * 365 * 86_400_000;
/// Lifetime of a token when its creator does not say.
pub const TOKEN_TTL_MS_DEFAULT: u64 = 30 * 86_400_000;
/// Lifetime of a join token when its creator does not say.
pub const JOIN_TOKEN_TTL_MS_DEFAULT: u64 = 3_600_000;
/// Most joins one join token allows.
pub const JOIN_TOKEN_USES_MAX: u32 = 100;
/// How often a connection's cached token is checked against the node's state again (a revocation reaches every
/// open connection within this, once the node applied it).
pub const TOKEN_RECHECK_MS: u64 = 250;
/// How long a node that does not know a token tries to catch up with the cluster (a read-index round through the
/// leader: the token may have been minted elsewhere a moment ago) before it answers that it cannot tell.
pub const TOKEN_PROPAGATION_WAIT_MS: u64 = 1_000;
/// How long one try of a starting plugin supervisor to catch up with the cluster (a read-index round through the
/// leader) may take; it serves no plugin before one succeeds, and tries again [`PLUGIN_CATCH_UP_RETRY_MS`] later.
pub const PLUGIN_CATCH_UP_WAIT_MS: u64 = 2_000;
pub const PLUGIN_CATCH_UP_RETRY_MS: u64 = 250;
/// Most members a cluster admits (each must fit a ticket, so clients can reach every one of them).
pub const CLUSTER_MEMBERS_MAX: usize = 64;
/// Most capabilities in one token.
pub const TOKEN_CAPABILITIES_COUNT_MAX: usize = 64;
/// Longest request timeout a client may ask for.
pub const REQUEST_TIMEOUT_MS_MAX: u32 = 5 * 60 * 1000;
/// Timeout used when a request does not carry one.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u32 = 10_000;
/// Most nodes one ticket lists.
pub const TICKET_NODES_COUNT_MAX: usize = 64;
/// Most characters of an encoded ticket we try to decode.
pub const TICKET_TEXT_BYTES_MAX: usize = 64 * 1024;
/// Most addresses one member announces.
pub const MEMBER_ADDRS_COUNT_MAX: usize = 8;
/// Upper bound of one ticket node's MessagePack encoding: field names, id, a 32-byte key, and each address at most
/// 16 bytes of IPv6, a port and framing.
pub const TICKET_NODE_ENCODED_BYTES_MAX: usize = 64 + 34 + MEMBER_ADDRS_COUNT_MAX * 32;
/// Largest Raft frame between members (a batch of log entries or a snapshot chunk).
pub const RAFT_FRAME_SIZE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest snapshot chunk sent in one Raft frame.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Most log entries in one AppendEntries frame. openraft gives an AppendEntries one heartbeat interval to complete,
/// so frames must stay small enough to cross the network in that time.
pub const APPEND_ENTRIES_COUNT_MAX: u64 = 4;
/// Most bytes of keys and values one proposal (one log entry) may carry, so AppendEntries frames stay bounded.
pub const PROPOSAL_BYTES_MAX: usize = 1024 * 1024;
/// Largest data frame of a streamed blob (raw bytes behind the usual length prefix; an empty frame ends the data).
pub const BLOB_DATA_FRAME_BYTES_MAX: usize = 1024 * 1024;
/// Longest pause between two data frames of a streamed blob before the node gives up on the transfer.
pub const BLOB_DATA_FRAME_TIMEOUT_MS: u64 = 30_000;
/// Slowest average rate a streamed blob upload may keep once its grace period is over (a trickling client holds a
/// transfer slot and a request slot).
pub const BLOB_UPLOAD_RATE_BYTES_PER_S_MIN: u64 = 64 * 1024;
/// How long an upload may run before the minimum rate applies.
pub const BLOB_UPLOAD_RATE_GRACE_MS: u64 = 10_000;
/// Longest any one streamed blob upload may take.
pub const BLOB_UPLOAD_DEADLINE_MS: u64 = 60 * 60 * 1000;
/// Shortest interval between a watch's progress notifications.
pub const WATCH_PROGRESS_MS_MIN: u32 = 100;
/// A watch frame of events is cut (the revision continues in the next frame) once its keys and values pass this.
pub const WATCH_FRAME_EVENTS_BYTES_MAX: usize = 1024 * 1024;
/// How long one frame to a watcher may wait for the watcher to read before the watch is cancelled `SLOW_CONSUMER`.
pub const WATCH_SEND_STALL_MS_MAX: u64 = 30_000;
/// Watches one node serves at once; more are answered `BUSY`.
pub const WATCHES_PER_NODE_MAX: usize = 10_000;
/// How long a watch's node may be without a leader before the watch is cancelled `NO_LEADER`.
pub const WATCH_NO_LEADER_MS: u64 = 3_000;
/// How often a node repeats an observed state that did not change, as a heartbeat.
pub const OBSERVE_HEARTBEAT_MS: u64 = 5_000;

// One event with its previous entry always fits a frame on its own, whatever the cut.
const _: () = assert!(
    WATCH_FRAME_EVENTS_BYTES_MAX + 2 * (KEY_SIZE_BYTES_MAX + VALUE_SIZE_BYTES_MAX) + 64 * 1024 <= FRAME_SIZE_BYTES_MAX
);

const _: () = assert!(JOIN_TOKEN_TTL_MS_DEFAULT <= TOKEN_TTL_MS_MAX && TOKEN_TTL_MS_DEFAULT <= TOKEN_TTL_MS_MAX);
const _: () = assert!(TOKEN_LIST_COUNT_MAX <= TOKENS_COUNT_MAX);
// A revocation must reach open connections well within the second the product promises.
const _: () = assert!(TOKEN_RECHECK_MS < 1_000);
// Every member fits in a ticket, so a ticket written from the membership never has to drop one.
const _: () = assert!(CLUSTER_MEMBERS_MAX <= TICKET_NODES_COUNT_MAX);
// A ticket listing the most members, plus a token and its framing, fits the text limit after base64 (4 chars per 3 bytes).
const _: () = assert!((CLUSTER_MEMBERS_MAX * TICKET_NODE_ENCODED_BYTES_MAX + 1024) * 4 / 3 <= TICKET_TEXT_BYTES_MAX);

/// Longest subject or subscription pattern.
pub const HOOK_PATTERN_BYTES_MAX: usize = 1024;
/// Most tokens of a subject or pattern.
pub const HOOK_PATTERN_TOKENS_MAX: usize = 256;
/// Largest payload of a user event (`pando hook publish`).
pub const HOOK_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// Most hook-log rows one trim drops (the next trim goes on).
pub const HOOK_TRIM_ROWS_PER_PROPOSAL_MAX: u64 = 10_000;
/// Events the hook log keeps when the node is not told otherwise (a durable hook holds older ones it still has to
/// begin, up to [`HOOK_LOG_EVENTS_MAX`]).
pub const HOOK_LOG_KEEP_EVENTS_DEFAULT: u64 = 100_000;
/// Most events the hook log holds, whatever durable hooks still need: past it, a hook that lags that far skips the
/// oldest (and counts them as skipped) rather than the log growing without bound.
pub const HOOK_LOG_EVENTS_MAX: u64 = 1_000_000;
/// Most durable hooks in the cluster.
pub const HOOKS_COUNT_MAX: usize = 1_000;
/// Longest hook name.
pub const HOOK_NAME_BYTES_MAX: usize = 128;
/// Most deliveries of one event to a durable hook.
pub const HOOK_MAX_DELIVER_MAX: u32 = 100;
/// Deliveries of one event when the hook's creator does not say.
pub const HOOK_MAX_DELIVER_DEFAULT: u32 = 5;
/// Shortest and longest ack wait (how long one delivery attempt may run before it counts as failed).
pub const HOOK_ACK_WAIT_MS_MIN: u64 = 100;
pub const HOOK_ACK_WAIT_MS_MAX: u64 = 12 * 3_600_000;
/// Ack wait when the hook's creator does not say.
pub const HOOK_ACK_WAIT_MS_DEFAULT: u64 = 30_000;
/// Longest backoff step before a redelivery.
pub const HOOK_BACKOFF_MS_MAX: u64 = 24 * 3_600_000;
/// Most deliveries of one durable hook in flight at once (1, the default, delivers strictly in order).
pub const HOOK_IN_FLIGHT_MAX: u32 = 256;
/// Most events one hook's dead-letter list holds: a hook whose list is full pauses instead of dropping anything.
pub const HOOK_DLQ_COUNT_MAX: usize = 10_000;
/// Most log rows one delivery request reads looking for the hook's next matching event (it moves the hook's position
/// past what it read; the next request reads on).
pub const HOOK_SCAN_ROWS_MAX: usize = 10_000;
/// Most events one delivery request begins.
pub const HOOK_BEGIN_COUNT_MAX: u32 = 64;
/// Most dead letters one redrive moves back (the next redrive takes the rest).
pub const HOOK_REDRIVE_COUNT_MAX: usize = 1_000;
/// How long a node's claim on a durable hook lasts without renewal: after the delivering node dies, another takes
/// over within this (plus one renewal interval).
pub const HOOK_CLAIM_TTL_MS: u64 = 3_000;
/// Most bytes of a shell hook's command line (all arguments together).
pub const HOOK_EXEC_ARGV_BYTES_MAX: usize = 16 * 1024;
/// Longest a shell hook's command may run before its process group is killed.
pub const HOOK_EXEC_TIMEOUT_MS_MAX: u64 = HOOK_ACK_WAIT_MS_MAX;
/// Most bytes of an error a hook records with a failed attempt.
pub const HOOK_ERROR_BYTES_MAX: usize = 4 * 1024;

// A delivery request may begin as many events as may be in flight.
const _: () = assert!(HOOK_BEGIN_COUNT_MAX <= HOOK_IN_FLIGHT_MAX);
// A trim keeps up with the most events one proposal can record (a batch of the largest size, each a KV event).
const _: () = assert!(HOOK_TRIM_ROWS_PER_PROPOSAL_MAX as usize >= BATCH_OPS_COUNT_MAX * 4);
const _: () = assert!(HOOK_LOG_KEEP_EVENTS_DEFAULT <= HOOK_LOG_EVENTS_MAX);
// A claim is renewed every third of its lifetime, at most every 500 ms: two renewals may fail before it lapses.
const _: () = assert!(HOOK_CLAIM_TTL_MS >= 3 * 500);
const _: () =
    assert!(HOOK_ACK_WAIT_MS_DEFAULT <= HOOK_ACK_WAIT_MS_MAX && HOOK_ACK_WAIT_MS_MIN <= HOOK_ACK_WAIT_MS_DEFAULT);
const _: () = assert!(HOOK_MAX_DELIVER_DEFAULT <= HOOK_MAX_DELIVER_MAX);
/// Most hooks or dead letters one page lists.
pub const HOOK_LIST_COUNT_MAX: usize = 1_000;
/// Events a hook stream's catch-up reads from the log at once.
pub const HOOK_STREAM_CATCH_UP_MAX: usize = 1_024;
/// Events a node buffers for one hook stream before the stream falls back to reading the log.
pub const HOOK_STREAM_BUFFER_MAX: usize = 1_024;
/// How often a quiet hook stream sends its progress, as a heartbeat.
pub const HOOK_STREAM_PROGRESS_MS: u64 = 5_000;
const _: () = assert!(HOOK_LIST_COUNT_MAX <= HOOK_DLQ_COUNT_MAX);
/// Shell hooks one node runs at once (the rest wait their turn within their ack wait).
pub const HOOK_EXEC_CONCURRENCY_DEFAULT: usize = 16;
/// The most shell hooks a node may be configured to run at once (`--shell-hooks`).
pub const HOOK_EXEC_CONCURRENCY_MAX: usize = 1_024;
const _: () = assert!(HOOK_EXEC_CONCURRENCY_DEFAULT <= HOOK_EXEC_CONCURRENCY_MAX);
/// Most bytes of a failed command's stderr kept as its error.
pub const HOOK_EXEC_STDERR_BYTES_MAX: usize = 2 * 1024;
const _: () = assert!(HOOK_EXEC_STDERR_BYTES_MAX + 256 <= HOOK_ERROR_BYTES_MAX);
/// Most bytes of hook-log rows one read takes (a delivery request's scan, a stream's catch-up page): at least one
/// event, however large.
pub const HOOK_LOG_READ_BYTES_MAX: usize = 4 * 1024 * 1024;
/// A hook stream's frame of events is cut once its keys, values and payloads pass this.
pub const HOOK_STREAM_FRAME_BYTES_MAX: usize = 1024 * 1024;
// One event with the largest value always fits a frame on its own.
const _: () = assert!(
    HOOK_STREAM_FRAME_BYTES_MAX + KEY_SIZE_BYTES_MAX + VALUE_SIZE_BYTES_MAX + 64 * 1024 <= FRAME_SIZE_BYTES_MAX
);

// Jobs (see `crate::job`).
/// Most jobs the cluster keeps (every state, finished ones too, until purged); a submit past it is `BUSY`.
pub const JOBS_COUNT_MAX: u64 = 1_000_000;
/// Largest payload of a job (a shell job's stdin, a plugin job's input).
pub const JOB_PAYLOAD_BYTES_MAX: usize = 256 * 1024;
/// Most bytes of a shell job's command line and environment, all together.
pub const JOB_ARGV_BYTES_MAX: usize = 16 * 1024;
/// Longest queue name, unique key, cron name or plugin function name.
pub const JOB_NAME_BYTES_MAX: usize = 128;
/// Priorities run from 0 (first) to this (last), as Oban orders them.
pub const JOB_PRIORITY_MAX: u8 = 9;
pub const JOB_MAX_ATTEMPTS_DEFAULT: u32 = 20;
pub const JOB_MAX_ATTEMPTS_MAX: u32 = 1_000;
pub const JOB_TIMEOUT_MS_DEFAULT: u64 = 15 * 60 * 1000;
pub const JOB_TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Longest a job may be scheduled ahead (`--not-before`).
pub const JOB_DELAY_MS_MAX: u64 = 366 * 24 * 60 * 60 * 1000;
pub const JOB_BACKOFF_MS_MIN: u64 = 100;
pub const JOB_BACKOFF_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// How long a claim lasts without a heartbeat: after a worker's node dies, its job is claimable again within this
/// plus one tick of the log clock.
pub const JOB_LEASE_MS_MIN: u64 = 500;
pub const JOB_LEASE_MS_DEFAULT: u64 = 10_000;
pub const JOB_LEASE_MS_MAX: u64 = 10 * 60 * 1000;
/// How long past its timeout a running attempt may still heartbeat (the worker kills it at the timeout; this is the
/// state machine's backstop for a worker that does not).
pub const JOB_TIMEOUT_GRACE_MS: u64 = 30_000;
/// Most jobs one job may depend on, and most jobs that may depend on one job.
pub const JOB_DEPENDENCIES_MAX: usize = 64;
pub const JOB_DEPENDENTS_MAX: u64 = 10_000;
/// Most jobs one claim hands out.
pub const JOB_CLAIM_COUNT_MAX: u32 = 64;
/// Most queues one claim looks in (and one node's workers claim from).
pub const JOB_CLAIM_QUEUES_MAX: usize = 16;
/// Most job workers one node runs (`pando-node --job-workers`).
pub const JOB_WORKERS_MAX: u32 = 256;
/// Most nodes whose worker pools the cluster keeps a report of (a node past it still runs jobs; it is not listed).
pub const JOB_POOLS_MAX: usize = 1_024;
const _: () = assert!(JOB_CLAIM_COUNT_MAX <= JOB_WORKERS_MAX);
/// Attempts a job's history keeps (the oldest go first; the counts stay).
pub const JOB_HISTORY_MAX: usize = 32;
/// Most bytes of an attempt's error, and of the output tail a finished attempt keeps inline.
pub const JOB_ERROR_BYTES_MAX: usize = 4 * 1024;
pub const JOB_OUTPUT_TAIL_BYTES_MAX: usize = 16 * 1024;
/// Most bytes of a job attempt's output kept as a blob (the first of them; the tail keeps the last).
pub const JOB_OUTPUT_BYTES_MAX: usize = 16 * 1024 * 1024;
const _: () = assert!(JOB_OUTPUT_TAIL_BYTES_MAX <= JOB_OUTPUT_BYTES_MAX);
/// Most jobs one listing, redrive or purge takes (the next takes the rest).
pub const JOB_LIST_COUNT_MAX: u32 = 1_000;
/// Most cron schedules the cluster keeps.
pub const JOB_CRON_COUNT_MAX: usize = 1_000;
/// A cron instant that fires at most this late is on time; later ones were missed and follow the missed-run policy.
pub const JOB_CRON_ON_TIME_MS: u64 = 10_000;
/// Most missed instants of one schedule that `--missed all` inserts when it fires (the rest are skipped).
pub const JOB_CRON_CATCH_UP_MAX: usize = 100;
const _: () = assert!(JOB_MAX_ATTEMPTS_DEFAULT <= JOB_MAX_ATTEMPTS_MAX);
const _: () = assert!(JOB_TIMEOUT_MS_DEFAULT <= JOB_TIMEOUT_MS_MAX);
const _: () = assert!(JOB_LEASE_MS_MIN <= JOB_LEASE_MS_DEFAULT && JOB_LEASE_MS_DEFAULT <= JOB_LEASE_MS_MAX);
const _: () = assert!(JOB_BACKOFF_MS_MIN <= JOB_BACKOFF_MS_MAX);
// A listing of jobs with the largest payloads still fits a response frame (listings leave payloads out past this).
const _: () = assert!(JOB_PAYLOAD_BYTES_MAX * 8 <= SCAN_RESPONSE_BYTES_MAX);

// The file system (see `crate::fs`).
/// Longest name in a directory, and longest symlink target (Linux's `NAME_MAX` and `PATH_MAX - 1`).
pub const FS_NAME_BYTES_MAX: usize = 255;
pub const FS_SYMLINK_BYTES_MAX: usize = 4_095;
/// A file up to this size keeps its bytes in its own row; a larger one is chunked into blobs.
pub const FS_INLINE_BYTES_MAX: usize = 64 * 1024;
/// Bytes of one chunk of a large file (each chunk is one blob).
pub const FS_CHUNK_BYTES: u64 = 1024 * 1024;
/// The largest file.
pub const FS_FILE_BYTES_MAX: u64 = 1 << 40;
/// Chunks one command replaces, and one read returns.
pub const FS_CHUNKS_PER_COMMAND_MAX: usize = 256;
/// How long a chunk blob the file system added survives unreferenced before it is collected: long enough for the
/// command that references it to commit, short, so the chunks a rewrite replaces do not pile up on disk (a file
/// rewritten at 100 MiB/s leaves about this long's worth of garbage, plus the store's collection interval).
pub const FS_CHUNK_GC_GRACE_MS: u64 = 60_000;
pub const FS_READ_CHUNKS_MAX: u32 = 1_024;
/// Entries one directory listing returns.
pub const FS_LIST_COUNT_MAX: u32 = 1_024;
/// Hard links to one inode, and subdirectories of one directory (`EMLINK` past it).
pub const FS_LINKS_MAX: u32 = 65_000;
/// Inodes the file system holds (`ENOSPC` past it).
pub const FS_INODES_MAX: u64 = 1 << 26;
/// An extended attribute's name and value, and all values of one inode together.
pub const FS_XATTR_NAME_BYTES_MAX: usize = 255;
pub const FS_XATTR_VALUE_BYTES_MAX: usize = 64 * 1024;
pub const FS_XATTR_TOTAL_BYTES_MAX: usize = 128 * 1024;
/// Byte-range locks (fcntl and flock) held on one inode by every owner together (`ENOLCK` past it).
pub const FS_LOCKS_PER_INODE_MAX: usize = 1_024;
/// Bytes one file-system read over the client protocol answers (a `pando mount` reads in pieces of this).
pub const FS_REMOTE_READ_BYTES_MAX: usize = 1024 * 1024;
/// Bytes one file-system write over the client protocol carries (a `pando mount` writes its buffer back in these).
pub const FS_REMOTE_WRITE_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Extents one file-system write over the client protocol carries (each costs up to
/// [`FS_EXTENT_ENCODED_BYTES_MAX`] beside its bytes, so many tiny ones cannot outgrow a frame).
pub const FS_REMOTE_WRITE_EXTENTS_MAX: usize = 1024;
/// What one extent's offset and length take encoded, at most (two varints).
pub const FS_EXTENT_ENCODED_BYTES_MAX: usize = 16;
/// Supplementary groups a file-system caller names (NFS's `AUTH_SYS` carries 16; a mount passes the first this
/// many of a process's groups). Every command carries them into the log.
pub const FS_CALLER_GROUPS_MAX: usize = 64;
const _: () = assert!(
    FS_REMOTE_WRITE_BYTES_MAX
        + FS_REMOTE_WRITE_EXTENTS_MAX * FS_EXTENT_ENCODED_BYTES_MAX
        + FS_CALLER_GROUPS_MAX * 5
        + 4096
        <= FRAME_SIZE_BYTES_MAX
);
const _: () = assert!(FS_XATTR_VALUE_BYTES_MAX <= FS_XATTR_TOTAL_BYTES_MAX);
const _: () = assert!((FS_INLINE_BYTES_MAX as u64) < FS_CHUNK_BYTES);
const _: () = assert!(FS_INLINE_BYTES_MAX + 4 * 1024 <= PROPOSAL_BYTES_MAX);
const _: () = assert!(FS_XATTR_VALUE_BYTES_MAX + 4 * 1024 <= PROPOSAL_BYTES_MAX);
const _: () = assert!(FS_FILE_BYTES_MAX / FS_CHUNK_BYTES <= u32::MAX as u64);

// A sealed write is one proposal, and the largest value fits one with its key, a check of the old value beside it.
const _: () = assert!(PLUGIN_SEALED_WRITE_BYTES_MAX <= WRITE_PAYLOAD_BYTES_MAX);
const _: () = assert!(PLUGIN_SEALED_WRITE_BYTES_MAX >= 2 * (KEY_SIZE_BYTES_MAX + VALUE_SIZE_BYTES_MAX));
const _: () = assert!(PLUGIN_SEALED_BYTES_MAX >= (KEY_SIZE_BYTES_MAX + VALUE_SIZE_BYTES_MAX) as u64);
