//! `[checkpoints]`: where checkpoints go — a local directory (`dir`) or
//! S3-compatible object storage (`url = "s3://bucket/prefix"`), never both —
//! and where the round transcript goes.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::checkpoint::{CheckpointStore, Location};
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
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        CheckpointSettings {
            dir: None,
            url: None,
            transcript_dir: None,
            keep_last: 3,
            allow_config_change: false,
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
        self.location()?.map(|l| l.open()).transpose()
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
}
