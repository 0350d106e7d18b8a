//! The site registry: names, member ids, sessions and task streams. Admission
//! checks that need no round state live here too.

use std::collections::HashMap;
use std::sync::Arc;

use confide_crypto::{MemberId, Stage};
use confide_proto::task_parts::{AdvertPiece, OutgoingTask, StoredEncoding};
use confide_proto::v1 as pb;
use rand::Rng;
use tokio::sync::mpsc;

use crate::error::RequestError;

/// A task queued for a site's stream and kept for replay.
#[derive(Debug)]
pub struct OutTask {
    /// The stage whose answer the task asks for: once that answer is
    /// accepted the task leaves the replay log.
    pub asks: Option<Stage>,
    /// The task, held whole when small, else encoded once and streamed in
    /// parts (`confide_proto::task_parts`).
    pub task: OutgoingTask,
}

impl OutTask {
    /// `task` ready for the streams. The round announcement stays whole:
    /// the transport adds the CRL in force as it leaves.
    pub fn new(task: pb::Task) -> Self {
        use pb::task::Kind;
        let asks = match &task.kind {
            Some(Kind::NeighbourKeys(_)) => Some(Stage::ShareKeys),
            Some(Kind::IncomingShares(_)) => Some(Stage::MaskedInput),
            Some(Kind::ConsistencyRequest(_)) => Some(Stage::Consistency),
            Some(Kind::UnmaskRequest(_)) => Some(Stage::Unmask),
            _ => None,
        };
        let task = if matches!(task.kind, Some(Kind::RoundStart(_))) {
            OutgoingTask::whole(task)
        } else {
            OutgoingTask::new(task)
        };
        OutTask { asks, task }
    }

    /// A site's NeighbourKeys, built from its neighbours' shared adverts
    /// (`OutgoingTask::neighbour_keys`); it asks for the site's shares, as
    /// [`OutTask::new`] says of a NeighbourKeys.
    pub fn neighbour_keys(round: u64, adverts: &[AdvertPiece]) -> Self {
        OutTask {
            asks: Some(Stage::ShareKeys),
            task: OutgoingTask::neighbour_keys(round, adverts),
        }
    }

    /// A task whose encoding (`len` bytes) is held at `at` outside
    /// memory; it asks for the answer to `asks`.
    pub fn stored(asks: Stage, at: Arc<dyn StoredEncoding>, len: usize) -> Self {
        OutTask {
            asks: Some(asks),
            task: OutgoingTask::stored(at, len),
        }
    }

    /// [`OutTask::new`], to share among streams.
    pub fn shared(task: pb::Task) -> SharedTask {
        Arc::new(OutTask::new(task))
    }
}

/// A task as queued and kept for replay: one allocation however many sites
/// it goes to (the unmask request at n = 1000 is about 600 KB, the same for
/// every survivor), encoded once when it is sent in parts.
pub type SharedTask = Arc<OutTask>;

/// Longest verifying key of any suite (SEC1 uncompressed P-521).
const MAX_VERIFYING_KEY: usize = 133;

/// A site's verified session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Site name.
    pub site: String,
    /// Member id.
    pub member: MemberId,
}

struct SiteEntry {
    member: MemberId,
    session: String,
    verifying_key: Vec<u8>,
    tx: Option<mpsc::UnboundedSender<SharedTask>>,
    /// Which of the site's streams `tx` is (a closed older one must not
    /// count as the site leaving).
    stream: u64,
}

impl SiteEntry {
    fn connected(&self) -> bool {
        self.tx.as_ref().is_some_and(|t| !t.is_closed())
    }
}

/// Every site that ever joined, by name, and the live sessions.
pub struct Registry {
    sites: HashMap<String, SiteEntry>,
    sessions: HashMap<String, String>,
    next_member: MemberId,
    streams_opened: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            sites: HashMap::new(),
            sessions: HashMap::new(),
            next_member: 1,
            streams_opened: 0,
        }
    }
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// The TLS identity (if any) must be the site itself.
pub fn check_peer(site: &str, peer: Option<&str>) -> Result<(), RequestError> {
    match peer {
        Some(p) if p != site => Err(RequestError::IdentityMismatch {
            peer: p.to_string(),
            site: site.to_string(),
        }),
        _ => Ok(()),
    }
}

