//! The lease that makes one of several coordinators the active one:
//! `lease.json` beside the checkpoints, changed only by conditional writes
//! (create-if-absent, update-if-ETag-matches), so two coordinators can never
//! both believe they took it.
//!
//! ```text
//! standby: read ─▶ absent ──────────────────────▶ create (token = floor + 1)
//!               ├▶ released by its holder ───────▶ update (token + 1)
//!               └▶ held: unchanged for one TTL? ─▶ update (token + 1), else wait
//! active:  every renew interval: update-if-ETag (same token, renewals + 1)
//!          412 and not ours any more ─▶ fenced (stop, write nothing)
//! ```
//!
//! **Expiry without trusting clocks.** A standby never compares the lease's
//! timestamps with its own clock: it times how long it has seen the *same*
//! ETag on its own monotonic clock, and takes the lease only after one TTL
//! of no change. Each renewal changes the object's content (the renewal
//! counter), hence its ETag, so a live holder is never taken over.
//!
//! **Fencing.** The holder counts its lease valid until one TTL (less a
//! tenth for clock-rate differences) after it *sent* its last successful
//! renewal: no standby can have seen that renewal earlier than it was sent,
//! so none can take the lease before then. Every checkpoint write checks
//! that validity, and the manifest — the write that makes a checkpoint
//! visible — is preceded by a renewal, so it lands while the lease is
//! provably ours. The manifest carries the fencing token, and readers ignore
//! a checkpoint whose token is lower than that of an older round's
//! (`object.rs`): even a writer stalled past its lease (a stopped process
//! resumed) cannot make its late checkpoint the one a resume picks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::CoordinatorError;

/// The lease object's name, beside the checkpoints' prefixes.
pub const LEASE: &str = "lease.json";

/// The content of `lease.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeaseDoc {
    /// The holder's node name (`ha.node`).
    pub holder: String,
    /// The holder process's random id: a restarted coordinator of the same
    /// name is another holder.
    pub instance: String,
    /// Fencing token: one more at every change of holder.
    pub token: u64,
    /// The holder's TTL in milliseconds.
    pub ttl_ms: u64,
    /// Renewals by this holder (changes the ETag at every renewal).
    pub renewals: u64,
    /// Given up on purpose (a clean stop): may be taken at once.
    pub released: bool,
}

/// What a standby last saw of a lease held by someone else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The ETag it had.
    pub etag: String,
    /// When this standby first saw that ETag.
    pub since: Instant,
}

/// A standby's next move, from what it reads (pure, so that the timing
/// rules are tested without a store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No lease yet: create it.
    Create,
    /// Held and alive: look again later.
    Wait {
        /// Its holder.
        holder: String,
        /// Time left before it may be taken, if it stays unchanged.
        left: Duration,
    },
    /// Take it over: update-if-ETag with this token.
    Take {
        /// The ETag to replace.
        etag: String,
        /// The new fencing token.
        token: u64,
    },
}

/// The next step of a standby that read `current` (document and ETag) at
/// `now`, having last seen `seen`; `floor` is the highest fencing token any
/// checkpoint carries, so a recreated lease never goes backwards.
pub fn next_step(
    current: Option<(&LeaseDoc, &str)>,
    seen: &mut Option<Seen>,
    now: Instant,
    ttl: Duration,
    floor: u64,
) -> Step {
    let Some((doc, etag)) = current else {
        *seen = None;
        return Step::Create;
    };
    let token = doc.token.max(floor) + 1;
    if doc.released {
        return Step::Take {
            etag: etag.into(),
            token,
        };
    }
    let since = match seen {
        Some(s) if s.etag == etag => s.since,
        _ => {
            *seen = Some(Seen {
                etag: etag.into(),
                since: now,
            });
            now
        }
    };
    // The longer of the two TTLs: a holder configured with a longer one
    // counts on it.
    let ttl = ttl.max(Duration::from_millis(doc.ttl_ms));
    let idle = now.saturating_duration_since(since);
    if idle >= ttl {
        Step::Take {
            etag: etag.into(),
            token,
        }
    } else {
        Step::Wait {
            holder: doc.holder.clone(),
            left: ttl - idle,
        }
    }
}

