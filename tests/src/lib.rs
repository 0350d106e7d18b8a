//! # confide-tests
//!
//! End-to-end tests of Confide over real gRPC on 127.0.0.1 port 0: the
//! coordinator library (`serve`), real sites (`confide_client::run_site`) and,
//! for protocol-level checks, a scripted [`FakeSite`] that speaks the wire
//! protocol with chosen inputs.
//!
//! ```text
//!  run_site ×n ──gRPC──▶ serve(settings, listener, shutdown) ──▶ checkpoints/
//!  FakeSite (known deltas, bad submissions) ──┘
//! ```
//!
//! ```
//! let s = confide_tests::settings(2, confide_crypto::Suite::Intl);
//! assert!(s.tls.insecure && s.rounds == 2);
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use confide_coordinator::{CoordinatorError, ServeReport, Settings};
use confide_crypto::protocol::{
    EncryptedShare, IdentityVerifier, IncomingShares, KeyAdvert, NeighbourKeys, RelayedAdvert,
    RelayedKeyVerifier, SitePolicy,
};
use confide_crypto::quant::Quantiser;
use confide_crypto::ring::{Ring, to_le_bytes};
use confide_crypto::suite::SigningKey;
use confide_crypto::{MemberId, SiteMachine, Suite};
use confide_proto::v1 as pb;
use confide_proto::{context, convert, layout};
use pb::site_client::SiteClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

mod upload;
pub use upload::{StagedUpload, upload};

/// Boxed error for tests.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The breast-cancer CSV (569 rows, label `malignant`).
pub const BREAST_CANCER: &str = include_str!("../../examples/data/breast_cancer_wisconsin.csv");

/// Test settings: insecure transport, logistic regression on the 30
/// breast-cancer features, statistics round, short stage timeouts.
pub fn settings(rounds: u64, suite: Suite) -> Settings {
    let mut s = Settings {
        federation: "test".into(),
        suite,
        rounds,
        min_sites: 3,
        max_sites: 20,
        ..Default::default()
    };
    s.tls.insecure = true;
    s.secagg.stage_timeout_secs = 8;
    s.final_evaluation = true;
    s
}

fn rows(csv: &str) -> (String, Vec<(f64, String)>) {
    let mut lines = csv.lines();
    let header = lines.next().unwrap_or_default().to_string();
    let col = header
        .split(',')
        .position(|h| h == "radius_mean")
        .unwrap_or(0);
    let rows = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            (
                l.split(',')
                    .nth(col)
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0.0),
                l.to_string(),
            )
        })
        .collect();
    (header, rows)
}

fn write_part(
    dir: &Path,
    name: &str,
    header: &str,
    part: &[(f64, String)],
) -> std::io::Result<PathBuf> {
    let mut text = format!("{header}\n");
    for (_, l) in part {
        text.push_str(l);
        text.push('\n');
    }
    let p = dir.join(format!("{name}.csv"));
    std::fs::write(&p, text)?;
    Ok(p)
}

/// Non-IID hospitals: rows sorted by `radius_mean` descending, split at the
/// cumulative fractions `cuts` (e.g. `[0.2, 0.5]` for 20 % / 30 % / 50 %).
pub fn split_non_iid(dir: &Path, cuts: &[f64]) -> std::io::Result<Vec<PathBuf>> {
    let (header, mut rows) = rows(BREAST_CANCER);
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n = rows.len();
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().map(|c| (c * n as f64) as usize));
    bounds.push(n);
    (0..bounds.len() - 1)
        .map(|i| {
            write_part(
                dir,
                &format!("site-{i}"),
                &header,
                &rows[bounds[i]..bounds[i + 1]],
            )
        })
        .collect()
}

/// `n` sites with every `n`-th row each (small, roughly IID).
pub fn split_round_robin(dir: &Path, n: usize) -> std::io::Result<Vec<PathBuf>> {
    let (header, rows) = rows(BREAST_CANCER);
    (0..n)
        .map(|i| {
            let part: Vec<(f64, String)> = rows.iter().skip(i).step_by(n).cloned().collect();
            write_part(dir, &format!("site-{i}"), &header, &part)
        })
        .collect()
}

