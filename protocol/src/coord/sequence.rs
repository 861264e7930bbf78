//! Sequences: gap-free, strictly increasing numbers starting at 1, handed out singly or in reserved ranges.

use super::keys::{self, with};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::StorageFault;

/// Most numbers one reservation takes.
pub const SEQUENCE_RESERVE_COUNT_MAX: u32 = 1_000_000;

pub(crate) fn validate_count(count: u32) -> Result<(), WireError> {
    if count == 0 || count > SEQUENCE_RESERVE_COUNT_MAX {
        return Err(WireError::invalid(format!(
            "a reservation takes between 1 and {SEQUENCE_RESERVE_COUNT_MAX} numbers, got {count}"
        )));
    }
    Ok(())
}

/// The number sequence `name` hands out next.
pub(crate) fn peek(store: &impl CoordRead, name: &[u8]) -> Result<u64, StorageFault> {
    match store.coord_get(&with(keys::SEQUENCE, name))? {
        Some(bytes) => Ok(u64::from_be_bytes(
            bytes.as_slice().try_into().map_err(|_| StorageFault("sequence row is not 8 bytes".into()))?,
        )),
        None => Ok(1),
    }
}

pub(crate) fn next(
    store: &mut impl CoordWrite,
    name: &[u8],
    count: u32,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let key = with(keys::SEQUENCE, name);
    let first = peek(store, name)?;
    let Some(after) = first.checked_add(u64::from(count)) else {
        return Ok(Err(WireError::new(ErrorCode::Conflict, "the sequence is exhausted")));
    };
    store.coord_put(&key, &after.to_be_bytes())?;
    store.emit(CoordEvent::SequenceAdvanced { name: Bytes::from(name.to_vec()), next: after });
    Ok(Ok(CoordResponse::Sequence { first, count }))
}
