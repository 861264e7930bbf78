//! The log's files against a model, on the simulated disk: what was synced survives every crash, what was not comes
//! back as a prefix at most, truncations and purges hold through crashes, and torn tails are cut.

use std::sync::Arc;

use openraft::CommittedLeaderId;

use super::{Wal, WalDir};
use crate::raft::type_config::LogId;
use crate::seeded_rng::SeededRng;
use crate::storage::SimDisk;

const SMALL_SEGMENTS: u64 = 600;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// An entry's bytes say which entry it is, so a read of the wrong record shows.
fn payload(log_id: &LogId) -> Vec<u8> {
    let mut bytes = format!("entry {} of term {}:", log_id.index, log_id.leader_id.term).into_bytes();
    bytes.resize(bytes.len() + (log_id.index as usize * 7) % 90, b'x');
    bytes
}

fn open(disk: &SimDisk, last_purged: Option<LogId>) -> Wal {
    Wal::open(Arc::new(disk.clone()) as Arc<dyn WalDir>, last_purged, SMALL_SEGMENTS).expect("the log opens")
}

fn sync(wal: &mut Wal) {
    for file in wal.take_dirty() {
        file.sync().unwrap();
    }
}

fn read_all(wal: &Wal) -> Vec<LogId> {
    let entries = wal.read(0, u64::MAX).unwrap();
    for (log_id, bytes) in &entries {
        assert_eq!(bytes, &payload(log_id), "entry {log_id} reads back as written");
    }
    entries.into_iter().map(|(log_id, _)| log_id).collect()
}

#[test]
fn entries_read_back_across_segments_and_after_reopening() {
    let disk = SimDisk::new();
    let mut wal = open(&disk, None);
    let ids: Vec<LogId> = (0..40).map(|index| log_id(1 + index / 15, index)).collect();
    for chunk in ids.chunks(7) {
        wal.append(&chunk.iter().map(|id| (*id, payload(id))).collect::<Vec<_>>()).unwrap();
    }
    assert!(wal.segments.len() > 3, "small segments roll: {wal:?}");
    assert_eq!(read_all(&wal), ids);
    assert_eq!(wal.read(10, 13).unwrap().iter().map(|(id, _)| id.index).collect::<Vec<_>>(), [10, 11, 12]);
    sync(&mut wal);
    drop(wal);
    let wal = open(&disk, None);
    assert_eq!(read_all(&wal), ids);
    assert_eq!(wal.last_log_id(), ids.last().copied());
}

#[test]
fn an_append_out_of_order_is_refused_and_changes_nothing() {
    let disk = SimDisk::new();
    let mut wal = open(&disk, None);
    wal.append(&[(log_id(1, 0), payload(&log_id(1, 0)))]).unwrap();
    let error = wal.append(&[(log_id(1, 2), payload(&log_id(1, 2)))]).unwrap_err();
    assert!(error.to_string().contains("entry 1 is next"), "{error}");
    assert_eq!(read_all(&wal), [log_id(1, 0)]);
}

#[test]
fn a_purge_past_the_end_restarts_the_log_after_the_purge_point() {
    let disk = SimDisk::new();
    let mut wal = open(&disk, None);
    let ids: Vec<LogId> = (0..5).map(|index| log_id(1, index)).collect();
    wal.append(&ids.iter().map(|id| (*id, payload(id))).collect::<Vec<_>>()).unwrap();
    sync(&mut wal);
    // A snapshot up to 20 was installed: the log is purged past its end and continues at 21.
    wal.purge(log_id(2, 20)).unwrap();
    assert!(wal.is_empty() && wal.next_index() == 21 && wal.last_log_id() == Some(log_id(2, 20)));
    let next = [log_id(2, 21), log_id(2, 22)];
    wal.append(&next.iter().map(|id| (*id, payload(id))).collect::<Vec<_>>()).unwrap();
    sync(&mut wal);
    // The purge's removals were never made durable: the old segment comes back, and is skipped.
    disk.crash(|| false);
    let wal = open(&disk, Some(log_id(2, 20)));
    assert_eq!(read_all(&wal), next);
}

#[test]
fn a_torn_tail_is_cut_and_what_was_written_after_it_never_comes_back() {
    let disk = SimDisk::new();
    let mut wal = open(&disk, None);
    let ids: Vec<LogId> = (0..6).map(|index| log_id(1, index)).collect();
    wal.append(&ids[..3].iter().map(|id| (*id, payload(id))).collect::<Vec<_>>()).unwrap();
    sync(&mut wal);
    for id in &ids[3..] {
        wal.append(&[(*id, payload(id))]).unwrap();
    }
    // Of the three unsynced writes, the first is lost and the later two survive: a gap, so neither is kept.
    let mut kept = [false, true, true].into_iter();
    disk.crash(move || kept.next().unwrap_or(true));
    let mut wal = open(&disk, None);
    assert_eq!(read_all(&wal), &ids[..3]);
    // New entries written where the torn tail was read back whole, with nothing stale after them.
    let replacement = [log_id(2, 3)];
    wal.append(&replacement.iter().map(|id| (*id, payload(id))).collect::<Vec<_>>()).unwrap();
    sync(&mut wal);
    disk.crash(|| true);
    let wal = open(&disk, None);
    assert_eq!(read_all(&wal), [ids[0], ids[1], ids[2], replacement[0]]);
}