/// What the holder knows of its lease.
#[derive(Clone, Debug)]
struct Held {
    doc: LeaseDoc,
    etag: String,
    valid_until: Instant,
}

/// One coordinator's side of the lease.
#[derive(Debug)]
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    key: Path,
    url: String,
    holder: String,
    instance: String,
    ttl: Duration,
    renew: Duration,
    held: Mutex<Option<Held>>,
}

impl Lease {
    /// The lease at `key` of `store` (named `url` in messages), for node
    /// `holder`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: Path,
        url: String,
        holder: &str,
        ttl: Duration,
        renew: Duration,
    ) -> Self {
        let mut id = [0u8; 8];
        rand::rng().fill_bytes(&mut id);
        Lease {
            store,
            key,
            url,
            holder: holder.into(),
            instance: hex::encode(id),
            ttl,
            renew,
            held: Mutex::new(None),
        }
    }

    /// The lease object's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fenced(&self, reason: impl Into<String>) -> CoordinatorError {
        CoordinatorError::Fenced {
            location: self.url.clone(),
            reason: reason.into(),
        }
    }

    fn store_err(&self, op: &'static str) -> impl Fn(object_store::Error) -> CoordinatorError {
        let location = self.url.clone();
        move |source| CoordinatorError::ObjectStore {
            op,
            location: location.clone(),
            source: Box::new(source),
        }
    }

    /// The lease as stored, with its ETag; none if absent.
    pub async fn read(&self) -> Result<Option<(LeaseDoc, String)>, CoordinatorError> {
        let got = match self.store.get(&self.key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_err("get")(e)),
        };
        let etag = got.meta.e_tag.clone().ok_or_else(|| {
            self.fenced("the store returned no ETag, which the lease needs for conditional updates")
        })?;
        let bytes = got.bytes().await.map_err(self.store_err("get"))?;
        let doc = serde_json::from_slice(&bytes).map_err(|e| {
            self.fenced(format!(
                "unreadable lease ({e}); remove it only once no coordinator runs"
            ))
        })?;
        Ok(Some((doc, etag)))
    }

    /// Conditional write of `doc`; `Ok(None)` when the condition failed.
    async fn put(&self, doc: &LeaseDoc, mode: PutMode) -> Result<Option<String>, CoordinatorError> {
        let json = serde_json::to_vec(doc).map_err(CoordinatorError::ManifestJson)?;
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.key, PutPayload::from(json), opts)
            .await
        {
            Ok(r) => Ok(Some(r.e_tag.ok_or_else(|| {
                self.fenced("the store returned no ETag for the lease")
            })?)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(None),
            Err(e) => Err(self.store_err("put (conditional)")(e)),
        }
    }

    /// Wait until this coordinator holds the lease (or `stop` turns true:
    /// `Ok(None)`); returns the fencing token.
    pub async fn acquire(
        &self,
        floor: u64,
        mut stop: watch::Receiver<bool>,
    ) -> Result<Option<u64>, CoordinatorError> {
        let mut seen = None;
        let mut told = String::new();
        loop {
            let current = self.read().await?;
            let step = next_step(
                current.as_ref().map(|(d, e)| (d, e.as_str())),
                &mut seen,
                Instant::now(),
                self.ttl,
                floor,
            );
            let (token, mode) = match step {
                Step::Create => (floor + 1, PutMode::Create),
                Step::Take { etag, token } => (
                    token,
                    PutMode::Update(UpdateVersion {
                        e_tag: Some(etag),
                        version: None,
                    }),
                ),
                Step::Wait { holder, left } => {
                    if told != holder {
                        info!(lease = %self.url, %holder, "standby: another coordinator is active");
                        told = holder;
                    }
                    let nap = self.renew.min(left.max(Duration::from_millis(50)));
                    tokio::select! {
                        _ = tokio::time::sleep(nap) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(None),
                    }
                    continue;
                }
            };
            let doc = LeaseDoc {
                holder: self.holder.clone(),
                instance: self.instance.clone(),
                token,
                ttl_ms: self.ttl.as_millis().min(u64::MAX as u128) as u64,
                renewals: 0,
                released: false,
            };
            let sent = Instant::now();
            if let Some(etag) = self.put(&doc, mode).await? {
                info!(lease = %self.url, token, "lease taken: this coordinator is active");
                *self.held() = Some(Held {
                    doc,
                    etag,
                    valid_until: sent + self.validity(),
                });
                return Ok(Some(token));
            }
            // Someone else was faster, or the holder renewed: read again.
            seen = None;
        }
    }

    /// How long a renewal sent now keeps the lease ours: one TTL less a
    /// tenth, for clocks that tick at slightly different rates.
    fn validity(&self) -> Duration {
        self.ttl - self.ttl / 10
    }

    /// The fencing token, if the lease is held and still valid now.
    pub fn check(&self) -> Result<u64, CoordinatorError> {
        match &*self.held() {
            Some(h) if Instant::now() < h.valid_until => Ok(h.doc.token),
            Some(_) => Err(self.fenced("not renewed within its TTL")),
            None => Err(self.fenced("not held")),
        }
    }

    /// Renew now: the lease stays ours for another TTL, or this
    /// coordinator learns it is fenced.
    pub async fn renew(&self) -> Result<u64, CoordinatorError> {
        let Some(held) = self.held().clone() else {
            return Err(self.fenced("not held"));
        };
        let mut doc = held.doc.clone();
        doc.renewals += 1;
        let sent = Instant::now();
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(held.etag.clone()),
            version: None,
        });
        let etag = match self.put(&doc, mode).await? {
            Some(etag) => etag,
            None => match self.read().await? {
                // An earlier renewal of ours landed although its answer was
                // lost: the lease is still ours, under a newer ETag.
                Some((now, etag)) if now.instance == self.instance && now.token == doc.token => {
                    doc = now;
                    etag
                }
                other => {
                    *self.held() = None;
                    let who = other
                        .map(|(d, _)| format!("taken by {} with token {}", d.holder, d.token))
                        .unwrap_or_else(|| "deleted from the store".into());
                    return Err(self.fenced(who));
                }
            },
        };
        let token = doc.token;
        *self.held() = Some(Held {
            doc,
            etag,
            valid_until: sent + self.validity(),
        });
        Ok(token)
    }

    /// Renew every renew interval until fenced; `lost` gets the reason.
    /// Transient store errors are retried while the lease is still valid.
    pub async fn keep(self: Arc<Self>, lost: watch::Sender<Option<String>>) {
        loop {
            tokio::time::sleep(self.renew).await;
            if lost.is_closed() {
                return;
            }
            let why = match self.renew().await {
                Ok(_) => continue,
                Err(e @ CoordinatorError::Fenced { .. }) => e.to_string(),
                Err(e) => match self.check() {
                    Ok(_) => {
                        warn!(error = %e, "lease renewal failed; retrying while it is valid");
                        continue;
                    }
                    Err(f) => format!("{f} (last renewal error: {e})"),
                },
            };
            warn!(reason = %why, "lease lost");
            let _ = lost.send(Some(why));
            return;
        }
    }

    /// Give the lease up (a clean stop), so a standby takes it at once.
    pub async fn release(&self) {
        let Some(held) = self.held().take() else {
            return;
        };
        let mut doc = held.doc;
        doc.released = true;
        doc.renewals += 1;
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(held.etag),
            version: None,
        });
        match self.put(&doc, mode).await {
            Ok(Some(_)) => info!(lease = %self.url, "lease released"),
            Ok(None) => warn!(lease = %self.url, "lease not released: no longer ours"),
            Err(e) => warn!(error = %e, "lease not released; a standby takes it after the TTL"),
        }
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
