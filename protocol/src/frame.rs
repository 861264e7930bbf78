//! Framing: a 4-byte big-endian length, then a MessagePack body (named fields, enums tagged by name).
//!
//! Sans-IO: the node and the client read the prefix, ask [`body_length`] whether to read on, then decode the body.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::limits::FRAME_SIZE_BYTES_MAX;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge { length_bytes: usize, limit_bytes: usize },
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("cannot decode message: {0}")]
    Decode(String),
}

/// Encodes `message` as one frame (prefix included) in a single allocation.
///
/// ```
/// use pando_protocol::frame;
/// let bytes = frame::encode(&"hi").unwrap();
/// assert_eq!(frame::body_length(bytes[..4].try_into().unwrap()), Ok(bytes.len() - 4));
/// assert_eq!(frame::decode::<String>(&bytes[4..]).unwrap(), "hi");
/// ```
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    encode_within(message, FRAME_SIZE_BYTES_MAX)
}

/// [`encode`] with another size limit (Raft traffic between members carries larger frames than clients may send).
pub fn encode_within<T: Serialize>(message: &T, limit_bytes: usize) -> Result<Vec<u8>, FrameError> {
    assert!(limit_bytes <= u32::MAX as usize, "frame limits fit the 4-byte prefix");
    let mut out = vec![0u8; LENGTH_PREFIX_BYTES];
    rmp_serde::encode::write_named(&mut out, message).map_err(|error| FrameError::Encode(error.to_string()))?;
    let length_bytes = out.len() - LENGTH_PREFIX_BYTES;
    if length_bytes > limit_bytes {
        return Err(FrameError::TooLarge { length_bytes, limit_bytes });
    }
    // The check above bounds the length below u32::MAX.
    out[..LENGTH_PREFIX_BYTES].copy_from_slice(&(length_bytes as u32).to_be_bytes());
    Ok(out)
}

/// The body length announced by a prefix, refused when over the limit.
pub fn body_length(prefix: [u8; LENGTH_PREFIX_BYTES]) -> Result<usize, FrameError> {
    body_length_within(prefix, FRAME_SIZE_BYTES_MAX)
}

/// [`body_length`] with another size limit.
pub fn body_length_within(prefix: [u8; LENGTH_PREFIX_BYTES], limit_bytes: usize) -> Result<usize, FrameError> {
    let length_bytes = u32::from_be_bytes(prefix) as usize;
    if length_bytes > limit_bytes {
        return Err(FrameError::TooLarge { length_bytes, limit_bytes });
    }
    Ok(length_bytes)
}

/// Decodes a frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    rmp_serde::from_slice(body).map_err(|error| FrameError::Decode(error.to_string()))
}

#[cfg(test)]
mod tests;
