//! The control plane's signing key (issue 16, signed changes): `NEBULA_SIGNING_KEY_FILE`, an
//! ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`). Every instance of
//! a fleet is given the same key. With it, every change and sync reply carries a signature in
//! the `nebula-signature` header (`nebula_protocol::signing`), and enrolment and minted
//! credentials hand devices its public key to pin.

use nebula_protocol::signing::{self, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use ring::signature::{Ed25519KeyPair, KeyPair};

pub struct Signer {
    key_pair: Ed25519KeyPair,
    public_key: String,
}

impl std::fmt::Debug for Signer {
    // Never the private key.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Signer")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads and checks the key file.
    pub fn from_file(path: &str) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|error| format!("{path}: {error}"))?;
        Self::from_pem(&pem).map_err(|reason| format!("{path}: {reason}"))
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|error| {
            format!(
                "not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----; make one with `openssl genpkey -algorithm ed25519`): {error}"
            )
        })?;
        // OpenSSL writes PKCS#8 v1 (no public key inside): accepted, the key is checked by
        // deriving its public half.
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|error| format!("not an ed25519 private key: {error}"))?;
        let public: [u8; PUBLIC_KEY_LEN] = key_pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "an ed25519 public key is 32 bytes".to_string())?;
        Ok(Self {
            key_pair,
            public_key: signing::public_key_hex(&public),
        })
    }

    /// The signature of a message body, for its `nebula-signature` header.
    pub fn sign(&self, body: &[u8]) -> [u8; SIGNATURE_LEN] {
        let signature = self.key_pair.sign(&signing::signed_bytes(body));
        let mut bytes = [0u8; SIGNATURE_LEN];
        bytes.copy_from_slice(signature.as_ref());
        bytes
    }

    /// The signature of a sync reply's body, bound to the request's device and target.
    pub fn sign_reply(
        &self,
        body: &[u8],
        device_id: &nebula_protocol::Name,
        target: &nebula_protocol::SyncTarget,
    ) -> [u8; SIGNATURE_LEN] {
        let signature = self
            .key_pair
            .sign(&signing::signed_reply_bytes(body, device_id, target));
        let mut bytes = [0u8; SIGNATURE_LEN];
        bytes.copy_from_slice(signature.as_ref());
        bytes
    }

    /// The public key devices pin, as 64 hex digits.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }
}

/// `properties` with a change's signature (of `body`) in its headers, when the instance signs.
pub fn signed(
    signer: Option<&Signer>,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> lapin::BasicProperties {
    match signer {
        Some(signer) => with_signature(properties, signer.sign(body)),
        None => properties,
    }
}

/// `properties` with a sync reply's signature (of `body`, for `request`), when the instance signs.
pub fn signed_reply(
    signer: Option<&Signer>,
    body: &[u8],
    request: &nebula_protocol::SyncRequest,
    properties: lapin::BasicProperties,
) -> lapin::BasicProperties {
    match signer {
        Some(signer) => with_signature(
            properties,
            signer.sign_reply(body, &request.device_id, &request.target),
        ),
        None => properties,
    }
}

fn with_signature(
    properties: lapin::BasicProperties,
    signature: [u8; SIGNATURE_LEN],
) -> lapin::BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        signing::SIGNATURE_HEADER.into(),
        lapin::types::AMQPValue::LongString(signature.to_vec().into()),
    );
    properties.with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ED25519, UnparsedPublicKey};

    /// `openssl genpkey -algorithm ed25519` (PKCS#8 v1), a key for these tests only.
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEILA6hBwyO2WdLmRr1Is0Wh79BzXpqWMo6rpOIZMXL0Hy\n-----END PRIVATE KEY-----\n";

    #[test]
    fn a_signature_verifies_with_the_public_key_and_only_over_its_body() {
        let signer = Signer::from_pem(TEST_KEY.as_bytes()).expect("key");
        let public = signing::parse_public_key(signer.public_key()).expect("hex");
        let signature = signer.sign(b"body");
        let verifier = UnparsedPublicKey::new(&ED25519, public);
        assert!(
            verifier
                .verify(&signing::signed_bytes(b"body"), &signature)
                .is_ok()
        );
        assert!(
            verifier
                .verify(&signing::signed_bytes(b"bodY"), &signature)
                .is_err()
        );
        // Over the bare body (no context), it does not verify.
        assert!(verifier.verify(b"body", &signature).is_err());
        assert!(!format!("{signer:?}").contains("MC4C"));
    }

    #[test]
    fn anything_but_an_ed25519_pkcs8_key_is_refused_with_how_to_make_one() {
        for bad in [
            "",
            "not a key",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let error = Signer::from_pem(bad.as_bytes()).expect_err(bad);
            assert!(error.contains("genpkey"), "{error}");
        }
        let truncated =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHo5\n-----END PRIVATE KEY-----\n";
        assert!(Signer::from_pem(truncated.as_bytes()).is_err());
    }

    #[test]
    fn signed_properties_carry_the_header_and_keep_the_rest() {
        let signer = Signer::from_pem(TEST_KEY.as_bytes()).expect("key");
        let properties = lapin::BasicProperties::default().with_correlation_id("c".into());
        let signed_properties = signed(Some(&signer), b"x", properties.clone());
        assert_eq!(
            signed_properties.correlation_id(),
            properties.correlation_id()
        );
        let headers = signed_properties.headers().clone().expect("headers");
        match headers.inner().get(signing::SIGNATURE_HEADER) {
            Some(lapin::types::AMQPValue::LongString(value)) => {
                assert_eq!(value.as_bytes(), signer.sign(b"x"));
            }
            other => panic!("{other:?}"),
        }
        assert!(signed(None, b"x", properties).headers().is_none());
    }
}
