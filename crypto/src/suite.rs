//! Cipher suites: one trait, two providers (`intl` and `gm`), chosen once per
//! federation and announced every round.
//!
//! | role | [`Suite::Intl`] | [`Suite::Gm`] (GB/T, 国密) |
//! |---|---|---|
//! | key agreement | X25519 (`x25519-dalek`, static secrets) | ECDH on the SM2 curve |
//! | key derivation | HKDF-SHA-256 (`ring`) | HKDF-SM3 |
//! | share encryption | AES-128-GCM (`ring`) | SM4-GCM (RFC 8998) |
//! | mask PRG | AES-128-CTR | SM4-CTR |
//! | commitments | SHA-256 | SM3 |
//! | site signatures | Ed25519 (`ring`) | SM2 with SM3, distinguishing id `1234567812345678` |
//!
//! Agreement secrets are plain 32-byte values in both suites (an X25519 scalar,
//! an SM2 scalar below the group order) because the coordinator must be able to
//! rebuild a dropped site's mask key from its Shamir shares; `ring`'s X25519
//! keys cannot be imported, so X25519 comes from `x25519-dalek`.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::error::CryptoError;

mod ed25519_batch;
mod kept;
mod sm2_verify;

/// SM2's default distinguishing identifier (GB/T 35276-2017), used for every
/// Confide SM2 signature so that other implementations verify them unchanged.
pub const SM2_DIST_ID: &str = "1234567812345678";

/// Which cipher suite a federation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suite {
    /// X25519, HKDF-SHA-256, AES-128-GCM, AES-128-CTR, Ed25519.
    Intl,
    /// SM2 ECDH, HKDF-SM3, SM4-GCM, SM4-CTR, SM2 signatures (国密).
    Gm,
}

impl Suite {
    /// Both suites, for tests that must cover each.
    pub const ALL: [Suite; 2] = [Suite::Intl, Suite::Gm];

    /// The one-byte code bound into every KDF label, AAD and signature.
    pub fn code(self) -> u8 {
        match self {
            Suite::Intl => 1,
            Suite::Gm => 2,
        }
    }

    /// Parse the wire code.
    pub fn from_code(code: u8) -> Result<Self, CryptoError> {
        match code {
            1 => Ok(Suite::Intl),
            2 => Ok(Suite::Gm),
            other => Err(CryptoError::UnknownSuite(other.to_string())),
        }
    }

    /// The configuration name (`"intl"` or `"gm"`).
    pub fn name(self) -> &'static str {
        match self {
            Suite::Intl => "intl",
            Suite::Gm => "gm",
        }
    }

    /// The provider implementing this suite.
    pub fn provider(self) -> &'static dyn CipherSuite {
        match self {
            Suite::Intl => &IntlSuite,
            Suite::Gm => &GmSuite,
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "intl" => Ok(Suite::Intl),
            "gm" => Ok(Suite::Gm),
            other => Err(CryptoError::UnknownSuite(other.to_string())),
        }
    }
}

