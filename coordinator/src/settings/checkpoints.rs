//! `[checkpoints]`: where checkpoints go — a local directory (`dir`) or
//! S3-compatible object storage (`url = "s3://bucket/prefix"`), never both —
//! and where the round transcript goes; `[checkpoints.encryption]`:
//! envelope encryption at rest under a key-encryption key from a file or
//! the environment (never from this file).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::checkpoint::{CheckpointStore, KeySource, LocalKek, Location, Sealing};
use crate::error::CoordinatorError;

/// Checkpoint storage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSettings {
    /// Directory; none (and no `url`) disables checkpoints.
    pub dir: Option<PathBuf>,
    /// Object storage instead of `dir`: `s3://bucket/prefix`. Endpoint,
    /// region and credentials come from the standard `AWS_*` environment
    /// variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, …), never from this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// With `url`: the local directory of the round transcript
    /// (`transcript.jsonl`, an append-only audit file that object storage
    /// cannot append to). Without it no transcript is written (logged at
    /// start). With `dir` the transcript lives in `dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript_dir: Option<PathBuf>,
    /// Keep this many latest checkpoints (plus the best).
    pub keep_last: usize,
    /// Resume even if the checkpoint's config hash differs.
    pub allow_config_change: bool,
    /// Encrypt checkpoints at rest (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSettings>,
}

/// `[checkpoints.encryption]`: every checkpoint gets a fresh data key
/// (AES-256-GCM for suite intl, SM4-GCM for gm), wrapped by the
/// key-encryption key (KEK) named here; see docs/checkpoints.md.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSettings {
    /// The KEK's id, recorded in every manifest (a label, not the key).
    pub key_id: String,
    /// File holding the KEK as 64 hex digits, readable by its owner only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the KEK as 64 hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// Still resume from an unencrypted checkpoint (one written before
    /// encryption was turned on). Off by default: anyone who can write to
    /// the store could plant one.
    pub allow_plaintext: bool,
}

impl EncryptionSettings {
    /// Where the KEK comes from: exactly one of `key_file`, `key_env`.
    pub fn source(&self) -> Result<KeySource, CoordinatorError> {
        if self.key_id.trim().is_empty() {
            return Err(CoordinatorError::Config(
                "checkpoints.encryption.key_id must name the key-encryption key                  (it is recorded in every manifest)"
                    .into(),
            ));
        }
        match (&self.key_file, &self.key_env) {
            (Some(f), None) => Ok(KeySource::File(f.clone())),
            (None, Some(v)) if !v.is_empty() => Ok(KeySource::Env(v.clone())),
            _ => Err(CoordinatorError::Config(
                "checkpoints.encryption needs exactly one of key_file (a file holding the KEK \
                 as 64 hex digits, mode 0600) or key_env (an environment variable holding it); \
                 the key itself never goes in the TOML"
                    .into(),
            )),
        }
    }

    /// What the store does: encrypt under the KEK (read now).
    pub fn sealing(&self) -> Result<Sealing, CoordinatorError> {
        let kek = LocalKek::load(&self.key_id, &self.source()?)?;
        Ok(Sealing::with_key(Arc::new(kek)).allow_plaintext(self.allow_plaintext))
    }
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        CheckpointSettings {
            dir: None,
            url: None,
            transcript_dir: None,
            keep_last: 3,
            allow_config_change: false,
            encryption: None,
        }
    }
}

impl CheckpointSettings {
    /// Where checkpoints go, if anywhere.
    pub fn location(&self) -> Result<Option<Location>, CoordinatorError> {
        match (&self.dir, &self.url) {
            (Some(_), Some(_)) => Err(CoordinatorError::Config(
                "checkpoints.dir and checkpoints.url are mutually exclusive: set dir for a \
                 local directory or url (s3://bucket/prefix) for object storage, not both"
                    .into(),
            )),
            (Some(d), None) => Ok(Some(Location::Dir(d.clone()))),
            (None, Some(u)) => match Location::parse(u)? {
                l @ Location::Object { .. } => Ok(Some(l)),
                Location::Dir(_) => Err(CoordinatorError::Config(format!(
                    "checkpoints.url must be s3://bucket/prefix, got {u:?}; \
                     for a local directory set checkpoints.dir"
                ))),
            },
            (None, None) => Ok(None),
        }
    }