impl Registry {
    /// Register (or re-register) `site`; returns a fresh session token. A
    /// rejoin replaces the session and the key and keeps the member id.
    pub fn join(
        &mut self,
        site: &str,
        verifying_key: &[u8],
        peer: Option<&str>,
        max_sites: usize,
    ) -> Result<String, RequestError> {
        if site.is_empty()
            || site.len() > 253
            || !site
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(RequestError::SiteName);
        }
        if verifying_key.is_empty() || verifying_key.len() > MAX_VERIFYING_KEY {
            return Err(RequestError::VerifyingKey);
        }
        check_peer(site, peer)?;
        let session = random_token();
        if let Some(e) = self.sites.get_mut(site) {
            let old = std::mem::replace(&mut e.session, session.clone());
            e.verifying_key = verifying_key.to_vec();
            self.sessions.remove(&old);
        } else {
            if self.sites.len() >= max_sites {
                return Err(RequestError::TooManySites { max_sites });
            }
            let member = self.next_member;
            self.next_member += 1;
            self.sites.insert(
                site.to_string(),
                SiteEntry {
                    member,
                    session: session.clone(),
                    verifying_key: verifying_key.to_vec(),
                    tx: None,
                    stream: 0,
                },
            );
        }
        self.sessions.insert(session.clone(), site.to_string());
        Ok(session)
    }

    /// The session's site, checked against the TLS identity.
    pub fn session(&self, session: &str, peer: Option<&str>) -> Result<SessionInfo, RequestError> {
        let site = self
            .sessions
            .get(session)
            .ok_or(RequestError::UnknownSession)?;
        check_peer(site, peer)?;
        let e = self.sites.get(site).ok_or(RequestError::UnknownSession)?;
        Ok(SessionInfo {
            site: site.clone(),
            member: e.member,
        })
    }

    /// The verifying key `site` joined with (empty if unknown).
    pub fn verifying_key(&self, site: &str) -> Vec<u8> {
        self.sites
            .get(site)
            .map(|e| e.verifying_key.clone())
            .unwrap_or_default()
    }

    /// Make `tx` the site's task stream (replacing an older one); returns
    /// the stream's number for [`Registry::is_current_stream`].
    pub fn set_stream(&mut self, site: &str, tx: mpsc::UnboundedSender<SharedTask>) -> u64 {
        self.streams_opened += 1;
        let n = self.streams_opened;
        if let Some(e) = self.sites.get_mut(site) {
            e.tx = Some(tx);
            e.stream = n;
        }
        n
    }

    /// The member id of `site`, if it ever joined, when `stream` is still
    /// its current task stream.
    pub fn is_current_stream(&self, site: &str, stream: u64) -> Option<MemberId> {
        self.sites
            .get(site)
            .filter(|e| e.stream == stream)
            .map(|e| e.member)
    }

    /// Queue `task` on the site's stream, if it has one. A stream that has
    /// gone is not an error: the task is replayed when the site reconnects.
    pub fn send(&self, site: &str, task: SharedTask) {
        if let Some(tx) = self.sites.get(site).and_then(|e| e.tx.as_ref()) {
            let _ = tx.send(task);
        }
    }

    /// Sites with an open task stream, by member id.
    pub fn connected(&self) -> Vec<(MemberId, String)> {
        let mut v: Vec<(MemberId, String)> = self
            .sites
            .iter()
            .filter(|(_, e)| e.connected())
            .map(|(n, e)| (e.member, n.clone()))
            .collect();
        v.sort();
        v
    }

    /// How many sites have an open task stream.
    pub fn connected_count(&self) -> usize {
        self.sites.values().filter(|e| e.connected()).count()
    }

    /// Queue `task` on every stream.
    pub fn broadcast(&self, task: pb::Task) {
        let task = OutTask::shared(task);
        for e in self.sites.values() {
            if let Some(tx) = &e.tx {
                let _ = tx.send(task.clone());
            }
        }
    }

    /// Drop every task stream (shutdown).
    pub fn close_streams(&mut self) {
        for e in self.sites.values_mut() {
            e.tx = None;
        }
    }

    /// Whether every site's task stream has gone.
    pub fn all_disconnected(&self) -> bool {
        self.sites.values().all(|e| !e.connected())
    }
}