/// The primitives one suite provides. Implementations are stateless and
/// chosen once through [`Suite::provider`].
pub trait CipherSuite: Send + Sync + fmt::Debug {
    /// Which suite this is.
    fn suite(&self) -> Suite;
    /// HKDF (extract with `salt`, expand with `info`) into `out` (≤ 255 hash blocks).
    fn kdf(&self, ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), CryptoError>;
    /// The suite's 256-bit hash (SHA-256 or SM3).
    fn hash(&self, data: &[&[u8]]) -> [u8; 32];
    /// AEAD-seal with a 128-bit key (AES-128-GCM or SM4-GCM); returns ciphertext ‖ tag.
    fn seal(
        &self,
        key: &[u8; 16],
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;
    /// AEAD-open; any tampering is [`CryptoError::Decrypt`].
    fn open(
        &self,
        key: &[u8; 16],
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
    /// Whether 32 bytes form a valid agreement secret for this suite.
    fn check_agreement_secret(&self, secret: &[u8; 32]) -> Result<(), CryptoError>;
    /// The public key of an agreement secret (32 bytes X25519, 65 bytes SEC1 SM2).
    fn agreement_public(&self, secret: &[u8; 32]) -> Result<Vec<u8>, CryptoError>;
    /// Diffie–Hellman: the raw 32-byte shared secret (X25519 output or SM2 x-coordinate).
    fn agree(
        &self,
        secret: &[u8; 32],
        peer_public: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError>;
    /// Whether 32 bytes form a valid long-term signing secret.
    fn check_signing_secret(&self, secret: &[u8; 32]) -> Result<(), CryptoError>;
    /// The verifying key of a signing secret (32 bytes Ed25519, 65 bytes SEC1 SM2).
    fn signing_public(&self, secret: &[u8; 32]) -> Result<Vec<u8>, CryptoError>;
    /// Sign `msg` (Ed25519, or SM2 with SM3 and [`SM2_DIST_ID`]).
    fn sign(&self, secret: &[u8; 32], msg: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// Verify a signature made by [`CipherSuite::sign`].
    fn verify(&self, public: &[u8], msg: &[u8], signature: &[u8]) -> Result<(), CryptoError>;
}

/// X25519 / HKDF-SHA-256 / AES-128-GCM / AES-128-CTR / Ed25519.
#[derive(Debug, Clone, Copy)]
pub struct IntlSuite;

/// SM2 ECDH / HKDF-SM3 / SM4-GCM / SM4-CTR / SM2 signatures.
#[derive(Debug, Clone, Copy)]
pub struct GmSuite;

/// `ring`'s HKDF wants a typed output length.
struct OutLen(usize);
impl ring::hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

impl CipherSuite for IntlSuite {
    fn suite(&self) -> Suite {
        Suite::Intl
    }

    fn kdf(&self, ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), CryptoError> {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(ikm);
        let info = [info];
        prk.expand(&info, OutLen(out.len()))
            .and_then(|okm| okm.fill(out))
            .map_err(|_| CryptoError::KdfLength(out.len()))
    }

    fn hash(&self, data: &[&[u8]]) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for d in data {
            ctx.update(d);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn seal(
        &self,
        key: &[u8; 16],
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        use ring::aead;
        let key =
            aead::UnboundKey::new(&aead::AES_128_GCM, key).map_err(|_| CryptoError::Encrypt)?;
        let key = aead::LessSafeKey::new(key);
        let mut buf = plaintext.to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(*nonce),
            aead::Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::Encrypt)?;
        Ok(buf)
    }

    fn open(
        &self,
        key: &[u8; 16],
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use ring::aead;
        let key =
            aead::UnboundKey::new(&aead::AES_128_GCM, key).map_err(|_| CryptoError::Decrypt)?;
        let key = aead::LessSafeKey::new(key);
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    fn check_agreement_secret(&self, _secret: &[u8; 32]) -> Result<(), CryptoError> {
        // Every 32-byte string is a valid (clamped) X25519 scalar.
        Ok(())
    }

    fn agreement_public(&self, secret: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
        let sk = x25519_dalek::StaticSecret::from(*secret);
        Ok(x25519_dalek::PublicKey::from(&sk).as_bytes().to_vec())
    }

    fn agree(
        &self,
        secret: &[u8; 32],
        peer_public: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let peer: [u8; 32] = peer_public
            .try_into()
            .map_err(|_| CryptoError::InvalidPublicKey("X25519 public key must be 32 bytes"))?;
        let sk = x25519_dalek::StaticSecret::from(*secret);
        let shared = sk.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        // A low-order peer key would make the "shared" secret predictable.
        if !shared.was_contributory() {
            return Err(CryptoError::InvalidPublicKey(
                "X25519 public key has low order",
            ));
        }
        Ok(Zeroizing::new(*shared.as_bytes()))
    }

    fn check_signing_secret(&self, _secret: &[u8; 32]) -> Result<(), CryptoError> {
        Ok(())
    }

    fn signing_public(&self, secret: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
        use ring::signature::KeyPair;
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(secret)
            .map_err(|_| CryptoError::InvalidSecretKey("Ed25519 seed rejected"))?;
        Ok(kp.public_key().as_ref().to_vec())
    }

    fn sign(&self, secret: &[u8; 32], msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(secret)
            .map_err(|_| CryptoError::InvalidSecretKey("Ed25519 seed rejected"))?;
        Ok(kp.sign(msg).as_ref().to_vec())
    }

    fn verify(&self, public: &[u8], msg: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(msg, signature)
            .map_err(|_| CryptoError::BadSignature)
    }
}

/// SM4-GCM over the constant-time SM4 of [`crate::sm4ct`] (the RustCrypto
/// `sm4` crate indexes tables by secret bytes).
type Sm4Gcm = aes_gcm::AesGcm<crate::sm4ct::Sm4, aes_gcm::aead::consts::U12>;

fn sm2_secret(secret: &[u8; 32]) -> Result<sm2::SecretKey, CryptoError> {
    sm2::SecretKey::from_slice(secret)
        .map_err(|_| CryptoError::InvalidSecretKey("not a scalar in [1, n-1] of the SM2 curve"))
}

impl CipherSuite for GmSuite {
    fn suite(&self) -> Suite {
        Suite::Gm
    }

    fn kdf(&self, ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), CryptoError> {
        let hk = hkdf::Hkdf::<sm3::Sm3>::new(Some(salt), ikm);
        hk.expand(info, out)
            .map_err(|_| CryptoError::KdfLength(out.len()))
    }

    fn hash(&self, data: &[&[u8]]) -> [u8; 32] {
        use sm3::Digest;
        let mut h = sm3::Sm3::new();
        for d in data {
            h.update(d);
        }
        h.finalize().into()
    }

    fn seal(
        &self,
        key: &[u8; 16],
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let cipher = Sm4Gcm::new(&(*key).into());
        cipher
            .encrypt(
                &(*nonce).into(),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)
    }

    fn open(
        &self,
        key: &[u8; 16],
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let cipher = Sm4Gcm::new(&(*key).into());
        cipher
            .decrypt(
                &(*nonce).into(),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }

    fn check_agreement_secret(&self, secret: &[u8; 32]) -> Result<(), CryptoError> {
        sm2_secret(secret).map(|_| ())
    }

    fn agreement_public(&self, secret: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
        use elliptic_curve::sec1::ToSec1Point;
        let sk = sm2_secret(secret)?;
        Ok(sk.public_key().to_sec1_point(false).as_bytes().to_vec())
    }

    fn agree(
        &self,
        secret: &[u8; 32],
        peer_public: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let sk = sm2_secret(secret)?;
        // from_sec1_bytes rejects the identity and points off the curve.
        let peer = sm2::PublicKey::from_sec1_bytes(peer_public)
            .map_err(|_| CryptoError::InvalidPublicKey("not a point on the SM2 curve"))?;
        let shared = elliptic_curve::ecdh::diffie_hellman(sk.to_nonzero_scalar(), peer.as_affine());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(shared.raw_secret_bytes().as_slice());
        Ok(out)
    }

    fn check_signing_secret(&self, secret: &[u8; 32]) -> Result<(), CryptoError> {
        sm2_secret(secret).map(|_| ())
    }

    fn signing_public(&self, secret: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
        self.agreement_public(secret)
    }

    fn sign(&self, secret: &[u8; 32], msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        use sm2::dsa::signature::Signer;
        let sk = sm2::dsa::SigningKey::new(SM2_DIST_ID, &sm2_secret(secret)?)
            .map_err(|_| CryptoError::InvalidSecretKey("SM2 signing key rejected"))?;
        let sig: sm2::dsa::Signature = sk.try_sign(msg).map_err(|_| CryptoError::Sign)?;
        Ok(sig.to_bytes().to_vec())
    }

    fn verify(&self, public: &[u8], msg: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        // Variable time: a verification handles only public values.
        sm2_verify::verify(public, msg, signature)
    }
}

/// Draw a fresh 32-byte secret valid for `check` (rejection sampling: for SM2
/// the chance of a retry is about 2^-32).
pub(crate) fn random_secret(
    rng: &mut impl CryptoRng,
    check: impl Fn(&[u8; 32]) -> Result<(), CryptoError>,
) -> Zeroizing<[u8; 32]> {
    let mut s = Zeroizing::new([0u8; 32]);
    loop {
        rng.fill_bytes(&mut s[..]);
        if check(&s).is_ok() {
            return s;
        }
    }
}

/// A site's long-term signing key for one suite. Never printed by `Debug`;
/// zeroized on drop.
#[derive(Clone)]
pub struct SigningKey {
    suite: Suite,
    secret: Zeroizing<[u8; 32]>,
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate(suite: Suite, rng: &mut impl CryptoRng) -> Self {
        let p = suite.provider();
        let secret = random_secret(rng, |s| p.check_signing_secret(s));
        SigningKey { suite, secret }
    }

    /// Import a key from its 32 secret bytes (Ed25519 seed or SM2 scalar).
    pub fn from_bytes(suite: Suite, bytes: &[u8]) -> Result<Self, CryptoError> {
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::InvalidSecretKey("signing key must be 32 bytes"))?;
        let secret = Zeroizing::new(secret);
        suite.provider().check_signing_secret(&secret)?;
        Ok(SigningKey { suite, secret })
    }

    /// The secret bytes, for writing the key file. Handle with care.
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The suite this key belongs to.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, CryptoError> {
        Ok(VerifyingKey {
            suite: self.suite,
            bytes: self.suite.provider().signing_public(&self.secret)?,
        })
    }

    /// Sign a message.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.suite.provider().sign(&self.secret, msg)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// A site's long-term verifying key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VerifyingKey {
    suite: Suite,
    bytes: Vec<u8>,
}

impl VerifyingKey {
    /// Wrap encoded key bytes (checked when used).
    pub fn from_bytes(suite: Suite, bytes: &[u8]) -> Self {
        VerifyingKey {
            suite,
            bytes: bytes.to_vec(),
        }
    }

    /// Wrap encoded key bytes after checking they are a key of `suite`
    /// (32 bytes for Ed25519, a point on the curve for SM2), for callers
    /// that vouch for a key, such as a CA binding it into a certificate.
    pub fn parse(suite: Suite, bytes: &[u8]) -> Result<Self, CryptoError> {
        match suite {
            Suite::Intl if bytes.len() != 32 => {
                return Err(CryptoError::InvalidPublicKey(
                    "an Ed25519 verifying key is 32 bytes",
                ));
            }
            Suite::Intl => {}
            Suite::Gm => {
                sm2::dsa::VerifyingKey::from_sec1_bytes(SM2_DIST_ID, bytes)
                    .map_err(|_| CryptoError::InvalidPublicKey("not an SM2 verifying key"))?;
            }
        }
        Ok(Self::from_bytes(suite, bytes))
    }

    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The suite this key belongs to.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Verify a signature.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.suite.provider().verify(&self.bytes, msg, signature)
    }

    /// Verify several `(key, message, signature)`: whether each verifies.
    /// Two or more Ed25519 signatures are first checked in one batch, at
    /// about half the cost (`ed25519_batch` says where batch and single
    /// checks may differ), and one by one only if the batch fails. SM2
    /// signatures are each checked on their own, sharing one field
    /// inversion (`sm2_verify`). A set of mixed suites is checked one by
    /// one.
    pub fn verify_each(items: &[(&VerifyingKey, &[u8], &[u8])]) -> Vec<bool> {
        let raw = || -> Vec<(&[u8], &[u8], &[u8])> {
            items
                .iter()
                .map(|&(k, m, s)| (k.bytes.as_slice(), m, s))
                .collect()
        };
        if items.len() > 1 && items.iter().all(|(k, _, _)| k.suite == Suite::Intl) {
            if ed25519_batch::verify_all(&raw()).is_ok() {
                return vec![true; items.len()];
            }
        } else if items.len() > 1 && items.iter().all(|(k, _, _)| k.suite == Suite::Gm) {
            return sm2_verify::verify_each(&raw());
        }
        items
            .iter()
            .map(|&(k, m, s)| k.verify(m, s).is_ok())
            .collect()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({}, ", self.suite)?;
        for b in self.bytes.iter().take(8) {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}
