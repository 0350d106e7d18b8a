//! The embeddable API: [`Site::builder`] to configure a site (coordinator,
//! identity, data, the [`TrainerFactory`] hook defined in
//! [`trainer`](crate::trainer)) and [`Site::run`], which hands over to the
//! run loop.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use confide_crypto::protocol::SitePolicy;
use confide_proto::v1;

use crate::config::{SiteConfig, SiteReport, TlsFiles, Vanish};
use crate::error::ClientError;
use crate::metrics::SiteMetrics;
use crate::run::DataSource;
use crate::train::Dataset;
// Re-exported here too: `site::builtin_trainer` and friends were public paths.
pub use crate::trainer::{BoxTrainer, TrainerFactory, builtin_trainer, fit_config};

/// A configured site, ready to [`run`](Site::run).
#[derive(Clone)]
pub struct Site {
    pub(crate) cfg: SiteConfig,
    pub(crate) data: DataSource,
    pub(crate) trainer: TrainerFactory,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Site {
    /// Start building a site.
    pub fn builder() -> SiteBuilder {
        SiteBuilder::default()
    }

    /// A site from a complete configuration, with the built-in trainers.
    pub fn from_config(cfg: SiteConfig) -> Self {
        Site {
            cfg,
            data: DataSource::Csv,
            trainer: Arc::new(builtin_trainer),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SiteConfig {
        &self.cfg
    }

    /// Runs until the federation is done, `shutdown` fires, or a
    /// [`Vanish`] point is reached.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<SiteReport, ClientError> {
        crate::run::run(self.cfg, self.data, self.trainer, shutdown).await
    }
}

/// Builder for [`Site`]; `coordinator`, `identity` (or `insecure`) and
/// `data` (or `dataset`) are required.
#[derive(Default)]
pub struct SiteBuilder {
    coordinator: Option<String>,
    site: Option<String>,
    tls: Option<TlsFiles>,
    signing_key: Option<PathBuf>,
    insecure: bool,
    allow_plaintext: bool,
    policy: Option<SitePolicy>,
    max_epochs: Option<u32>,
    crl: Option<PathBuf>,
    data: Option<(PathBuf, String)>,
    dataset: Option<Dataset>,
    no_dataset: bool,
    holdout: Option<f64>,
    vanish: Option<Vanish>,
    max_reconnect: Option<Duration>,
    trainer: Option<TrainerFactory>,
    metrics: Option<Arc<SiteMetrics>>,
    state_dir: Option<PathBuf>,
}

impl SiteBuilder {
    /// Start from a complete [`SiteConfig`] (CSV data source; an empty
    /// `label` means no CSV, as [`without_dataset`](Self::without_dataset)).
    pub fn config(mut self, cfg: SiteConfig) -> Self {
        self.coordinator = Some(cfg.coordinator);
        self.site = Some(cfg.site);
        self.tls = cfg.tls;
        self.signing_key = cfg.signing_key;
        self.insecure = cfg.insecure;
        self.allow_plaintext = cfg.allow_plaintext;
        self.policy = Some(cfg.policy);
        self.max_epochs = Some(cfg.max_epochs);
        self.crl = cfg.crl;
        if cfg.label.is_empty() {
            self.no_dataset = true;
        } else {
            self.data = Some((cfg.data, cfg.label));
        }
        self.holdout = Some(cfg.holdout);
        self.vanish = cfg.vanish;
        self.max_reconnect = Some(cfg.max_reconnect);
        self.metrics = cfg.metrics;
        self.state_dir = cfg.state_dir;
        self
    }

    /// The coordinator URL, for example `https://coordinator.example.org:7443`
    /// (or several, comma-separated: see [`coordinators`](Self::coordinators)).
    pub fn coordinator(mut self, url: impl Into<String>) -> Self {
        self.coordinator = Some(url.into());
        self
    }

    /// Several coordinators of one federation (active and standbys): the
    /// site joins the first that serves and fails over between them.
    pub fn coordinators<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_string()).collect();
        self.coordinator = Some(list.join(","));
        self
    }

    /// The site's name, TLS files and signing-key file.
    pub fn identity(
        mut self,
        site: impl Into<String>,
        tls: TlsFiles,
        signing_key: impl Into<PathBuf>,
    ) -> Self {
        self.site = Some(site.into());
        self.tls = Some(tls);
        self.signing_key = Some(signing_key.into());
        self
    }

