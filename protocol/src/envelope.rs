//! The envelope: `NB`, one protocol version byte, then the postcard encoding of a [`Message`].
//!
//! The magic bytes let a receiver tell a Nebula message from anything else that reached its
//! queue; the version byte lets a future incompatible format coexist during a fleet upgrade.

use crate::message::Message;
use crate::model::ValidationError;

/// The two bytes every envelope starts with.
pub const MAGIC: [u8; 2] = *b"NB";
/// The format this crate writes and reads. Version 2 appended incarnations to every object
/// and delete, and store identities to sync requests and replies; a receiver of version 1
/// rejects version 2 messages as unsupported instead of misreading them (postcard bodies
/// with appended fields inside nested structs are not readable by an older decoder).
pub const PROTOCOL_VERSION: u8 = 2;
/// Bytes before the postcard body.
pub const HEADER_LEN: usize = 3;

/// Why bytes could not be decoded into a valid message. Decoding never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {0} bytes, shorter than the 3-byte header")]
    TooShort(usize),
    #[error("bad magic bytes {0:02x?}, expected \"NB\"")]
    BadMagic([u8; 2]),
    #[error("unsupported protocol version {0}, this build speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u8),
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
}

/// Encodes a message into an envelope.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.push(PROTOCOL_VERSION);
    // Serialising plain data into a Vec cannot fail: postcard only errors on sequences of
    // unknown length (we have none) and on a full fixed buffer (a Vec grows).
    match postcard::to_extend(message, bytes) {
        Ok(bytes) => bytes,
        Err(error) => unreachable!("postcard failed to serialise into a Vec: {error}"),
    }
}

/// Decodes and validates an envelope.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    let magic = [bytes[0], bytes[1]];
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    if bytes[2] != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(bytes[2]));
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(&bytes[HEADER_LEN..])
        .map_err(|error| DecodeError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    message.validate()?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SyncResult;
    use crate::{Name, SyncReply};

    fn reply() -> Message {
        Message::SyncReply(SyncReply {
            correlation_id: "c".into(),
            result: SyncResult::NotFound,
            store_id: crate::StoreId(7),
        })
    }

    #[test]
    fn round_trips() {
        let message = reply();
        let bytes = encode(&message);
        assert_eq!(&bytes[..3], b"NB\x02");
        assert_eq!(decode(&bytes), Ok(message));
    }

    #[test]
    fn rejects_every_kind_of_malformed_input() {
        assert_eq!(decode(b""), Err(DecodeError::TooShort(0)));
        assert_eq!(decode(b"NB"), Err(DecodeError::TooShort(2)));
        assert_eq!(decode(b"XB\x01\x05"), Err(DecodeError::BadMagic(*b"XB")));
        assert_eq!(
            decode(b"NB\x01\x05"),
            Err(DecodeError::UnsupportedVersion(1))
        );
        assert!(matches!(decode(b"NB\x02"), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            decode(b"NB\x02\x63"),
            Err(DecodeError::Malformed(_))
        ));
        let mut trailing = encode(&reply());
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn rejects_invalid_config() {
        let mut app = crate::AppConfig::new(Name::new("web").expect("name"), "nginx");
        app.docker_image = "NOT VALID".into();
        let bytes = encode(&Message::AppChanged(app));
        assert!(matches!(decode(&bytes), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn rejects_invalid_name_inside_body() {
        let good = Message::AppDeleted {
            app_name: Name::new("abc").expect("name"),
            app_id: 1,
            incarnation: 1,
        };
        let mut bytes = encode(&good);
        // The name's bytes follow the variant tag and the length prefix; corrupt one.
        let position = bytes
            .iter()
            .position(|&byte| byte == b'b')
            .expect("name byte");
        bytes[position] = b' ';
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
    }
}
