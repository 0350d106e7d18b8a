//! Key-encryption keys (KEKs): the [`KeyWrapper`] seam that wraps and
//! unwraps a checkpoint's data key, and [`LocalKek`], the wrapper over a
//! KEK held in a file or an environment variable.
//!
//! A cloud KMS or HSM plugs in as another [`KeyWrapper`]: `wrap` is the
//! KMS's Encrypt (or GenerateDataKey's ciphertext blob) with `context` as
//! its encryption context / AAD, `unwrap` its Decrypt; the KEK never leaves
//! it (docs/checkpoints.md shows Huawei KMS, AWS KMS and Azure Key Vault).

use std::fmt;
use std::path::{Path, PathBuf};

use confide_crypto::Suite;
use zeroize::Zeroizing;

use super::seal::{self, Aead, DataKey};
use crate::error::CoordinatorError;

/// Wraps and unwraps data keys under one key-encryption key.
pub trait KeyWrapper: Send + Sync + fmt::Debug {
    /// The id manifests record (a label, a KMS key id or ARN, a Key Vault
    /// key URL); never key material.
    fn key_id(&self) -> &str;

    /// Name of the wrapping algorithm for `suite`, as manifests record it.
    fn algorithm(&self, suite: Suite) -> String;

    /// Wrap `key`, bound to `context` (authenticated, not secret).
    fn wrap(
        &self,
        suite: Suite,
        key: &DataKey,
        context: &[u8],
    ) -> Result<Vec<u8>, CoordinatorError>;

    /// Unwrap what [`KeyWrapper::wrap`] made with the same `context`; a
    /// wrong KEK or an edited wrapped key or context is an error.
    fn unwrap(
        &self,
        suite: Suite,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<DataKey, CoordinatorError>;
}

/// Where a KEK comes from (never the TOML itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding 64 hex digits (32 bytes); refused if group- or
    /// other-accessible.
    File(PathBuf),
    /// An environment variable holding 64 hex digits.
    Env(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "key file {}", p.display()),
            KeySource::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// A 32-byte KEK held in this process (from a file or the environment).
pub struct LocalKek {
    key_id: String,
    kek: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field("key_id", &self.key_id)
            .field("kek", &"<redacted>")
            .finish()
    }
}

fn key_err(source: &KeySource, why: impl fmt::Display) -> CoordinatorError {
    CoordinatorError::Config(format!("checkpoint encryption: {source}: {why}"))
}

/// 64 hex digits (surrounding white space ignored) as 32 bytes.
fn parse_hex_kek(text: &str, source: &KeySource) -> Result<Zeroizing<[u8; 32]>, CoordinatorError> {
    let t = text.trim();
    let mut kek = Zeroizing::new([0u8; 32]);
    if t.len() != 64 {
        return Err(key_err(
            source,
            format!(
                "must hold a 32-byte key as 64 hex digits (e.g. `openssl rand -hex 32`), found {} characters",
                t.len()
            ),
        ));
    }
    // Not echoing the text: it is (nearly) a key.
    hex::decode_to_slice(t, &mut kek[..])
        .map_err(|_| key_err(source, "must hold 64 hex digits (0-9, a-f)"))?;
    Ok(kek)
}

impl LocalKek {
    /// The KEK named `key_id` from `source`.
    pub fn load(key_id: &str, source: &KeySource) -> Result<Self, CoordinatorError> {
        if key_id.trim().is_empty() {
            return Err(key_err(source, "key_id must not be empty"));
        }
        let kek = match source {
            KeySource::File(p) => Self::read_file(p, source)?,
            KeySource::Env(var) => {
                let v = Zeroizing::new(std::env::var(var).map_err(|_| {
                    key_err(
                        source,
                        "is not set (or not UTF-8); it must hold the KEK in hex",
                    )
                })?);
                parse_hex_kek(&v, source)?
            }
        };
        Ok(LocalKek {
            key_id: key_id.to_string(),
            kek,
        })
    }

    fn read_file(p: &Path, source: &KeySource) -> Result<Zeroizing<[u8; 32]>, CoordinatorError> {
        // Its error already names the file and the fix.
        confide_proto::keys::check_private_file(p)
            .map_err(|e| CoordinatorError::Config(format!("checkpoint encryption: KEK {e}")))?;
        let text = Zeroizing::new(std::fs::read_to_string(p).map_err(|e| key_err(source, e))?);
        parse_hex_kek(&text, source)
    }

    /// A KEK from its bytes (tests and tools).
    pub fn from_bytes(key_id: &str, kek: [u8; 32]) -> Self {
        LocalKek {
            key_id: key_id.to_string(),
            kek: Zeroizing::new(kek),
        }
    }

    /// The suite's AEAD under a key derived from the KEK (so one 32-byte
    /// KEK serves AES-256-GCM and SM4-GCM alike, and is used for nothing else).
    fn aead(&self, suite: Suite) -> Result<Aead, CoordinatorError> {
        let k = seal::derive(suite, &self.kek[..], b"kek", seal::aead_key_len(suite))
            .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))?;
        Aead::new(suite, &k).map_err(|e| CoordinatorError::Checkpoint(e.to_string()))
    }
}

impl KeyWrapper for LocalKek {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn algorithm(&self, suite: Suite) -> String {
        format!("{}-KW", seal::aead_name(suite))
    }

    fn wrap(
        &self,
        suite: Suite,
        key: &DataKey,
        context: &[u8],
    ) -> Result<Vec<u8>, CoordinatorError> {
        self.aead(suite)?
            .seal_random(context, key.expose())
            .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))
    }

    fn unwrap(
        &self,
        suite: Suite,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<DataKey, CoordinatorError> {
        let key = self
            .aead(suite)?
            .open_random(context, wrapped)
            .ok_or_else(|| {
                CoordinatorError::Checkpoint(format!(
                    "key {:?} does not unwrap this data key (another KEK under the same id, \
                 or the wrapped key or its checkpoint was edited)",
                    self.key_id
                ))
            })?;
        DataKey::from_slice(&key).ok_or_else(|| {
            CoordinatorError::Checkpoint("an unwrapped data key of the wrong size".into())
        })
    }
}