    /// The store checkpoints go to, if any (opened, nothing read yet); says
    /// so when object storage leaves the federation without a transcript.
    pub fn open(&self) -> Result<Option<Arc<dyn CheckpointStore>>, CoordinatorError> {
        if self.url.is_some() && self.transcript_dir.is_none() {
            info!(
                "no round transcript: checkpoints go to object storage, which cannot append; \
                 set checkpoints.transcript_dir to keep one"
            );
        }
        let Some(location) = self.location()? else {
            return Ok(None);
        };
        let sealing = match &self.encryption {
            Some(e) => e.sealing()?,
            None => Sealing::none(),
        };
        location.open_sealed(sealing).map(Some)
    }

    /// The directory of the round transcript: `dir`, or `transcript_dir`
    /// with `url`; none means no transcript.
    pub fn transcript_dir(&self) -> Option<PathBuf> {
        self.dir.clone().or_else(|| self.transcript_dir.clone())
    }

    /// The checks of [`CheckpointSettings::location`], plus `transcript_dir`
    /// only with `url` (with `dir` the transcript lives in `dir`).
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        self.location()?;
        if let Some(e) = &self.encryption {
            // The key itself is read when the store is opened.
            e.source()?;
        }
        if self.dir.is_some() && self.transcript_dir.is_some() {
            return Err(CoordinatorError::Config(
                "checkpoints.transcript_dir is for checkpoints.url: with checkpoints.dir the \
                 transcript lives in that directory; remove transcript_dir"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_and_url_are_mutually_exclusive_and_url_must_be_s3() {
        let mut c = CheckpointSettings {
            dir: Some("ck".into()),
            url: Some("s3://bkt/p".into()),
            ..Default::default()
        };
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("mutually exclusive"), "{e}");
        c.dir = None;
        assert!(matches!(
            c.location(),
            Ok(Some(Location::Object { ref bucket, ref prefix })) if bucket == "bkt" && prefix == "p"
        ));
        c.url = Some("/tmp/x".into());
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("must be s3://"), "{e}");
        c.url = Some("gs://bkt/p".into());
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("s3://"), "{e}");
        c.url = None;
        c.dir = Some("ck".into());
        c.transcript_dir = Some("t".into());
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("transcript_dir"), "{e}");
    }

    #[test]
    fn encryption_names_one_key_source_and_never_the_key() {
        let parse = |t: &str| {
            crate::Settings::from_toml_str(t).and_then(|s| s.checkpoints.validate().map(|_| s))
        };
        let ok = parse(
            "[checkpoints]\ndir = \"ck\"\n[checkpoints.encryption]\nkey_id = \"k1\"\nkey_env = \"KEK\"\n",
        );
        let enc = ok
            .map_err(|e| e.to_string())
            .map(|s| s.checkpoints.encryption);
        let enc = match enc {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            enc.map(|e| e.source().ok()),
            Some(Some(KeySource::Env("KEK".into())))
        );
        for (toml, says) in [
            // The key itself in the TOML: an unknown field, refused.
            ("key_id = \"k1\"\nkey = \"00\"", "unknown field"),
            ("key_id = \"k1\"", "exactly one of key_file"),
            (
                "key_id = \"k1\"\nkey_env = \"A\"\nkey_file = \"f\"",
                "exactly one of key_file",
            ),
            ("key_env = \"A\"", "key_id"),
        ] {
            let t = format!("[checkpoints]\ndir = \"ck\"\n[checkpoints.encryption]\n{toml}\n");
            let e = parse(&t).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(says), "{toml}: {e}");
        }
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_when_the_store_opens()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let f = tmp.path().join("kek.hex");
        std::fs::write(&f, "ab".repeat(32))?;
        let c = CheckpointSettings {
            dir: Some(tmp.path().join("ck")),
            encryption: Some(EncryptionSettings {
                key_id: "k1".into(),
                key_file: Some(f.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640))?;
            let e = c.open().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("kek.hex"), "{e}");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
        }
        assert!(c.open()?.is_some());
        std::fs::write(&f, "not hex at all")?;
        let e = c.open().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("64 hex digits") && !e.contains("not hex at all"),
            "{e}"
        );
        Ok(())
    }
}
