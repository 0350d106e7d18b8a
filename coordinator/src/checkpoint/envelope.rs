//! Envelope encryption of a whole checkpoint, for both backends: what is
//! written instead of the plain files, and how it is checked on the way
//! back. The primitives are in `seal.rs`, the key-encryption keys in
//! `keys.rs`.
//!
//! An encrypted checkpoint's `manifest.json` is the plain manifest (still
//! readable: rounds, history, config hash) with each data object's size and
//! SHA-256 **of the sealed bytes** in `objects`, plus one member:
//!
//! ```json
//! "encryption": {
//!   "scheme": "confide-envelope-v1", "aead": "AES-256-GCM", "segment_bytes": 1048576,
//!   "key_id": "kek-2026", "key_wrap": "AES-256-GCM-KW", "wrapped_key": "<hex>",
//!   "mac": "HMAC-SHA-256", "tag": "<64 hex digits>"
//! }
//! ```
//!
//! * The data key is wrapped by the KEK with the context
//!   `"confide/checkpoint/v1/wrap" ‖ suite ‖ round ‖ key id ‖ config hash`.
//! * `tag` is the MAC (key from the data key) over the manifest file exactly
//!   as written, with the tag's own 64 digits set to `0`. It therefore binds
//!   every byte: the round, the config hash (which hashes the federation
//!   name, the suite and the training settings), the history, the key id,
//!   the wrapped key and the digests of the sealed objects.
//!
//! Reading checks, in order: the key id, the unwrap, the MAC, that the
//! manifest's round is the round it was found under (a manifest copied in
//! from another checkpoint is genuine but elsewhere), then each object's
//! digest and every segment's AEAD tag. Any failure is
//! [`CoordinatorError::TamperedCheckpoint`] or
//! [`CoordinatorError::CheckpointKey`], which resume does not skip.

use std::sync::Arc;

use confide_crypto::Suite;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::KeyWrapper;
use super::seal::{self, DataKey, ObjectContext, SEGMENT};
use super::{MODEL, Manifest, OPTIMISER, ObjectDigest};
use crate::error::CoordinatorError;

/// The envelope format this build writes and reads.
pub const SCHEME: &str = "confide-envelope-v1";
const WRAP_CONTEXT: &[u8] = b"confide/checkpoint/v1/wrap";
const ZERO_TAG: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `encryption` member of an encrypted checkpoint's manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// [`SCHEME`].
    pub scheme: String,
    /// AEAD of the data objects (`AES-256-GCM` or `SM4-GCM`).
    pub aead: String,
    /// Plaintext bytes per AEAD segment.
    pub segment_bytes: u64,
    /// The KEK's id.
    pub key_id: String,
    /// How the data key is wrapped.
    pub key_wrap: String,
    /// The wrapped data key, hex.
    pub wrapped_key: String,
    /// The manifest MAC (`HMAC-SHA-256` or `HMAC-SM3`).
    pub mac: String,
    /// The MAC, hex (written last, see the module docs).
    pub tag: String,
}

#[derive(Serialize)]
struct SealedOut<'a> {
    #[serde(flatten)]
    manifest: &'a Manifest,
    encryption: &'a Envelope,
}

#[derive(Deserialize)]
struct SealedIn {
    #[serde(flatten)]
    manifest: Manifest,
    #[serde(default)]
    encryption: Option<Envelope>,
}

/// A `manifest.json` as read, before any check.
#[derive(Debug)]
pub struct RawManifest {
    /// The manifest's fields.
    pub manifest: Manifest,
    /// Its `encryption` member, if the checkpoint is encrypted.
    pub envelope: Option<Envelope>,
    bytes: Vec<u8>,
}

impl RawManifest {
    /// Parse `manifest.json`.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, serde_json::Error> {
        let s: SealedIn = serde_json::from_slice(&bytes)?;
        Ok(RawManifest {
            manifest: s.manifest,
            envelope: s.encryption,
            bytes,
        })
    }
}

/// A checked manifest and, for an encrypted checkpoint, the key to its data.
#[derive(Debug)]
pub struct Opened {
    /// The manifest (authenticated if the checkpoint is encrypted).
    pub manifest: Manifest,
    key: Option<(Suite, DataKey)>,
}

impl Opened {
    /// Whether the checkpoint is encrypted.
    pub fn sealed(&self) -> bool {
        self.key.is_some()
    }
}

