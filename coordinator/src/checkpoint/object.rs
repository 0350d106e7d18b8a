//! The object-storage backend: `s3://bucket/prefix/round-NNNNNN/{model.safetensors,
//! optimiser.safetensors, manifest.json}` on any S3-compatible service,
//! through `object_store`.
//!
//! Object storage has no rename, so completeness is the manifest's job:
//!
//! 1. a re-save of the same round first deletes that round's manifest;
//! 2. the data objects are written (multipart above [`MULTIPART_ABOVE`]);
//! 3. `manifest.json` is written **last**, carrying each data object's size
//!    and SHA-256.
//!
//! Readers list the prefixes and ignore any without a manifest, or whose
//! listed objects are missing or of another size than the manifest says
//! ([`CheckpointStore::rounds`]); [`CheckpointStore::load`] also checks the
//! SHA-256 of what it reads, so resume skips a damaged checkpoint and takes
//! the next older one (an encrypted one stops resume: `object/encryption.rs`). Pruning deletes the manifest first, then the data,
//! so a checkpoint half-deleted by a crash is already invisible.
//!
//! `object_store` is async; this backend runs it on one process-wide
//! runtime of its own (`io.rs`) from a scoped thread, so its blocking
//! methods work from plain threads, from `spawn_blocking` and from inside
//! an async context alike (the CLI, `Federation::new`) without ever blocking
//! on a runtime from within itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use confide_proto::model::Model;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, UpdateVersion, WriteMultipart};
use tokio_stream::StreamExt;
use tracing::{debug, warn};

use super::envelope::{RawManifest, RewrapOutcome, Sealing, digest_mismatch, sha256_hex};
use super::io::block_on;
use super::keys::KeyWrapper;
use super::lease::Lease;
use super::{
    Checkpoint, CheckpointStore, MANIFEST, MODEL, Manifest, OPTIMISER, ObjectDigest, Saved,
    decode_optimiser, optimiser_file, round_dir_name,
};
use crate::error::CoordinatorError;

// What this backend does differently for an encrypted checkpoint.
mod encryption;
mod fence;

/// Objects larger than this are uploaded in parts (S3 caps a single PUT at
/// 5 GiB, and parts let a large model's upload proceed in parallel).
pub const MULTIPART_ABOVE: usize = 8 << 20;
/// Part size of a multipart upload (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once (bounds memory and connections).
const PARTS_IN_FLIGHT: usize = 4;

/// Checkpoints in an S3-compatible bucket (or any `object_store` store).
#[derive(Clone, Debug)]
pub struct ObjectStoreCheckpoints {
    store: Arc<dyn ObjectStore>,
    /// Key prefix of every checkpoint (may be empty: the bucket's root).
    prefix: Path,
    /// `s3://bucket/prefix`, for messages and [`Checkpoint::path`].
    url: String,
    /// The lease every write is checked against (active / standby only).
    fence: Option<Arc<Lease>>,
    /// Encryption at rest (none by default).
    sealing: Sealing,
}

impl ObjectStoreCheckpoints {
    /// `s3://bucket/prefix` configured from the standard `AWS_*` environment
    /// variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`, …).
    pub fn s3_from_env(bucket: &str, prefix: &str) -> Result<Self, CoordinatorError> {
        Self::s3_with(bucket, prefix, AmazonS3Builder::from_env())
    }

    /// `s3://bucket/prefix` with explicit `object_store` S3 options
    /// (`aws_endpoint`, `aws_access_key_id`, `allow_http`, …) and nothing
    /// from the environment (tests and tools).
    pub fn s3_with_options<'a>(
        bucket: &str,
        prefix: &str,
        options: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Result<Self, CoordinatorError> {
        let mut b = AmazonS3Builder::new();
        for (k, v) in options {
            let key = k
                .parse()
                .map_err(|e| CoordinatorError::Config(format!("object-store option {k:?}: {e}")))?;
            b = b.with_config(key, v);
        }
        Self::s3_with(bucket, prefix, b)
    }

