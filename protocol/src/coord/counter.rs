//! Counters: signed (i64) or unsigned (u64), fixed at creation. Arithmetic that would overflow, or take an unsigned
//! counter below zero, is refused with `CONFLICT` and changes nothing.

use serde::{Deserialize, Serialize};

use super::keys::{self, with};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::StorageFault;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterValue {
    Signed(i64),
    Unsigned(u64),
}

impl CounterValue {
    /// Zero of the same kind.
    pub fn zero_like(&self) -> CounterValue {
        match self {
            CounterValue::Signed(_) => CounterValue::Signed(0),
            CounterValue::Unsigned(_) => CounterValue::Unsigned(0),
        }
    }

    /// `self + delta`, or `None` on overflow (or an unsigned result below zero).
    pub fn checked_add(&self, delta: i64) -> Option<CounterValue> {
        match self {
            CounterValue::Signed(value) => value.checked_add(delta).map(CounterValue::Signed),
            CounterValue::Unsigned(value) => value.checked_add_signed(delta).map(CounterValue::Unsigned),
        }
    }
}

impl std::fmt::Display for CounterValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CounterValue::Signed(value) => write!(f, "{value}"),
            CounterValue::Unsigned(value) => write!(f, "{value}"),
        }
    }
}

pub(crate) fn same_kind(a: &CounterValue, b: &CounterValue) -> Result<(), WireError> {
    if std::mem::discriminant(a) != std::mem::discriminant(b) {
        return Err(WireError::invalid("a counter is either signed or unsigned; both values must be of one kind"));
    }
    Ok(())
}

fn counter_key(name: &[u8]) -> Vec<u8> {
    with(keys::COUNTER, name)
}

fn kind_conflict(current: &CounterValue) -> WireError {
    let kind = match current {
        CounterValue::Signed(_) => "signed",
        CounterValue::Unsigned(_) => "unsigned",
    };
    WireError::new(ErrorCode::Conflict, format!("the counter is {kind}"))
}

pub(crate) fn add(
    store: &mut impl CoordWrite,
    name: &[u8],
    delta: i64,
    initial: &CounterValue,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let current: CounterValue = load(store, &counter_key(name))?.unwrap_or_else(|| initial.zero_like());
    if same_kind(&current, initial).is_err() {
        return Ok(Err(kind_conflict(&current)));
    }
    let Some(next) = current.checked_add(delta) else {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("adding {delta} to {current} would leave the counter's range"),
        )));
    };
    save(store, &counter_key(name), &next)?;
    store.emit(CoordEvent::CounterChanged { name: Bytes::from(name.to_vec()), value: next });
    Ok(Ok(CoordResponse::Counter { value: Some(next) }))
}

pub(crate) fn set(
    store: &mut impl CoordWrite,
    name: &[u8],
    value: &CounterValue,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if let Some(current) = load::<CounterValue>(store, &counter_key(name))?
        && same_kind(&current, value).is_err()
    {
        return Ok(Err(kind_conflict(&current)));
    }
    save(store, &counter_key(name), value)?;
    store.emit(CoordEvent::CounterChanged { name: Bytes::from(name.to_vec()), value: *value });
    Ok(Ok(CoordResponse::Counter { value: Some(*value) }))
}

pub(crate) fn cas(
    store: &mut impl CoordWrite,
    name: &[u8],
    expected: &CounterValue,
    value: &CounterValue,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let current: CounterValue = load(store, &counter_key(name))?.unwrap_or_else(|| expected.zero_like());
    if same_kind(&current, expected).is_err() {
        return Ok(Err(kind_conflict(&current)));
    }
    if current != *expected {
        return Ok(Err(WireError::new(ErrorCode::Conflict, format!("the counter is {current}, not {expected}"))));
    }
    save(store, &counter_key(name), value)?;
    store.emit(CoordEvent::CounterChanged { name: Bytes::from(name.to_vec()), value: *value });
    Ok(Ok(CoordResponse::Counter { value: Some(*value) }))
}

pub(crate) fn get(store: &impl CoordRead, name: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    Ok(Ok(CoordResponse::Counter { value: load(store, &counter_key(name))? }))
}
