//! # confide-client
//!
//! The library a Confide participant site embeds, and the `confide-site`
//! daemon built on it. A site connects **outbound only** to the coordinator,
//! keeps its rows on its own machine, trains locally, and sends its model
//! update only masked (SecAgg+), so the coordinator learns the sum of the
//! sites' updates and nothing about any single one.
//!
//! ```text
//!   local CSV ──▶ train::Dataset ──split_holdout──▶ train / held-out rows
//!                                        │
//!   coordinator ◀─Join──────────────── run.rs: connect, Join, follow the Tasks stream,
//!               ──Tasks stream──▶        │        reconnect with backoff, resend the outbox
//!               ──DownloadModel──▶       │   transport.rs: the calls as a trait; tonic impl
//!               ◀─AdvertiseKeys /        ▼
//!                 ShareKeys /       round.rs: task ─▶ Action (no I/O); RoundStart ─▶
//!                 SubmitMaskedInput /  convert::round_config ─▶ AnySite (u32 or u64 ring)
//!                 Consistency /        under the site's own SitePolicy
//!                 Unmask ──────────    trainer.rs: LocalJob ─▶ Trainer (blocking thread)
//!                                      ─▶ delta ─▶ Quantiser ─▶ wire::train_vector /
//!                                      stats_vector / eval_vector ─▶ masked upload chunks
//! ```
//!
//! Module dependencies point one way, without cycles: `site` → `run` →
//! (`transport`, `round` → `trainer`, `identity`) → (`config`, `convert`,
//! `wire`, `train`) → `error`.
//!
//! * [`run_site`] with a [`SiteConfig`] is the entry point the daemon, the
//!   coordinator's `demo` and the end-to-end tests use.
//! * [`Site::builder`] is the embeddable form, with a [`TrainerFactory`] hook
//!   choosing the trainer from the announced training configuration
//!   (default [`builtin_trainer`]: logistic regression or MLP).
//! * [`convert`] maps the wire messages to the protocol types and back
//!   (shared with the coordinator); [`wire`] holds the vector layouts,
//!   chunking and backoff; [`external`] runs a training command in any
//!   language.
//! * [`progress`] shows the model download and the masked upload (a bar on
//!   a terminal, log lines otherwise) once the program calls
//!   [`progress::init`], as the daemon does.
//!
//! ## Example
//!
//! ```no_run
//! use confide_client::{Site, TlsFiles};
//!
//! # async fn demo() -> Result<(), confide_client::ClientError> {
//! let site = Site::builder()
//!     .coordinator("https://coordinator.example.org:7443")
//!     .certs_dir("/etc/confide/certs", "hospital-a", "coordinator.example.org")
//!     .data("/data/hospital-a.csv", "malignant")
//!     .build()?;
//! let report = site.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! println!("took part in {} rounds", report.rounds);
//! # let _ = TlsFiles::from_certs_dir(std::path::Path::new("."), "a", "localhost");
//! # Ok(()) }
//! ```
//!
//! The pure parts run without a network:
//!
//! ```
//! use confide_client::wire::{ModelAssembler, train_len};
//! use confide_proto::v1::ModelChunk;
//!
//! # fn main() -> Result<(), confide_client::ClientError> {
//! let mut download = ModelAssembler::new(6);
//! download.push(&ModelChunk { offset: 0, data: b"abc".to_vec().into(), total_len: 6 })?;
//! // Out of order: refused.
//! assert!(download.push(&ModelChunk { offset: 5, data: b"f".to_vec().into(), total_len: 6 }).is_err());
//! download.push(&ModelChunk { offset: 3, data: b"def".to_vec().into(), total_len: 6 })?;
//! assert_eq!(download.finish()?, b"abcdef");
//! // A TRAIN vector: d model elements, the weight, 3 metric slots.
//! assert_eq!(train_len(31), 31 + 1 + 3);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod convert;
pub mod coordinators;
pub mod enrol;
pub mod error;
pub mod external;
pub mod identity;
pub mod metrics;
pub mod progress;
pub mod revocation;
mod round;
mod run;
pub mod site;
pub mod train;
pub mod trainer;
mod transport;
pub mod wire;

/// What a site requires of a secure round (`SiteConfig::policy`).
pub use confide_crypto::protocol::SitePolicy;
pub use config::{SiteConfig, SiteReport, TlsFiles, Vanish};
pub use error::ClientError;
pub use identity::RelayedKeyVerifier;
pub use metrics::SiteMetrics;
pub use site::{Site, SiteBuilder};
pub use trainer::{BoxTrainer, TrainerFactory, builtin_trainer};

/// Runs a site until the federation says Done (`Ok`), `shutdown` fires
/// (`Ok`), the configured [`Vanish`] point is reached (`Ok` with
/// `vanished = true`), or an error that reconnecting cannot fix.
pub async fn run_site(
    cfg: SiteConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<SiteReport, ClientError> {
    Site::from_config(cfg).run(shutdown).await
}