    /// The identity in a directory ([`crate::enrol::identity_in_dir`]): the
    /// site's own from `confide-site init`, or a demo CA directory;
    /// `domain` is the coordinator's certificate name to expect.
    pub fn certs_dir(
        self,
        dir: impl AsRef<Path>,
        site: impl Into<String>,
        domain: impl Into<String>,
    ) -> Self {
        let site = site.into();
        let dir = dir.as_ref();
        let (tls, key) = crate::enrol::identity_in_dir(dir, &site, domain);
        self.identity(site, tls, key)
    }

    /// Plaintext transport and an ephemeral signing key: local experiments only.
    pub fn insecure(mut self, site: impl Into<String>) -> Self {
        self.site = Some(site.into());
        self.insecure = true;
        self
    }

    /// Take part in plaintext comparison rounds (off by default).
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.allow_plaintext = allow;
        self
    }

    /// Most local epochs a training round may ask of this site (default
    /// 1000).
    pub fn max_epochs(mut self, max_epochs: u32) -> Self {
        self.max_epochs = Some(max_epochs);
        self
    }

    /// What this site requires of a secure round (default
    /// [`SitePolicy::default`]).
    pub fn policy(mut self, policy: SitePolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The local CSV and its label column.
    pub fn data(mut self, csv: impl Into<PathBuf>, label: impl Into<String>) -> Self {
        self.data = Some((csv.into(), label.into()));
        self
    }

    /// Rows already in memory instead of a CSV.
    pub fn dataset(mut self, data: Dataset) -> Self {
        self.dataset = Some(data);
        self
    }

    /// No local rows at all: the site's own training command (a
    /// [`trainer_factory`](Self::trainer_factory) such as
    /// [`crate::external::factory_with`]) reads its data itself. Rounds of
    /// the built-in models are then refused.
    pub fn without_dataset(mut self) -> Self {
        self.no_dataset = true;
        self
    }

    /// Held-out fraction for evaluation (default 0.2).
    pub fn holdout(mut self, frac: f64) -> Self {
        self.holdout = Some(frac);
        self
    }

    /// Fault injection for tests and demos.
    pub fn vanish(mut self, v: Vanish) -> Self {
        self.vanish = Some(v);
        self
    }

    /// How long to keep reconnecting before giving up (default 60 s).
    pub fn max_reconnect(mut self, d: Duration) -> Self {
        self.max_reconnect = Some(d);
        self
    }

    /// Records this site's rounds, stage times, bytes and reconnects in
    /// `metrics` (serve them with [`crate::metrics::MetricsServer`]).
    pub fn metrics(mut self, metrics: Arc<SiteMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The site's state directory, where its contribution ledger is kept
    /// across restarts ([`SiteConfig::state_dir`]; default: in memory only).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Chooses the local trainer per round (default [`builtin_trainer`]).
    pub fn trainer<F>(mut self, f: F) -> Self
    where
        F: Fn(&v1::TrainingConfig) -> Result<BoxTrainer, ClientError> + Send + Sync + 'static,
    {
        self.trainer = Some(Arc::new(f));
        self
    }

    /// Like [`trainer`](Self::trainer), with a ready-made factory.
    pub fn trainer_factory(mut self, f: TrainerFactory) -> Self {
        self.trainer = Some(f);
        self
    }

    /// Checks the configuration and builds the site.
    pub fn build(self) -> Result<Site, ClientError> {
        let coordinator = self
            .coordinator
            .ok_or_else(|| ClientError::Config("no coordinator URL".into()))?;
        let site = self.site.ok_or_else(|| {
            ClientError::Config("no site identity (identity, certs_dir or insecure)".into())
        })?;
        let (path, label, data) = match (self.data, self.dataset, self.no_dataset) {
            (Some(_), Some(_), _) | (Some(_), _, true) | (_, Some(_), true) => {
                return Err(ClientError::Config(
                    "give one of a CSV, an in-memory dataset or none at all".into(),
                ));
            }
            (Some((p, l)), None, false) => (p, l, DataSource::Csv),
            (None, Some(d), false) => (PathBuf::new(), String::new(), DataSource::Memory(d)),
            // Only a site's own trainer can work without rows.
            (None, None, true) if self.trainer.is_some() => {
                (PathBuf::new(), String::new(), DataSource::None)
            }
            (None, None, true) => {
                return Err(ClientError::Config(
                    "no data: the built-in trainers need a CSV (--data FILE --label COLUMN); \
                     a site without one needs its own training command (--train-command)"
                        .into(),
                ));
            }
            (None, None, false) => {
                return Err(ClientError::Config("no data (data or dataset)".into()));
            }
        };
        let mut cfg = SiteConfig::new(coordinator, site, path, label);
        cfg.tls = self.tls;
        cfg.signing_key = self.signing_key;
        cfg.insecure = self.insecure;
        cfg.allow_plaintext = self.allow_plaintext;
        if let Some(n) = self.max_epochs {
            cfg.max_epochs = n;
        }
        cfg.crl = self.crl;
        if let Some(p) = self.policy {
            cfg.policy = p;
        }
        cfg.vanish = self.vanish;
        if let Some(h) = self.holdout {
            cfg.holdout = h;
        }
        if let Some(d) = self.max_reconnect {
            cfg.max_reconnect = d;
        }
        cfg.metrics = self.metrics;
        cfg.state_dir = self.state_dir;
        cfg.validate()?;
        Ok(Site {
            cfg,
            data,
            trainer: self.trainer.unwrap_or_else(|| Arc::new(builtin_trainer)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_requires_the_essentials() {
        assert!(
            Site::builder()
                .data("a.csv", "y")
                .insecure("a")
                .build()
                .is_err(),
            "no coordinator"
        );
        assert!(
            Site::builder()
                .coordinator("http://127.0.0.1:1")
                .data("a.csv", "y")
                .build()
                .is_err(),
            "no identity"
        );
        assert!(
            Site::builder()
                .coordinator("http://127.0.0.1:1")
                .insecure("a")
                .build()
                .is_err(),
            "no data"
        );
        let site = Site::builder()
            .coordinator("http://127.0.0.1:1")
            .insecure("a")
            .data("a.csv", "y")
            .holdout(0.3)
            .build();
        assert!(site.is_ok_and(|s| s.config().holdout == 0.3 && s.config().insecure));
        // Everything of a config survives the builder (the daemon's path).
        let mut cfg = SiteConfig::new("http://127.0.0.1:1", "a", "a.csv", "y");
        cfg.insecure = true;
        cfg.allow_plaintext = true;
        cfg.policy.min_survivors = 5;
        cfg.max_epochs = 5000;
        cfg.crl = Some("crl.pem".into());
        cfg.state_dir = Some("/var/lib/site".into());
        let site = Site::builder().config(cfg).build();
        assert!(site.is_ok_and(|s| s.config().allow_plaintext
            && s.config().policy.min_survivors == 5
            && s.config().max_epochs == 5000
            && s.config().crl.as_deref() == Some(std::path::Path::new("crl.pem"))
            && s.config().state_dir.as_deref() == Some(Path::new("/var/lib/site"))));
        let site = Site::builder()
            .coordinator("http://127.0.0.1:1")
            .insecure("a")
            .data("a.csv", "y")
            .state_dir("/tmp/s")
            .build();
        assert!(site.is_ok_and(|s| s.config().state_dir.as_deref() == Some(Path::new("/tmp/s"))));
        let site = Site::builder()
            .coordinators(["http://a:1", "http://b:1"])
            .insecure("a")
            .data("a.csv", "y")
            .build();
        assert!(site.is_ok_and(|s| s.config().coordinator == "http://a:1,http://b:1"));
        let site = Site::builder()
            .coordinators(["http://a:1", "http://a:1"])
            .insecure("a")
            .data("a.csv", "y")
            .build();
        assert!(
            matches!(site, Err(ClientError::InvalidUrl { ref reason, .. }) if reason.contains("twice"))
        );
        let site = Site::builder()
            .coordinator("https://c:7443")
            .certs_dir("/certs", "hospital-a", "c")
            .data("a.csv", "y")
            .build();
        let cfg = site.map(|s| s.cfg);
        assert!(cfg.is_ok_and(|c| {
            c.signing_key == Some(PathBuf::from("/certs/hospital-a.signing.toml"))
                && c.tls
                    .is_some_and(|t| t.key == Path::new("/certs/hospital-a.key") && t.domain == "c")
        }));
    }
}
