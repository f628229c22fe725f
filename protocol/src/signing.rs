//! Signed changes (issue 16): the control plane signs every change and sync reply it sends
//! with its ed25519 key, in the AMQP header [`SIGNATURE_HEADER`] (64 bytes), over
//! [`signed_bytes`] of a change's body, and over [`signed_reply_bytes`] of a sync reply: its
//! body bound to the device and target the request named, which the body alone does not
//! (a "not found" names neither), so that a reply the control plane gave to one request
//! cannot be passed off as the answer to another. An agent that pinned the public key (at enrolment,
//! or `NEBULA_SIGNING_KEY`) drops whatever is unsigned or badly signed, so a broker login
//! alone — even an administrator's — cannot make it act on a message the control plane did
//! not sign (a re-delivered signed change is dropped by the agent's version order). A header, not the body: agents
//! without a pinned key, and those of the previous release, read the body as before.
//! No crypto here (the protocol crate does no I/O and links no crypto library): the control
//! plane signs and the agent verifies with ring.

use crate::{Name, SyncTarget};

/// The AMQP header that carries the signature.
pub const SIGNATURE_HEADER: &str = "nebula-signature";
/// An ed25519 signature's length.
pub const SIGNATURE_LEN: usize = 64;
/// An ed25519 public key's length.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Prepended to the body before signing: a signature over a Nebula message can never be
/// passed off as one over anything else made with the same key.
const CONTEXT: &[u8] = b"nebula signed message v1\0";

/// What is signed: the context, then the message body (the envelope as sent).
pub fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(CONTEXT.len() + body.len());
    bytes.extend_from_slice(CONTEXT);
    bytes.extend_from_slice(body);
    bytes
}

/// Prepended to a sync reply's signed bytes: a change's signature never passes for a reply's.
const REPLY_CONTEXT: &[u8] = b"nebula signed sync reply v1\0";

/// What is signed of a sync reply: the context, the device and target of the request it
/// answers (names hold no NUL), then the reply's body.
pub fn signed_reply_bytes(body: &[u8], device_id: &Name, target: &SyncTarget) -> Vec<u8> {
    let (kind, name) = match target {
        SyncTarget::App(app) => ("app", app),
        SyncTarget::DeviceGroup(group) => ("device_group", group),
    };
    let mut bytes = Vec::with_capacity(REPLY_CONTEXT.len() + 160 + body.len());
    for part in [
        REPLY_CONTEXT,
        device_id.as_str().as_bytes(),
        b"\0",
        kind.as_bytes(),
        b"\0",
        name.as_str().as_bytes(),
        b"\0",
        body,
    ] {
        bytes.extend_from_slice(part);
    }
    bytes
}

/// A public key as written in configuration and API answers: 64 hex digits.
pub fn public_key_hex(key: &[u8; PUBLIC_KEY_LEN]) -> String {
    key.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Parses [`public_key_hex`]'s form.
pub fn parse_public_key(text: &str) -> Result<[u8; PUBLIC_KEY_LEN], String> {
    let text = text.trim();
    if text.len() != PUBLIC_KEY_LEN * 2 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(format!(
            "expected an ed25519 public key as {} hex digits, got {} characters",
            PUBLIC_KEY_LEN * 2,
            text.len()
        ));
    }
    let mut key = [0u8; PUBLIC_KEY_LEN];
    for (index, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16)
            .map_err(|error| error.to_string())?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_round_trip_through_hex() {
        let key: [u8; 32] = core::array::from_fn(|index| (index * 7) as u8);
        let text = public_key_hex(&key);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_public_key(&format!(" {text}\n")), Ok(key));
        assert_eq!(parse_public_key(&text.to_uppercase()), Ok(key));
        for bad in [
            "",
            &text[..62],
            &format!("{text}00"),
            &text.replace('0', "g"),
        ] {
            assert!(parse_public_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_replys_signed_bytes_bind_the_device_and_the_target() {
        let name = |text: &str| Name::new(text).expect("name");
        let group = SyncTarget::DeviceGroup(name("edge"));
        let bytes = signed_reply_bytes(b"body", &name("pi"), &group);
        assert_ne!(bytes, signed_reply_bytes(b"body", &name("pi2"), &group));
        assert_ne!(
            bytes,
            signed_reply_bytes(b"body", &name("pi"), &SyncTarget::App(name("edge")))
        );
        assert_ne!(
            bytes,
            signed_reply_bytes(
                b"body",
                &name("pi"),
                &SyncTarget::DeviceGroup(name("edge2"))
            )
        );
        assert!(!bytes.starts_with(&signed_bytes(b"")));
    }

    #[test]
    fn the_signed_bytes_are_the_context_then_the_body() {
        let bytes = signed_bytes(b"NB\x02body");
        assert!(bytes.starts_with(b"nebula signed message v1\0"));
        assert!(bytes.ends_with(b"NB\x02body"));
        assert_ne!(signed_bytes(b"a"), signed_bytes(b"b"));
    }
}