    fn s3_with(
        bucket: &str,
        prefix: &str,
        builder: AmazonS3Builder,
    ) -> Result<Self, CoordinatorError> {
        let url = match prefix {
            "" => format!("s3://{bucket}"),
            p => format!("s3://{bucket}/{p}"),
        };
        let store = builder.with_bucket_name(bucket).build().map_err(|source| {
            CoordinatorError::ObjectStore {
                op: "configure",
                location: url.clone(),
                source: Box::new(source),
            }
        })?;
        Ok(Self::with_store(Arc::new(store), prefix, url))
    }

    /// Checkpoints under `prefix` of any `object_store` store (an in-memory
    /// one in unit tests); `url` names it in messages.
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str, url: String) -> Self {
        ObjectStoreCheckpoints {
            store,
            prefix: Path::from(prefix.trim_matches('/')),
            url,
            fence: None,
            sealing: Sealing::none(),
        }
    }

    fn key(&self, round: u64, file: &str) -> Path {
        self.prefix.clone().join(round_dir_name(round)).join(file)
    }

    fn round_url(&self, round: u64) -> String {
        format!("{}/{}", self.url, round_dir_name(round))
    }

    /// The URL of `key` (which includes the prefix), for messages.
    fn key_url(&self, key: &Path) -> String {
        let rel = key.as_ref().strip_prefix(self.prefix.as_ref());
        format!(
            "{}/{}",
            self.url,
            rel.unwrap_or(key.as_ref()).trim_start_matches('/')
        )
    }

    fn err(
        &self,
        op: &'static str,
        key: &Path,
    ) -> impl Fn(object_store::Error) -> CoordinatorError {
        let location = self.key_url(key);
        move |source| CoordinatorError::ObjectStore {
            op,
            location: location.clone(),
            source: Box::new(source),
        }
    }

    /// Every object under the prefix, by round: file name → size.
    async fn objects_by_round(
        &self,
    ) -> Result<BTreeMap<u64, BTreeMap<String, u64>>, CoordinatorError> {
        let root = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut listing = self.store.list(root);
        let mut out: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(self.err("list", &self.prefix))?;
            let parts: Vec<String> = match meta.location.prefix_match(&self.prefix) {
                Some(p) => p.map(|p| p.as_ref().to_string()).collect(),
                None => continue,
            };
            if let [dir, file] = parts.as_slice()
                && let Some(r) = dir
                    .strip_prefix("round-")
                    .and_then(|s| s.parse::<u64>().ok())
            {
                out.entry(r).or_default().insert(file.clone(), meta.size);
            }
        }
        Ok(out)
    }

    /// Read a data object: in one GET when small, else in [`PART_SIZE`]
    /// ranges, [`PARTS_IN_FLIGHT`] at a time, so that no single request of a
    /// large model has to finish within the client's request timeout
    /// (`AWS_TIMEOUT`, 30 s by default) on a slow link.
    async fn get(&self, key: &Path) -> Result<Vec<u8>, CoordinatorError> {
        let size = self
            .store
            .head(key)
            .await
            .map_err(self.err("head", key))?
            .size;
        if size <= MULTIPART_ABOVE as u64 {
            let r = self.store.get(key).await.map_err(self.err("get", key))?;
            return Ok(r.bytes().await.map_err(self.err("get", key))?.to_vec());
        }
        let len = usize::try_from(size).map_err(|_| CoordinatorError::TornCheckpoint {
            location: self.key_url(key),
            reason: format!("{size} bytes do not fit in memory"),
        })?;
        let mut out = vec![0u8; len];
        let mut ranges = (0..size)
            .step_by(PART_SIZE)
            .map(|start| start..(start + PART_SIZE as u64).min(size));
        let mut parts = tokio::task::JoinSet::new();
        loop {
            while parts.len() < PARTS_IN_FLIGHT
                && let Some(r) = ranges.next()
            {
                let (store, key) = (self.store.clone(), key.clone());
                parts.spawn(async move { (r.clone(), store.get_range(&key, r).await) });
            }
            let Some(done) = parts.join_next().await else {
                break;
            };
            let (r, bytes) = done?;
            let bytes = bytes.map_err(self.err("get (range)", key))?;
            // Ranges are within the size just read; a shorter answer means
            // the object changed under us (its digest will tell).
            match out.get_mut(r.start as usize..r.end as usize) {
                Some(slot) if slot.len() == bytes.len() => slot.copy_from_slice(&bytes),
                _ => {
                    return Err(CoordinatorError::TornCheckpoint {
                        location: self.key_url(key),
                        reason: format!("range {r:?} answered {} bytes", bytes.len()),
                    });
                }
            }
        }
        Ok(out)
    }

    /// `round`'s manifest as stored, and the version the read saw (for a
    /// conditional rewrite).
    async fn get_manifest(
        &self,
        round: u64,
    ) -> Result<(RawManifest, UpdateVersion), CoordinatorError> {
        let key = self.key(round, MANIFEST);
        let (bytes, version) = match self.store.get(&key).await {
            Err(object_store::Error::NotFound { .. }) => {
                return Err(CoordinatorError::NoSuchCheckpoint {
                    location: self.url.clone(),
                    round,
                });
            }
            r => {
                let r = r.map_err(self.err("get", &key))?;
                let (e_tag, version) = (r.meta.e_tag.clone(), r.meta.version.clone());
                let b = r.bytes().await.map_err(self.err("get", &key))?;
                (b, UpdateVersion { e_tag, version })
            }
        };
        Ok((self.parse_manifest(round, &bytes)?, version))
    }

    /// The data objects a manifest requires, with size and digest when it
    /// records them (a manifest written by the local backend and copied up
    /// has none: then only presence is checked).
    fn required(m: &Manifest) -> Vec<(String, Option<&ObjectDigest>)> {
        if !m.objects.is_empty() {
            return m
                .objects
                .iter()
                .map(|o| (o.name.clone(), Some(o)))
                .collect();
        }
        let mut v = vec![(MODEL.to_string(), None)];
        v.extend(m.optimiser_state.iter().map(|f| (f.clone(), None)));
        v
    }

    /// Why the listed objects of `round` do not match its manifest, if they don't.
    fn mismatch(m: &Manifest, round: u64, listed: &BTreeMap<String, u64>) -> Option<String> {
        if m.round != round {
            return Some(format!("its manifest is of round {}", m.round));
        }
        Self::required(m)
            .into_iter()
            .find_map(|(name, d)| match (listed.get(&name), d) {
                (None, _) => Some(format!("{name} is missing")),
                (Some(size), Some(d)) if *size != d.size => Some(format!(
                    "{name} has {size} bytes, the manifest says {}",
                    d.size
                )),
                _ => None,
            })
    }

    /// Read data object `name` of `round` and check it against the manifest
    /// (an encrypted one's digest is checked as it is opened).
    async fn get_checked(
        &self,
        m: &Manifest,
        round: u64,
        name: &str,
        sealed: bool,
    ) -> Result<Vec<u8>, CoordinatorError> {
        let bytes = match self.get(&self.key(round, name)).await {
            Err(CoordinatorError::ObjectStore { source, .. })
                if matches!(*source, object_store::Error::NotFound { .. }) =>
            {
                return Err(CoordinatorError::TornCheckpoint {
                    location: self.round_url(round),
                    reason: format!("{name} is missing"),
                });
            }
            r => r?,
        };
        if let Some(reason) = digest_mismatch(m, name, &bytes).filter(|_| !sealed) {
            return Err(CoordinatorError::TornCheckpoint {
                location: self.round_url(round),
                reason,
            });
        }
        Ok(bytes)
    }

    /// Upload one data object: one PUT, or a multipart upload when large
    /// (aborted on failure, so no parts are left behind when it can be helped).
    async fn put_data(&self, key: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
        if bytes.len() <= MULTIPART_ABOVE {
            self.store
                .put(key, PutPayload::from(bytes.to_vec()))
                .await
                .map_err(self.err("put", key))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(self.err("put (multipart)", key))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        for chunk in bytes.chunks(PART_SIZE) {
            if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                // The error of the part is the one to report, not the abort's.
                let _ = w.abort().await;
                return Err(self.err("put (multipart)", key)(e));
            }
            w.write(chunk);
        }
        w.finish().await.map_err(self.err("put (multipart)", key))?;
        Ok(())
    }

    async fn delete_key(&self, key: &Path) -> Result<(), CoordinatorError> {
        self.fence_check()?;
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key)(e)),
        }
    }

    /// Delete a round's prefix: the manifest first, then everything else.
    async fn delete_round(
        &self,
        round: u64,
        files: impl IntoIterator<Item = String>,
    ) -> Result<(), CoordinatorError> {
        self.delete_key(&self.key(round, MANIFEST)).await?;
        for f in files.into_iter().filter(|f| f != MANIFEST) {
            self.delete_key(&self.key(round, &f)).await?;
        }
        Ok(())
    }

    async fn save_async(
        &self,
        manifest: &Manifest,
        model_bytes: &[u8],
        optimiser: Option<(&[f32], &[f32])>,
    ) -> Result<Saved, CoordinatorError> {
        let round = manifest.round;
        // Under a lease the manifest carries its fencing token (inside what
        // an encrypted checkpoint's MAC covers).
        let mut manifest = manifest.clone();
        if let Some(token) = self.fence_check()? {
            manifest.lease_token = Some(token);
        }
        let manifest = &manifest;
        // A checkpoint of this round written before a crash must not stay
        // visible while its objects are being replaced.
        self.delete_key(&self.key(round, MANIFEST)).await?;
        let opt_bytes = optimiser.map(|(m, v)| optimiser_file(m, v)).transpose()?;
        let sealed = self
            .sealing
            .seal(manifest, model_bytes, opt_bytes.as_deref())?;
        let mut objects = Vec::new();
        let mut data_bytes = 0u64;
        let files = match &sealed {
            Some(s) => [
                s.objects.first().map(|(n, b)| (*n, Some(b.as_slice()))),
                s.objects.get(1).map(|(n, b)| (*n, Some(b.as_slice()))),
            ],
            None => [
                Some((MODEL, Some(model_bytes))),
                Some((OPTIMISER, opt_bytes.as_deref())),
            ],
        };
        for (name, bytes) in files.into_iter().flatten() {
            let Some(bytes) = bytes else { continue };
            debug!(
                round,
                object = name,
                bytes = bytes.len(),
                "uploading checkpoint object"
            );
            self.fence_check()?;
            self.put_data(&self.key(round, name), bytes).await?;
            data_bytes += bytes.len() as u64;
            // A sealed manifest already records its objects' digests.
            if sealed.is_none() {
                objects.push(ObjectDigest {
                    name: name.into(),
                    size: bytes.len() as u64,
                    sha256: sha256_hex(bytes),
                });
            }
        }
        let mut manifest = manifest.clone();
        manifest.optimiser_state = opt_bytes.as_ref().map(|_| OPTIMISER.to_string());
        manifest.objects = objects;
        let json = match sealed {
            // Its manifest records the same digests, and its MAC.
            Some(s) => s.manifest_json,
            None => serde_json::to_vec_pretty(&manifest).map_err(CoordinatorError::ManifestJson)?,
        };
        // The write that makes the checkpoint visible lands right after a
        // renewal, so while the lease is provably this coordinator's.
        if let Some(lease) = &self.fence
            && Some(lease.renew().await?) != manifest.lease_token
        {
            return Err(CoordinatorError::Fenced {
                location: lease.url().into(),
                reason: "the fencing token changed during the write".into(),
            });
        }
        let key = self.key(round, MANIFEST);
        let total = data_bytes + json.len() as u64;
        self.store
            .put(&key, PutPayload::from(json))
            .await
            .map_err(self.err("put", &key))?;
        Ok(Saved {
            location: self.round_url(round),
            bytes: total,
        })
    }

    /// Every complete checkpoint's round and fencing token (0: none),
    /// ascending, before the fencing rule drops any.
    pub(super) async fn complete_with_tokens(&self) -> Result<Vec<(u64, u64)>, CoordinatorError> {
        let mut out = Vec::new();
        for (round, listed) in self.objects_by_round().await? {
            if !listed.contains_key(MANIFEST) {
                continue;
            }
            let mut token = 0;
            let why = match self.get_manifest(round).await {
                Ok((m, _)) => {
                    token = m.manifest.lease_token.unwrap_or(0);
                    self.check_listed(&m, round, &listed)?
                }
                // Pruned between the listing and the read.
                Err(CoordinatorError::NoSuchCheckpoint { .. }) => continue,
                Err(e @ CoordinatorError::TornCheckpoint { .. }) => Some(e.to_string()),
                Err(e) => return Err(e),
            };
            match why {
                None => out.push((round, token)),
                Some(why) => {
                    warn!(checkpoint = %self.round_url(round), %why, "ignoring an incomplete checkpoint")
                }
            }
        }
        Ok(out)
    }

    async fn load_async(&self, round: u64) -> Result<Checkpoint, CoordinatorError> {
        let (raw, _) = self.get_manifest(round).await?;
        let url = self.round_url(round);
        if raw.envelope.is_none() && raw.manifest.round != round {
            return Err(CoordinatorError::TornCheckpoint {
                location: url,
                reason: format!("its manifest is of round {}", raw.manifest.round),
            });
        }
        let opened = self.sealing.open(raw, round, &url)?;
        let (manifest, sealed) = (&opened.manifest, opened.sealed());
        let model_bytes = self.get_checked(manifest, round, MODEL, sealed).await?;
        let model_bytes = Sealing::open_object(&opened, MODEL, model_bytes, &url)?;
        let model =
            Model::from_safetensors(&model_bytes).map_err(CoordinatorError::CheckpointModel)?;
        let optimiser = match &manifest.optimiser_state {
            Some(f) => {
                let b = self.get_checked(manifest, round, f, sealed).await?;
                Some(decode_optimiser(&Sealing::open_object(
                    &opened, f, b, &url,
                )?)?)
            }
            None => None,
        };
        let manifest = opened.manifest;
        Ok(Checkpoint {
            manifest,
            model,
            model_bytes,
            optimiser,
            path: PathBuf::from(self.round_url(round)),
        })
    }

    /// Retention, then the debris of uploads a crash interrupted: prefixes
    /// without a (valid) manifest older than the newest complete checkpoint.
    /// Newer ones are left alone: only a writer racing this one could be
    /// filling them.
    async fn sweep(&self) -> Result<(), CoordinatorError> {
        let complete = self.rounds_async().await?;
        let Some(&newest) = complete.last() else {
            return Ok(());
        };
        for (round, files) in self.objects_by_round().await? {
            if round < newest && !complete.contains(&round) {
                debug!(round, "removing an incomplete checkpoint's objects");
                self.delete_round(round, files.into_keys()).await?;
            }
        }
        Ok(())
    }
}