/// What a KEK rotation did to one checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewrapOutcome {
    /// Its data key is now wrapped under the new KEK.
    Rewrapped,
    /// It already was (a rotation run again after an interruption).
    AlreadyUnderNewKey,
    /// It is not encrypted: left alone.
    NotEncrypted,
}

/// What [`Sealing::rewrap`] asks the backend to do.
pub enum Rewrap {
    /// Write this manifest in place of the old one.
    Write(Vec<u8>),
    /// Nothing to write.
    Skip(RewrapOutcome),
}

/// What a backend writes for one encrypted checkpoint.
pub struct SealedCheckpoint {
    /// Data objects (name, sealed bytes), model first.
    pub objects: Vec<(&'static str, Vec<u8>)>,
    /// `manifest.json`.
    pub manifest_json: Vec<u8>,
}

/// Whether and how a store encrypts: the KEK, if any, and whether
/// unencrypted checkpoints may still be loaded. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Sealing {
    wrapper: Option<Arc<dyn KeyWrapper>>,
    allow_plaintext: bool,
}

fn tampered(location: &str, reason: impl Into<String>) -> CoordinatorError {
    CoordinatorError::TamperedCheckpoint {
        location: location.into(),
        reason: reason.into(),
    }
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why `bytes` do not match what the manifest records for `name`, if they don't.
pub fn digest_mismatch(m: &Manifest, name: &str, bytes: &[u8]) -> Option<String> {
    match m.objects.iter().find(|o| o.name == name) {
        Some(d) => {
            let got = sha256_hex(bytes);
            (bytes.len() as u64 != d.size || got != d.sha256).then(|| {
                format!(
                    "{name} has {} bytes with SHA-256 {got}, the manifest says {} bytes with {}",
                    bytes.len(),
                    d.size,
                    d.sha256
                )
            })
        }
        None if !m.objects.is_empty() => Some(format!("the manifest does not list {name}")),
        None => None,
    }
}

fn wrap_context(suite: Suite, round: u64, key_id: &str, config_hash: &str) -> Vec<u8> {
    let mut c = WRAP_CONTEXT.to_vec();
    c.push(suite.code());
    c.extend_from_slice(&round.to_be_bytes());
    c.extend_from_slice(&(key_id.len() as u64).to_be_bytes());
    c.extend_from_slice(key_id.as_bytes());
    c.extend_from_slice(config_hash.as_bytes());
    c
}

fn suite_of(m: &Manifest) -> Result<Suite, String> {
    m.suite
        .parse()
        .map_err(|_| format!("unknown suite {:?} in the manifest", m.suite))
}

/// `manifest.json` for `manifest` + `envelope`, with its MAC in place.
fn write_manifest(
    manifest: &Manifest,
    envelope: &Envelope,
    suite: Suite,
    dk: &DataKey,
) -> Result<Vec<u8>, CoordinatorError> {
    let mut env = envelope.clone();
    env.tag = ZERO_TAG.into();
    let out = SealedOut {
        manifest,
        encryption: &env,
    };
    let json = serde_json::to_vec_pretty(&out).map_err(CoordinatorError::ManifestJson)?;
    let tag = seal::manifest_mac(suite, dk, &json)
        .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))?;
    let (needle, with) = (tag_field(ZERO_TAG), tag_field(&hex::encode(tag)));
    let text = String::from_utf8(json).map_err(|e| CoordinatorError::Checkpoint(e.to_string()))?;
    // The manifest's fields cannot spell the key unescaped, so this is the
    // envelope's own tag; checked anyway, since the reader relies on it.
    if text.matches(&needle).count() != 1 {
        return Err(CoordinatorError::Checkpoint(
            "the manifest's MAC field is not unique".into(),
        ));
    }
    Ok(text.replacen(&needle, &with, 1).into_bytes())
}

fn tag_field(hex_tag: &str) -> String {
    format!("\"tag\": \"{hex_tag}\"")
}

impl Sealing {
    /// No encryption: plaintext checkpoints, and encrypted ones refused
    /// (their key is not at hand).
    pub fn none() -> Self {
        Sealing::default()
    }

    /// Encrypt every new checkpoint under `wrapper`'s KEK, and open the
    /// encrypted ones it wrapped.
    pub fn with_key(wrapper: Arc<dyn KeyWrapper>) -> Self {
        Sealing {
            wrapper: Some(wrapper),
            allow_plaintext: false,
        }
    }