/// A running coordinator.
pub struct Coordinator {
    /// Its address.
    pub addr: SocketAddr,
    /// The serve task.
    pub handle: JoinHandle<Result<ServeReport, CoordinatorError>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Coordinator {
    /// Start `serve` on 127.0.0.1:0.
    pub async fn start(s: Settings) -> Result<Self, BoxError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(confide_coordinator::serve(s, listener, async move {
            let _ = rx.await;
        }));
        Ok(Coordinator {
            addr,
            handle,
            stop: Some(tx),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fire the shutdown signal.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Wait for `serve` to return (bounded).
    pub async fn finish(self, within: Duration) -> Result<ServeReport, BoxError> {
        let r = tokio::time::timeout(within, self.handle)
            .await
            .map_err(|_| "coordinator did not finish in time")???;
        Ok(r)
    }
}

/// An insecure site config for `data`.
pub fn site(url: &str, name: &str, data: &Path) -> confide_client::SiteConfig {
    let mut c = confide_client::SiteConfig::new(url, name, data, "malignant");
    c.insecure = true;
    c.max_reconnect = Duration::from_secs(20);
    c
}

/// Spawn real sites.
pub fn spawn_sites(
    cfgs: Vec<confide_client::SiteConfig>,
) -> Vec<JoinHandle<Result<confide_client::SiteReport, confide_client::ClientError>>> {
    cfgs.into_iter()
        .map(|c| tokio::spawn(confide_client::run_site(c, std::future::pending())))
        .collect()
}

/// A scripted site speaking the wire protocol directly (u32 training rounds).
pub struct FakeSite {
    /// Raw client.
    pub client: SiteClient<Channel>,
    /// Session token.
    pub session: String,
    /// Task stream.
    pub tasks: tonic::Streaming<pb::Task>,
    /// Large tasks' parts so far.
    pub parts: confide_proto::task_parts::Reassembly,
    /// The federation named at Join (bound into every round's context).
    pub federation: String,
    /// The signed masking set of this round's masked input, attached to the
    /// first chunk by [`FakeSite::submit`] (none in plaintext rounds).
    pub masking: Option<pb::MaskingSet>,
    /// A faulty site: flip bits in every sealed share it deals.
    pub garble_shares: bool,
    /// Leave out the share of the lowest-numbered dealer, as a site refusing
    /// it would: that dealer's mask with this site becomes one-sided.
    pub ignore_lowest_share: bool,
    /// Bits of the model slots [`FakeSite::submit`] packs (set from each
    /// TRAIN round's announcement; 0: unpacked).
    pub packing_bits: u32,
    key: SigningKey,
    suite: Suite,
}

/// Chunks of a vector as the wire wants them.
pub fn chunks(session: &str, round: u64, v: &[u32]) -> Vec<pb::MaskedInputChunk> {
    let per = confide_proto::CHUNK_BYTES / 4;
    let mut out = Vec::new();
    for (i, c) in v.chunks(per).enumerate() {
        out.push(pb::MaskedInputChunk {
            session: session.to_string(),
            round,
            offset: (i * per) as u64,
            total_len: v.len() as u64,
            data: to_le_bytes(c).into(),
            masking: None,
        });
    }
    if out.is_empty() {
        out.push(pb::MaskedInputChunk {
            session: session.into(),
            round,
            offset: 0,
            total_len: 0,
            data: Default::default(),
            masking: None,
        });
    }
    out
}

impl FakeSite {
    /// Join and open the task stream.
    pub async fn join(url: &str, name: &str, suite: Suite) -> Result<Self, BoxError> {
        let mut client = SiteClient::connect(url.to_string()).await?;
        let key = SigningKey::generate(suite, &mut rand::rng());
        let vk = key.verifying_key()?;
        let joined = client
            .join(pb::JoinRequest {
                site: name.into(),
                verifying_key: vk.as_bytes().to_vec(),
                version: "fake".into(),
            })
            .await?
            .into_inner();
        let session = joined.session;
        let tasks = client
            .tasks(pb::TasksRequest {
                session: session.clone(),
            })
            .await?
            .into_inner();
        Ok(FakeSite {
            client,
            session,
            tasks,
            parts: Default::default(),
            federation: joined.federation,
            masking: None,
            packing_bits: 0,
            garble_shares: false,
            ignore_lowest_share: false,
            key,
            suite,
        })
    }

    /// Next task (bounded wait).
    pub async fn next_task(&mut self) -> Result<pb::task::Kind, BoxError> {
        loop {
            let t = tokio::time::timeout(Duration::from_secs(60), self.tasks.message())
                .await
                .map_err(|_| "no task within 60 s")??
                .ok_or("task stream ended")?;
            if let Some(t) = self.parts.push(t)? {
                return t.kind.ok_or_else(|| "a task without a kind".into());
            }
        }
    }

    /// Wait for the next RoundStart.
    pub async fn round_start(&mut self) -> Result<pb::RoundStart, BoxError> {
        loop {
            if let pb::task::Kind::RoundStart(rs) = self.next_task().await? {
                return Ok(rs);
            }
        }
    }

    /// Submit a vector as chunks, the first carrying [`FakeSite::masking`].
    /// The model slots (all but the last four) are bit-packed as the real
    /// site packs them ([`FakeSite::packing_bits`]).
    pub async fn submit(&mut self, round: u64, v: &[u32]) -> Result<(), tonic::Status> {
        let c = self.upload_chunks(round, v);
        upload(&mut self.client, c).await
    }

    /// The chunks [`FakeSite::submit`] sends: a header, then the data.
    pub fn upload_chunks(&self, round: u64, v: &[u32]) -> Vec<pb::MaskedInputChunk> {
        let model = v.len().saturating_sub(4);
        let packing = layout::Packing::new(Ring::U32, self.packing_bits, model, v.len())
            .unwrap_or(layout::Packing::plain(Ring::U32, v.len()));
        let mut c = layout::masked_input_chunks(&self.session, round, v, None, &packing);
        c[0].masking = self.masking.clone();
        c
    }

    /// The quantiser a RoundStart announces.
    pub fn quantiser(rs: &pb::RoundStart) -> Result<Quantiser, BoxError> {
        let ring = rs.ring.parse::<Ring>().map_err(|e| e.0)?;
        Ok(Quantiser::new(&convert::quant_config(
            rs.quantisation.as_ref(),
            ring,
        )?)?)
    }

    /// Take part in a TRAIN round already announced by `rs` with update
    /// `delta` and `weight`, until RoundEnd. `before_submit` may poke the
    /// coordinator with bad submissions first (it gets the encoded vector).
    pub async fn train_round(
        &mut self,
        rs: &pb::RoundStart,
        delta: &[f32],
        weight: u64,
        mut before_submit: impl AsyncPoke,
    ) -> Result<pb::RoundEnd, BoxError> {
        let q = Self::quantiser(rs)?;
        let vector: Vec<u32> = q.encode(delta, weight, &[0, 0, 0], &mut rand::rng())?;
        self.masking = None;
        self.packing_bits = q.bits();
        if rs.plaintext {
            if !before_submit.poke(self, rs.round, &vector).await? {
                self.submit(rs.round, &vector).await?;
            }
            return self.round_end().await;
        }
        // The same conversion the real site uses (no TLS here: no CA
        // fingerprint); this scripted site keeps to the u32 ring its vectors
        // are built in.
        let cfg = convert::round_config(rs, &self.federation, &context::NO_CA)?;
        if cfg.ring != Ring::U32 || cfg.suite != self.suite {
            return Err(format!(
                "scripted site speaks {} / u32, round is {} / {}",
                self.suite, cfg.suite, cfg.ring
            )
            .into());
        }
        let verifier: Arc<dyn IdentityVerifier> =
            Arc::new(RelayedKeyVerifier { suite: self.suite });
        let mut m = SiteMachine::<u32>::new(
            cfg,
            rs.member,
            self.key.clone(),
            verifier,
            &SitePolicy::default(),
            &mut rand::rng(),
        )?;
        let mut pending_input = Some(vector);
        loop {
            while let Some(o) = m.poll_output() {
                use confide_crypto::protocol::SiteOutput as O;
                match o {
                    O::Advertise(a) => {
                        let advert = pb::KeyAdvert {
                            round: a.round,
                            member: a.member,
                            enc_public: a.enc_public,
                            mask_public: a.mask_public,
                            signature: a.signature,
                        };
                        self.client
                            .advertise_keys(pb::AdvertiseKeysRequest {
                                session: self.session.clone(),
                                advert: Some(advert),
                            })
                            .await?;
                    }
                    O::Shares(b) => {
                        let req = pb::ShareKeysRequest {
                            session: self.session.clone(),
                            round: b.round,
                            from: b.from,
                            seed_commitment: b.seed_commitment.to_vec(),
                            shares: b
                                .shares
                                .into_iter()
                                .map(|s| pb::EncryptedShare {
                                    from: s.from,
                                    to: s.to,
                                    ciphertext: if self.garble_shares {
                                        s.ciphertext.iter().map(|b| b ^ 0x5a).collect()
                                    } else {
                                        s.ciphertext
                                    },
                                })
                                .collect(),
                        };
                        self.client.share_keys(req).await?;
                    }
                    O::MaskedInput { vector, masking } => {
                        self.masking = Some(convert::masking_set_to_proto(&masking));
                        if !before_submit.poke(self, rs.round, &vector).await? {
                            self.submit(rs.round, &vector).await?;
                        }
                    }
                    O::Consistency(sig) => {
                        let req = convert::consistency_response_to_proto(&sig, &self.session);
                        self.client.consistency(req).await?;
                    }
                    O::Unmask(u) => {
                        let conv = |v: Vec<(MemberId, confide_crypto::shamir::Share)>| {
                            v.into_iter()
                                .map(|(owner, s)| pb::Share {
                                    owner,
                                    share: s.to_bytes().to_vec(),
                                })
                                .collect()
                        };
                        let req = pb::UnmaskResponse {
                            session: self.session.clone(),
                            round: u.round,
                            from: u.from,
                            seed_shares: conv(u.seed_shares),
                            key_shares: conv(u.key_shares),
                            pair_keys: u
                                .pair_keys
                                .iter()
                                .map(|(peer, key)| pb::PairKey {
                                    peer: *peer,
                                    key: key.as_bytes().to_vec(),
                                })
                                .collect(),
                        };
                        self.client.unmask(req).await?;
                    }
                }
            }
            match self.next_task().await? {
                pb::task::Kind::NeighbourKeys(nk) => {
                    let msg = NeighbourKeys {
                        round: nk.round,
                        adverts: nk
                            .adverts
                            .into_iter()
                            .filter_map(|r| {
                                r.advert.map(|a| RelayedAdvert {
                                    advert: KeyAdvert {
                                        round: a.round,
                                        member: a.member,
                                        enc_public: a.enc_public,
                                        mask_public: a.mask_public,
                                        signature: a.signature,
                                    },
                                    identity: r.verifying_key,
                                })
                            })
                            .collect(),
                    };
                    m.handle_neighbour_keys(msg, &mut rand::rng())?;
                }
                pb::task::Kind::IncomingShares(is) => {
                    let lowest = is.shares.iter().map(|s| s.from).min();
                    let ignored = lowest.filter(|_| self.ignore_lowest_share);
                    let msg = IncomingShares {
                        round: is.round,
                        shares: is
                            .shares
                            .into_iter()
                            .filter(|s| Some(s.from) != ignored)
                            .map(|s| EncryptedShare {
                                from: s.from,
                                to: s.to,
                                ciphertext: s.ciphertext,
                            })
                            .collect(),
                    };
                    m.handle_incoming_shares(msg)?;
                    if let Some(v) = pending_input.take() {
                        m.handle_input(v)?;
                    }
                }
                pb::task::Kind::ConsistencyRequest(c) => {
                    m.handle_consistency_request(convert::consistency_request_from_proto(&c))?;
                }
                pb::task::Kind::UnmaskRequest(u) => {
                    m.handle_unmask_request(convert::unmask_request_from_proto(&u)?)?;
                }
                pb::task::Kind::RoundEnd(e) => return Ok(e),
                pb::task::Kind::Done(_) => return Err("federation ended mid-round".into()),
                pb::task::Kind::RoundStart(_) => return Err("unexpected RoundStart".into()),
                pb::task::Kind::Part(_) => return Err("a task part after reassembly".into()),
            }
        }
    }

    async fn round_end(&mut self) -> Result<pb::RoundEnd, BoxError> {
        loop {
            if let pb::task::Kind::RoundEnd(e) = self.next_task().await? {
                return Ok(e);
            }
        }
    }
}

/// A hook run just before a fake site submits its real vector.
pub trait AsyncPoke {
    /// Poke the coordinator (e.g. with bad submissions); return `true` if the
    /// hook already submitted `vector` itself.
    fn poke(
        &mut self,
        site: &mut FakeSite,
        round: u64,
        vector: &[u32],
    ) -> impl std::future::Future<Output = Result<bool, BoxError>> + Send;
}

/// No poking.
pub struct NoPoke;

impl AsyncPoke for NoPoke {
    async fn poke(
        &mut self,
        _site: &mut FakeSite,
        _round: u64,
        _vector: &[u32],
    ) -> Result<bool, BoxError> {
        Ok(false)
    }
}
