//! Rate limits: token buckets judged by the log's clock, so every replica agrees on who got through. A bucket holds up
//! to `burst` tokens and refills at `rate_per_s`; its configuration is fixed by its first use (`reset` forgets it).
//! Tokens are kept in thousandths, so slow rates refill smoothly.

use serde::{Deserialize, Serialize};

use super::keys::{self, with};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::StorageFault;

/// Highest rate a bucket may refill at (tokens per second).
pub const RATE_PER_S_MAX: u32 = 1_000_000;
/// Largest burst a bucket may hold.
pub const BURST_MAX: u32 = 1_000_000;
/// Thousandths of a token per token.
const MILLI: u64 = 1_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitInfo {
    pub name: Bytes,
    pub rate_per_s: u32,
    pub burst: u32,
    /// Whole tokens available as of `as_of_ms`.
    pub available: u32,
    /// Log-clock time the answer refers to.
    pub as_of_ms: u64,
    /// When the request was refused: how long until enough tokens refill.
    pub retry_after_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    rate_per_s: u32,
    burst: u32,
    milli_tokens: u64,
    last_ms: u64,
}

impl Bucket {
    fn full(rate_per_s: u32, burst: u32, now: u64) -> Bucket {
        Bucket { rate_per_s, burst, milli_tokens: u64::from(burst) * MILLI, last_ms: now }
    }

    /// Refills up to `now` (a clock that never runs backwards; a stale `now` refills nothing).
    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.last_ms);
        let added = elapsed.saturating_mul(u64::from(self.rate_per_s));
        self.milli_tokens = self.milli_tokens.saturating_add(added).min(u64::from(self.burst) * MILLI);
        self.last_ms = self.last_ms.max(now);
    }

    fn info(&self, name: &[u8], retry_after_ms: Option<u64>) -> RateLimitInfo {
        RateLimitInfo {
            name: Bytes::from(name.to_vec()),
            rate_per_s: self.rate_per_s,
            burst: self.burst,
            available: u32::try_from(self.milli_tokens / MILLI).unwrap_or(u32::MAX),
            as_of_ms: self.last_ms,
            retry_after_ms,
        }
    }
}

pub(crate) fn validate(rate_per_s: u32, burst: u32, count: u32) -> Result<(), WireError> {
    if rate_per_s == 0 || rate_per_s > RATE_PER_S_MAX {
        return Err(WireError::invalid(format!("rate must be between 1 and {RATE_PER_S_MAX} per second")));
    }
    if burst == 0 || burst > BURST_MAX {
        return Err(WireError::invalid(format!("burst must be between 1 and {BURST_MAX}")));
    }
    if count == 0 || count > burst {
        return Err(WireError::invalid(format!("a request takes between 1 and the burst {burst} tokens")));
    }
    Ok(())
}

fn bucket_key(name: &[u8]) -> Vec<u8> {
    with(keys::RATE_LIMIT, name)
}

pub(crate) fn try_acquire(
    store: &mut impl CoordWrite,
    now: u64,
    name: &[u8],
    rate_per_s: u32,
    burst: u32,
    count: u32,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let mut bucket: Bucket = load(store, &bucket_key(name))?.unwrap_or_else(|| Bucket::full(rate_per_s, burst, now));
    if (bucket.rate_per_s, bucket.burst) != (rate_per_s, burst) {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("the limit is {}/s with burst {}; reset it to change it", bucket.rate_per_s, bucket.burst),
        )));
    }
    bucket.refill(now);
    let wanted = u64::from(count) * MILLI;
    if bucket.milli_tokens < wanted {
        let missing = wanted - bucket.milli_tokens;
        let retry_after_ms = missing.div_ceil(u64::from(bucket.rate_per_s));
        // Refused: nothing is written (the refill is a function of time, recomputed on the next use).
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("rate limited: {} tokens available, retry after {retry_after_ms} ms", bucket.milli_tokens / MILLI),
        )));
    }
    bucket.milli_tokens -= wanted;
    save(store, &bucket_key(name), &bucket)?;
    store.emit(CoordEvent::RateLimitTaken { name: Bytes::from(name.to_vec()), count });
    Ok(Ok(CoordResponse::RateLimit { limit: bucket.info(name, None) }))
}

pub(crate) fn reset(
    store: &mut impl CoordWrite,
    name: &[u8],
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if store.coord_delete(&bucket_key(name))? {
        store.emit(CoordEvent::RateLimitReset { name: Bytes::from(name.to_vec()) });
    }
    Ok(Ok(CoordResponse::Released))
}

/// The bucket as of the state machine's clock (an unknown bucket is `NOT_FOUND`).
pub(crate) fn get(store: &impl CoordRead, name: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let Some(mut bucket) = load::<Bucket>(store, &bucket_key(name))? else {
        return Ok(Err(WireError::new(ErrorCode::NotFound, "no rate limit of that name has been used")));
    };
    bucket.refill(super::clock(store)?);
    Ok(Ok(CoordResponse::RateLimit { limit: bucket.info(name, None) }))
}