    /// With a KEK: still load unencrypted checkpoints (written before
    /// encryption was turned on). Off by default: anyone who can write to
    /// the store could plant one.
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.allow_plaintext = allow;
        self
    }

    /// Whether new checkpoints are encrypted.
    pub fn encrypts(&self) -> bool {
        self.wrapper.is_some()
    }

    /// The encrypted files of a checkpoint, or `None` without a KEK.
    pub fn seal(
        &self,
        manifest: &Manifest,
        model: &[u8],
        optimiser: Option<&[u8]>,
    ) -> Result<Option<SealedCheckpoint>, CoordinatorError> {
        let Some(w) = &self.wrapper else {
            return Ok(None);
        };
        let suite = suite_of(manifest).map_err(CoordinatorError::Checkpoint)?;
        let dk = DataKey::generate();
        let mut m = manifest.clone();
        m.optimiser_state = optimiser.map(|_| OPTIMISER.to_string());
        m.objects.clear();
        let mut objects = Vec::new();
        for (name, plain) in [(MODEL, Some(model)), (OPTIMISER, optimiser)] {
            let Some(plain) = plain else { continue };
            let ctx = ObjectContext {
                suite,
                round: m.round,
                name,
            };
            let sealed = seal::seal_object(&dk, ctx, plain)
                .map_err(|e| CoordinatorError::Checkpoint(e.to_string()))?;
            m.objects.push(ObjectDigest {
                name: name.into(),
                size: sealed.len() as u64,
                sha256: sha256_hex(&sealed),
            });
            objects.push((name, sealed));
        }
        let envelope = self.envelope(w.as_ref(), suite, &m, &dk)?;
        let manifest_json = write_manifest(&m, &envelope, suite, &dk)?;
        Ok(Some(SealedCheckpoint {
            objects,
            manifest_json,
        }))
    }

    fn envelope(
        &self,
        w: &dyn KeyWrapper,
        suite: Suite,
        m: &Manifest,
        dk: &DataKey,
    ) -> Result<Envelope, CoordinatorError> {
        let ctx = wrap_context(suite, m.round, w.key_id(), &m.config_hash);
        Ok(Envelope {
            scheme: SCHEME.into(),
            aead: seal::aead_name(suite).into(),
            segment_bytes: SEGMENT as u64,
            key_id: w.key_id().into(),
            key_wrap: w.algorithm(suite),
            wrapped_key: hex::encode(w.wrap(suite, dk, &ctx)?),
            mac: seal::mac_name(suite).into(),
            tag: ZERO_TAG.into(),
        })
    }

    /// Check `raw` (read from `round`'s place at `location`) and recover
    /// the data key; see the module docs for the order of the checks.
    pub fn open(
        &self,
        raw: RawManifest,
        round: u64,
        location: &str,
    ) -> Result<Opened, CoordinatorError> {
        let Some(env) = &raw.envelope else {
            if self.wrapper.is_some() && !self.allow_plaintext {
                return Err(tampered(
                    location,
                    "it is not encrypted, but checkpoints.encryption is set, so anyone able to \
                     write to the store could have planted it; to resume from a checkpoint \
                     written before encryption was turned on, set \
                     checkpoints.encryption.allow_plaintext = true for that start",
                ));
            }
            // Plaintext: checked as before encryption existed (the object
            // backend compares the round itself).
            return Ok(Opened {
                manifest: raw.manifest,
                key: None,
            });
        };
        let (suite, dk) = self.unwrap(&raw, env, location)?;
        let zeroed = String::from_utf8(raw.bytes.clone())
            .map_err(|_| tampered(location, "manifest.json is not UTF-8"))?
            .replacen(&tag_field(&env.tag), &tag_field(ZERO_TAG), 1);
        let tag = hex::decode(&env.tag).map_err(|_| tampered(location, "the MAC is not hex"))?;
        seal::verify_manifest_mac(suite, &dk, zeroed.as_bytes(), &tag)
            .map_err(|e| tampered(location, e.to_string()))?;
        if raw.manifest.round != round {
            return Err(tampered(
                location,
                format!(
                    "it holds the authentic manifest of round {}, not of round {round}: \
                     a manifest swapped in from another checkpoint",
                    raw.manifest.round
                ),
            ));
        }
        Ok(Opened {
            manifest: raw.manifest,
            key: Some((suite, dk)),
        })
    }

    /// The data key of an encrypted manifest, after checking the envelope
    /// names what this build and this key can open.
    fn unwrap(
        &self,
        raw: &RawManifest,
        env: &Envelope,
        location: &str,
    ) -> Result<(Suite, DataKey), CoordinatorError> {
        let key_err = |reason: String| CoordinatorError::CheckpointKey {
            location: location.into(),
            key_id: env.key_id.clone(),
            reason,
        };
        let Some(w) = &self.wrapper else {
            return Err(key_err(
                "no key-encryption key is configured ([checkpoints.encryption] key_file or \
                 key_env, or --key-file / --key-env)"
                    .into(),
            ));
        };
        if w.key_id() != env.key_id {
            return Err(key_err(format!(
                "the configured key is {:?} (rotate with `confide checkpoints rewrap`)",
                w.key_id()
            )));
        }
        let suite = suite_of(&raw.manifest).map_err(|e| tampered(location, e))?;
        let expect = (SCHEME, seal::aead_name(suite), seal::mac_name(suite));
        if (env.scheme.as_str(), env.aead.as_str(), env.mac.as_str()) != expect
            || env.segment_bytes != SEGMENT as u64
            || env.key_wrap != w.algorithm(suite)
        {
            return Err(tampered(
                location,
                format!(
                    "its envelope ({}, {}, {}, {} B segments, {}) is not what suite {suite} \
                     writes ({SCHEME}, {}, {}, {SEGMENT} B segments, {})",
                    env.scheme,
                    env.aead,
                    env.mac,
                    env.segment_bytes,
                    env.key_wrap,
                    expect.1,
                    expect.2,
                    w.algorithm(suite)
                ),
            ));
        }
        let wrapped = hex::decode(&env.wrapped_key)
            .map_err(|_| tampered(location, "the wrapped key is not hex"))?;
        let ctx = wrap_context(
            suite,
            raw.manifest.round,
            &env.key_id,
            &raw.manifest.config_hash,
        );
        let dk = w
            .unwrap(suite, &wrapped, &ctx)
            .map_err(|e| key_err(e.to_string()))?;
        Ok((suite, dk))
    }

    /// The manifest for listings: authenticated when it is encrypted and a
    /// key is configured, as stored otherwise (no data is read from it).
    pub fn listing(
        &self,
        raw: RawManifest,
        round: u64,
        location: &str,
    ) -> Result<Manifest, CoordinatorError> {
        if raw.envelope.is_some() && self.wrapper.is_some() {
            return Ok(self.open(raw, round, location)?.manifest);
        }
        Ok(raw.manifest)
    }

    /// Data object `name` as stored (`bytes`) → its plaintext, checked
    /// against the opened manifest.
    pub fn open_object(
        opened: &Opened,
        name: &str,
        bytes: Vec<u8>,
        location: &str,
    ) -> Result<Vec<u8>, CoordinatorError> {
        let Some((suite, dk)) = &opened.key else {
            return Ok(bytes);
        };
        if let Some(why) = digest_mismatch(&opened.manifest, name, &bytes) {
            return Err(tampered(location, why));
        }
        let ctx = ObjectContext {
            suite: *suite,
            round: opened.manifest.round,
            name,
        };
        seal::open_object(dk, ctx, &bytes).map_err(|e| tampered(location, e.to_string()))
    }

    /// `raw` with its data key re-wrapped from `old` to `new` and its MAC
    /// recomputed (after checking it all under `old`); the data objects
    /// stay valid as they are.
    pub fn rewrap(
        raw: RawManifest,
        round: u64,
        location: &str,
        old: Arc<dyn KeyWrapper>,
        new: &dyn KeyWrapper,
    ) -> Result<Rewrap, CoordinatorError> {
        let Some(mut env) = raw.envelope.clone() else {
            return Ok(Rewrap::Skip(RewrapOutcome::NotEncrypted));
        };
        if env.key_id == new.key_id() {
            return Ok(Rewrap::Skip(RewrapOutcome::AlreadyUnderNewKey));
        }
        let opened = Sealing::with_key(old).open(raw, round, location)?;
        let Some((suite, dk)) = opened.key else {
            return Ok(Rewrap::Skip(RewrapOutcome::NotEncrypted));
        };
        let m = opened.manifest;
        let fresh = Sealing::none().envelope(new, suite, &m, &dk)?;
        env.key_id = fresh.key_id;
        env.key_wrap = fresh.key_wrap;
        env.wrapped_key = fresh.wrapped_key;
        write_manifest(&m, &env, suite, &dk).map(Rewrap::Write)
    }
}

#[cfg(test)]
mod tests;