/// The model: the entries written (in order, from the purge point), how many of them are durable, and the durable
/// purge point. After any crash the log must hold a prefix of what was written that is at least the durable part.
#[test]
fn crashes_keep_every_synced_entry_and_at_most_a_prefix_of_the_rest() {
    let mut crashes = 0;
    for seed in 1..=60u64 {
        let mut rng = SeededRng::new(seed);
        let disk = SimDisk::new();
        let mut wal = open(&disk, None);
        let mut written: Vec<LogId> = Vec::new();
        let mut durable = 0usize;
        let mut purged: Option<LogId> = None;
        let mut term = 1;
        for step in 0..120 {
            let context = format!("seed {seed} step {step}");
            match rng.below(100) {
                0..=49 => {
                    if rng.per_mille(100) {
                        term += 1;
                    }
                    let next = wal.next_index();
                    let batch: Vec<LogId> = (0..1 + rng.below(6)).map(|offset| log_id(term, next + offset)).collect();
                    wal.append(&batch.iter().map(|id| (*id, payload(id))).collect::<Vec<_>>()).unwrap();
                    written.extend(batch);
                }
                50..=69 => {
                    sync(&mut wal);
                    durable = written.len();
                }
                70..=79 if !written.is_empty() => {
                    // A conflict: a new leader's entries replace the tail (truncations are durable at once).
                    let keep = rng.below(written.len() as u64 + 1) as usize;
                    wal.truncate(written.first().map_or(0, |id| id.index) + keep as u64).unwrap();
                    written.truncate(keep);
                    durable = durable.min(keep);
                    term += 1;
                }
                80..=84 if durable > 0 => {
                    // A purge up to a durable entry: its point is durable first (in the database, here the model).
                    let upto = written[rng.below(durable as u64) as usize];
                    purged = Some(upto);
                    wal.purge(upto).unwrap();
                    let gone = written.iter().take_while(|id| id.index <= upto.index).count();
                    written.drain(..gone);
                    durable -= gone;
                }
                _ => {
                    let mut coin = SeededRng::new(seed * 1_000 + step);
                    disk.crash(move || coin.per_mille(500));
                    crashes += 1;
                    drop(wal);
                    wal = open(&disk, purged);
                    let recovered = read_all(&wal);
                    assert!(
                        recovered.len() >= durable,
                        "{context}: {durable} durable entries, {recovered:?} recovered"
                    );
                    assert_eq!(
                        recovered,
                        written[..recovered.len()],
                        "{context}: a prefix of what was written: {written:?}"
                    );
                    written.truncate(recovered.len());
                    durable = written.len();
                    term += 1;
                }
            }
            assert_eq!(wal.last_log_id(), written.last().copied().or(purged), "{context}");
        }
    }
    assert!(crashes > 100, "{crashes} crashes");
}

/// Power fails at every point of an append, a sync, a truncation and a segment's start in turn: the log opens again
/// and holds a prefix of what was written, with everything synced before the operation.
#[test]
fn a_crash_at_any_operation_leaves_a_log_that_opens() {
    for point in 0..30u64 {
        let disk = SimDisk::new();
        let mut wal = open(&disk, None);
        let first: Vec<LogId> = (0..8).map(|index| log_id(1, index)).collect();
        wal.append(&first.iter().map(|id| (*id, payload(id))).collect::<Vec<_>>()).unwrap();
        sync(&mut wal);
        disk.crash_after(point, 0x5eed ^ point);
        let work = (|| {
            wal.truncate(5)?;
            let replacement: Vec<LogId> = (5..20).map(|index| log_id(2, index)).collect();
            wal.append(&replacement.iter().map(|id| (*id, payload(id))).collect::<Vec<_>>())?;
            for file in wal.take_dirty() {
                file.sync()?;
            }
            std::io::Result::Ok(())
        })();
        if work.is_ok() {
            disk.crash(|| false);
        }
        drop(wal);
        let wal = open(&disk, None);
        let recovered = read_all(&wal);
        assert!(recovered.len() >= 5, "point {point}: the entries before the truncation survive: {recovered:?}");
        let expected: Vec<LogId> = first[..5].iter().copied().chain((5..20).map(|index| log_id(2, index))).collect();
        let old_tail = first.clone();
        assert!(
            recovered == expected[..recovered.len()] || recovered == old_tail[..recovered.len()],
            "point {point}: {recovered:?}"
        );
        if work.is_ok() {
            assert_eq!(recovered, expected, "point {point}: a synced append survives");
        }
    }
}