impl CheckpointStore for ObjectStoreCheckpoints {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn save(
        &self,
        manifest: &Manifest,
        model_bytes: &[u8],
        optimiser: Option<(&[f32], &[f32])>,
    ) -> Result<Saved, CoordinatorError> {
        block_on(self.save_async(manifest, model_bytes, optimiser))
    }

    fn rounds(&self) -> Result<Vec<u64>, CoordinatorError> {
        block_on(self.rounds_async())
    }

    fn load_manifest(&self, round: u64) -> Result<Manifest, CoordinatorError> {
        let (raw, _) = block_on(self.get_manifest(round))?;
        self.sealing.listing(raw, round, &self.round_url(round))
    }

    fn rewrap(
        &self,
        round: u64,
        old: Arc<dyn KeyWrapper>,
        new: &dyn KeyWrapper,
    ) -> Result<RewrapOutcome, CoordinatorError> {
        block_on(self.rewrap_async(round, old, new))
    }

    fn load(&self, round: u64) -> Result<Checkpoint, CoordinatorError> {
        block_on(self.load_async(round))
    }

    fn delete(&self, round: u64) -> Result<(), CoordinatorError> {
        block_on(async {
            let files = self
                .objects_by_round()
                .await?
                .remove(&round)
                .unwrap_or_default();
            self.delete_round(round, files.into_keys()).await
        })
    }

    fn prune(&self, keep: usize, best: Option<u64>) -> Result<(), CoordinatorError> {
        block_on(async {
            let all = self.rounds_async().await?;
            let cut = all.len().saturating_sub(keep.max(1));
            let listed = self.objects_by_round().await?;
            for r in all[..cut].iter().filter(|r| Some(**r) != best) {
                let files = listed
                    .get(r)
                    .map(|f| f.keys().cloned().collect())
                    .unwrap_or_else(Vec::new);
                self.delete_round(*r, files).await?;
            }
            self.sweep().await
        })
    }
}
