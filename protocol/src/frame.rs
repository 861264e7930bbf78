//! Framing: a 4-byte big-endian length, then a MessagePack body (named fields, enums tagged by name).
//!
//! Sans-IO: the node and the client read the prefix, ask [`body_length`] whether to read on, then decode the body.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::Response;
use crate::error::WireError;
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

/// Encodes a response body once, to send it to many callers with [`encode_response_around`] (a watch frame that
/// every watcher of a prefix gets alike).
pub fn encode_response_body(body: &Result<Response, WireError>) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    rmp_serde::encode::write_named(&mut out, body).map_err(|error| FrameError::Encode(error.to_string()))?;
    Ok(out)
}

/// The frame [`encode`] makes of `ResponseEnvelope { request_id, body }`, around a body encoded once with
/// [`encode_response_body`]: the envelope's two fields written by hand (a map of two, `request_id` as the shortest
/// unsigned integer, then `body`), the body's bytes copied. A test holds both encodings equal.
pub fn encode_response_around(request_id: u64, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + 24 + body.len());
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    out.push(0x82);
    out.push(0xa0 | b"request_id".len() as u8);
    out.extend_from_slice(b"request_id");
    match request_id {
        0..=0x7f => out.push(request_id as u8),
        0x80..=0xff => out.extend_from_slice(&[0xcc, request_id as u8]),
        0x100..=0xffff => {
            out.push(0xcd);
            out.extend_from_slice(&(request_id as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend_from_slice(&(request_id as u32).to_be_bytes());
        }
        _ => {
            out.push(0xcf);
            out.extend_from_slice(&request_id.to_be_bytes());
        }
    }
    out.push(0xa0 | b"body".len() as u8);
    out.extend_from_slice(b"body");
    out.extend_from_slice(body);
    let length_bytes = out.len() - LENGTH_PREFIX_BYTES;
    if length_bytes > FRAME_SIZE_BYTES_MAX {
        return Err(FrameError::TooLarge { length_bytes, limit_bytes: FRAME_SIZE_BYTES_MAX });
    }
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
