//! What a site needs to run: [`SiteConfig`] (the entry point's argument),
//! TLS file paths, fault injection ([`Vanish`]), the outcome
//! ([`SiteReport`]), and the signing-key file format.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use confide_crypto::Stage;
use confide_crypto::protocol::SitePolicy;
use confide_crypto::suite::SigningKey;
use confide_proto::keys;

use crate::error::ClientError;
use crate::metrics::SiteMetrics;

/// Everything [`run_site`](crate::run_site) needs.
#[derive(Clone, Debug)]
pub struct SiteConfig {
    /// `"https://127.0.0.1:PORT"`, or `"http://…"` with `insecure`; several
    /// coordinators (active and standbys) comma-separated,
    /// `"https://a:7443,https://b:7443"`: the site fails over between them
    /// ([`crate::coordinators`]).
    pub coordinator: String,
    /// Site name (must equal the name in the site's certificate under mTLS).
    pub site: String,
    /// Local CSV file; with an external training command, any path (or
    /// none) handed to it as `CONFIDE_DATA`.
    pub data: PathBuf,
    /// Label column of the CSV; empty when the site loads no CSV (its
    /// training command reads the data itself, see [`crate::external`]).
    pub label: String,
    /// Fraction of rows held out for evaluation (default 0.2).
    pub holdout: f64,
    /// mTLS material; `None` only with `insecure = true`.
    pub tls: Option<TlsFiles>,
    /// The federation CRL distributed out of band (PEM), optional: the site
    /// also takes the coordinator's and keeps the newest valid one.
    pub crl: Option<PathBuf>,
    /// Long-term signing key file; `None` generates an ephemeral key
    /// (insecure mode and tests only).
    pub signing_key: Option<PathBuf>,
    /// Plaintext transport, for local experiments only.
    pub insecure: bool,
    /// Take part in rounds the coordinator announces as plaintext
    /// (comparison mode), where it sees this site's update itself. Off by
    /// default: the coordinator's flag alone never unmasks a site.
    pub allow_plaintext: bool,
    /// What this site requires of a secure round (cohort size, survivors,
    /// collusion bound, complete graph for small cohorts); nothing the
    /// coordinator announces overrides it. Default: [`SitePolicy::default`].
    pub policy: SitePolicy,
    /// Most epochs a round may ask of this site (its compute budget); a
    /// round asking more, or announcing insane training settings, is refused.
    pub max_epochs: u32,
    /// Fault injection for tests and demos.
    pub vanish: Option<Vanish>,
    /// Give up reconnecting after this long (default 60 s).
    pub max_reconnect: Duration,
    /// Where the run loop records rounds, stage times, bytes and reconnects
    /// (none by default; `confide-site run --metrics-listen` serves one).
    pub metrics: Option<Arc<SiteMetrics>>,
    /// The site's own state directory: its contribution ledger (the exact
    /// inputs it sent and the survivor sets it signed, per model) lives in
    /// `contributions/` there, so a restart cannot make it send a second,
    /// different input on a model. `None` (the library's default, for
    /// in-process demos and tests): in memory only, which is logged.
    /// `confide-site run` defaults to `state/<site>/` beside its key material.
    pub state_dir: Option<PathBuf>,
}

impl SiteConfig {
    /// A configuration with defaults: holdout 0.2, no TLS files yet (set
    /// `tls` or `insecure`), ephemeral signing key, 60 s reconnect budget.
    pub fn new(
        coordinator: impl Into<String>,
        site: impl Into<String>,
        data: impl Into<PathBuf>,
        label: impl Into<String>,
    ) -> Self {
        SiteConfig {
            coordinator: coordinator.into(),
            site: site.into(),
            data: data.into(),
            label: label.into(),
            holdout: 0.2,
            tls: None,
            crl: None,
            signing_key: None,
            insecure: false,
            allow_plaintext: false,
            policy: SitePolicy::default(),
            max_epochs: 1000,
            vanish: None,
            max_reconnect: Duration::from_secs(60),
            metrics: None,
            state_dir: None,
        }
    }

