//! Signed changes (issue 16): with the control plane's key pinned (`Config::signing_key`), a
//! change or sync reply counts only with a valid ed25519 signature of its body in the
//! `nebula-signature` header (`nebula_protocol::signing`). A broker login alone — a leaked
//! device credential, or an administrator's — can then deliver messages, but not make the
//! agent act on one the control plane did not sign (a signed one delivered again is dropped
//! by the version order, `crate::state`).

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use nebula_protocol::signing::{self, PUBLIC_KEY_LEN, SIGNATURE_HEADER};
use nebula_protocol::{Name, SyncTarget};
use ring::signature::{ED25519, UnparsedPublicKey};

/// Why a message does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsigned {
    Missing,
    Invalid,
}

impl std::fmt::Display for Unsigned {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Missing => "no signature",
            Self::Invalid => "a signature that does not verify with the pinned key",
        })
    }
}

/// Whether a change with `body` and `properties` may be acted on: always without a pinned
/// key, else only with its signature.
pub fn check(
    key: Option<&[u8; PUBLIC_KEY_LEN]>,
    body: &[u8],
    properties: &BasicProperties,
) -> Result<(), Unsigned> {
    check_signed(key, &signing::signed_bytes(body), properties)
}

/// Whether a sync reply with `body` and `properties` answers this device's request for
/// `target`: the control plane signs a reply for the device and target the request named.
pub fn check_reply(
    key: Option<&[u8; PUBLIC_KEY_LEN]>,
    body: &[u8],
    device_id: &Name,
    target: &SyncTarget,
    properties: &BasicProperties,
) -> Result<(), Unsigned> {
    check_signed(
        key,
        &signing::signed_reply_bytes(body, device_id, target),
        properties,
    )
}

fn check_signed(
    key: Option<&[u8; PUBLIC_KEY_LEN]>,
    signed: &[u8],
    properties: &BasicProperties,
) -> Result<(), Unsigned> {
    let Some(key) = key else {
        return Ok(());
    };
    let signature = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(SIGNATURE_HEADER))
        .and_then(|value| match value {
            AMQPValue::LongString(bytes) => Some(bytes.as_bytes()),
            AMQPValue::ByteArray(bytes) => Some(bytes.as_slice()),
            _ => None,
        })
        .ok_or(Unsigned::Missing)?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(signed, signature)
        .map_err(|_| Unsigned::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key_pair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate");
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse")
    }

    fn public(pair: &Ed25519KeyPair) -> [u8; 32] {
        pair.public_key().as_ref().try_into().expect("32 bytes")
    }

    fn with_signature(signature: &[u8]) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            SIGNATURE_HEADER.into(),
            AMQPValue::LongString(signature.to_vec().into()),
        );
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn a_reply_counts_only_for_the_device_and_target_it_was_signed_for() {
        let signer = key_pair();
        let key = public(&signer);
        let name = |text: &str| Name::new(text).expect("name");
        let edge = SyncTarget::DeviceGroup(name("edge"));
        let signature = signer.sign(&signing::signed_reply_bytes(b"reply", &name("pi"), &edge));
        let signed = with_signature(signature.as_ref());
        assert_eq!(
            check_reply(Some(&key), b"reply", &name("pi"), &edge, &signed),
            Ok(())
        );
        // Another device's, another target's, or a change's signature of the same body.
        assert_eq!(
            check_reply(Some(&key), b"reply", &name("pi2"), &edge, &signed),
            Err(Unsigned::Invalid)
        );
        let lab = SyncTarget::DeviceGroup(name("lab"));
        assert_eq!(
            check_reply(Some(&key), b"reply", &name("pi"), &lab, &signed),
            Err(Unsigned::Invalid)
        );
        let change = with_signature(signer.sign(&signing::signed_bytes(b"reply")).as_ref());
        assert_eq!(
            check_reply(Some(&key), b"reply", &name("pi"), &edge, &change),
            Err(Unsigned::Invalid)
        );
    }

    #[test]
    fn without_a_pinned_key_everything_counts() {
        assert_eq!(check(None, b"body", &BasicProperties::default()), Ok(()));
    }

    #[test]
    fn with_a_pinned_key_only_a_signature_of_that_key_over_that_body_counts() {
        let signer = key_pair();
        let key = public(&signer);
        let signature = signer.sign(&signing::signed_bytes(b"body"));
        let signed = with_signature(signature.as_ref());
        assert_eq!(check(Some(&key), b"body", &signed), Ok(()));
        assert_eq!(check(Some(&key), b"bodY", &signed), Err(Unsigned::Invalid));
        assert_eq!(
            check(Some(&key), b"body", &BasicProperties::default()),
            Err(Unsigned::Missing)
        );
        // Another key's signature, a truncated one, a signature of the bare body.
        let other = key_pair().sign(&signing::signed_bytes(b"body"));
        assert_eq!(
            check(Some(&key), b"body", &with_signature(other.as_ref())),
            Err(Unsigned::Invalid)
        );
        assert_eq!(
            check(
                Some(&key),
                b"body",
                &with_signature(&signature.as_ref()[..63])
            ),
            Err(Unsigned::Invalid)
        );
        let bare = signer.sign(b"body");
        assert_eq!(
            check(Some(&key), b"body", &with_signature(bare.as_ref())),
            Err(Unsigned::Invalid)
        );
        // A header of another type is no signature.
        let mut headers = FieldTable::default();
        headers.insert(SIGNATURE_HEADER.into(), AMQPValue::Boolean(true));
        assert_eq!(
            check(
                Some(&key),
                b"body",
                &BasicProperties::default().with_headers(headers)
            ),
            Err(Unsigned::Missing)
        );
    }
}