    /// Checks what can be checked without touching the network.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.site.trim().is_empty() {
            return Err(ClientError::Config("site name is empty".into()));
        }
        if !(self.holdout > 0.0 && self.holdout < 1.0) {
            return Err(ClientError::Config(format!(
                "holdout must be in (0, 1), got {}",
                self.holdout
            )));
        }
        crate::coordinators::parse_urls(&self.coordinator, self.insecure)?;
        if !self.insecure && self.tls.is_none() {
            return Err(ClientError::Config(
                "TLS files (CA, certificate, key) are required unless --insecure is set".into(),
            ));
        }
        if !self.insecure && self.signing_key.is_none() {
            return Err(ClientError::Config(
                "a signing key file is required unless --insecure is set".into(),
            ));
        }
        let p = &self.policy;
        if p.min_survivors < 3 {
            return Err(ClientError::Config(format!(
                "minimum survivors must be at least 3 (with two, each learns the other's input), got {}",
                p.min_survivors
            )));
        }
        if !(p.collusion_fraction.is_finite() && (0.0..1.0).contains(&p.collusion_fraction)) {
            return Err(ClientError::Config(format!(
                "collusion fraction must be in [0, 1), got {}",
                p.collusion_fraction
            )));
        }
        Ok(())
    }

    /// The TLS files the connection uses: configured, and either not
    /// insecure or an `https://` URL (the one rule the transport and the
    /// round context share).
    pub(crate) fn tls_in_use(&self) -> Option<&TlsFiles> {
        self.tls
            .as_ref()
            .filter(|_| !self.insecure || self.coordinator.starts_with("https"))
    }
}

/// The site's mTLS files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Federation CA certificate (PEM).
    pub ca: PathBuf,
    /// This site's certificate (PEM).
    pub cert: PathBuf,
    /// This site's private key (PEM).
    pub key: PathBuf,
    /// Name expected in the coordinator's certificate (for example
    /// "localhost"), for every coordinator URL; empty: each URL's own host.
    pub domain: String,
}

impl TlsFiles {
    /// The files `confide certs issue --generate-keys-here` writes for
    /// `site` under `dir`: `ca.pem`, `sites/<site>.pem`, `sites/<site>.key`.
    pub fn from_certs_dir(dir: &Path, site: &str, domain: impl Into<String>) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("sites").join(format!("{site}.pem")),
            key: dir.join("sites").join(format!("{site}.key")),
            domain: domain.into(),
        }
    }
}

/// Stop abruptly (drop the connection, exit the run loop with
/// `Ok(report.vanished = true)`) instead of sending this round's message of
/// `stage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vanish {
    /// The round.
    pub round: u64,
    /// The stage whose message is never sent.
    pub stage: Stage,
}

impl Vanish {
    /// Whether the site must vanish instead of sending `stage`'s message of `round`.
    pub fn hits(vanish: Option<Vanish>, round: u64, stage: Stage) -> bool {
        vanish.is_some_and(|v| v.round == round && v.stage == stage)
    }
}

/// How a site's run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteReport {
    /// Rounds this site completed its part in.
    pub rounds: u64,
    /// The last round this site saw announced.
    pub last_round: u64,
    /// Whether the run ended by [`Vanish`] fault injection.
    pub vanished: bool,
}

/// Parses a signing-key TOML document (format: [`confide_proto::keys`]).
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    keys::parse_signing_key(text).map_err(|e| e.to_string())
}

/// Reads and parses a signing-key file.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, ClientError> {
    keys::load_signing_key(path).map_err(|e| ClientError::SigningKey {
        path: path.to_path_buf(),
        reason: match e {
            keys::KeyFileError::Read { source, .. } => format!("unreadable: {source}"),
            other => other.to_string(),
        },
    })
}

pub use confide_proto::keys::signing_key_toml;

#[cfg(test)]
mod tests {
    use super::*;
    use confide_crypto::Suite;

    #[test]
    fn signing_key_round_trips_for_both_suites() {
        let mut rng = rand::rng();
        for suite in Suite::ALL {
            let key = SigningKey::generate(suite, &mut rng);
            let parsed = parse_signing_key(&signing_key_toml(&key)).map_err(|e| e.to_string());
            let parsed = parsed.unwrap_or_else(|e| panic!("{suite}: {e}"));
            assert_eq!(parsed.suite(), suite);
            assert_eq!(parsed.secret_bytes(), key.secret_bytes());
        }
    }

    #[test]
    fn signing_key_bad_files_are_refused_with_reasons() {
        let good_hex = "11".repeat(32);
        let cases = [
            ("", "not a valid key file"),
            ("suite = \"intl\"", "not a valid key file"),
            (
                &format!("suite = \"rsa\"\nsecret = \"{good_hex}\""),
                "unknown suite",
            ),
            ("suite = \"intl\"\nsecret = \"zz\"", "not hex"),
            ("suite = \"gm\"\nsecret = \"0011\"", "32 bytes"),
            (
                &format!("suite = \"intl\"\nsecret = \"{good_hex}\"\nextra = 1"),
                "not a valid key file",
            ),
            // Zero is not a valid SM2 scalar.
            (
                &format!("suite = \"gm\"\nsecret = \"{}\"", "00".repeat(32)),
                "not a valid gm signing key",
            ),
        ];
        for (text, want) in cases {
            match parse_signing_key(text) {
                Ok(_) => panic!("accepted {text:?}"),
                Err(e) => assert!(e.contains(want), "{text:?}: {e} does not mention {want}"),
            }
        }
    }

    #[test]
    fn missing_signing_key_file_names_the_path() {
        let err = load_signing_key(Path::new("/nonexistent/site.signing.toml"))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(
            |e| e.contains("/nonexistent/site.signing.toml") && e.contains("unreadable")
        ));
    }

    #[test]
    fn config_validation() {
        let mut c = SiteConfig::new("http://127.0.0.1:1", "a", "a.csv", "y");
        assert!(c.validate().is_err(), "http without insecure");
        c.insecure = true;
        assert!(c.validate().is_ok());
        c.holdout = 1.0;
        assert!(c.validate().is_err());
        let mut c = SiteConfig::new("https://127.0.0.1:1", "a", "a.csv", "y");
        assert!(c.validate().is_err(), "https without TLS files");
        c.tls = Some(TlsFiles::from_certs_dir(
            Path::new("/certs"),
            "a",
            "localhost",
        ));
        c.signing_key = Some("/certs/sites/a.signing.toml".into());
        assert!(c.validate().is_ok());
        c.policy.min_survivors = 2;
        assert!(c.validate().is_err(), "two survivors");
        c.policy.min_survivors = 3;
        c.policy.collusion_fraction = 1.0;
        assert!(c.validate().is_err(), "everyone colluding");
        c.policy.collusion_fraction = 0.2;
        assert!(c.validate().is_ok());
        assert_eq!(
            c.tls.as_ref().map(|t| t.cert.clone()),
            Some(PathBuf::from("/certs/sites/a.pem"))
        );
        let c = SiteConfig::new("ftp://x", "a", "a.csv", "y");
        assert!(c.validate().is_err());
        // Several coordinators: each one checked.
        let mut c = SiteConfig::new("http://a:1,http://b:1", "a", "a.csv", "y");
        c.insecure = true;
        assert!(c.validate().is_ok());
        c.coordinator = "http://a:1,,http://b:1".into();
        assert!(c.validate().is_err(), "empty entry");
        c.coordinator = "http://a:1,http://a:1".into();
        assert!(c.validate().is_err(), "duplicate");
    }

    #[test]
    fn vanish_hits_only_its_round_and_stage() {
        let v = Some(Vanish {
            round: 3,
            stage: Stage::ShareKeys,
        });
        assert!(Vanish::hits(v, 3, Stage::ShareKeys));
        assert!(!Vanish::hits(v, 2, Stage::ShareKeys));
        assert!(!Vanish::hits(v, 3, Stage::MaskedInput));
        assert!(!Vanish::hits(None, 3, Stage::ShareKeys));
    }
}
