//! `confide certs …`: the arguments of the CA's subcommands (dispatched in
//! main.rs; the work is the library's `certs` module).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use confide_coordinator::ca_key::CaKeyArgs;
use confide_coordinator::certs;
use confide_crypto::Suite;

#[derive(Subcommand)]
pub(crate) enum CertCmd {
    /// Create the federation CA and the coordinator certificate.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "confide")]
        federation: String,
        /// Extra DNS names / IPs for the coordinator certificate.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Where to keep the CA key (default: DIR/ca.key, unencrypted, 0600).
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
    /// Issue an operator certificate, or (demos only, with
    /// --generate-keys-here) a site's keys and certificate made on this machine.
    Issue {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Make the site's private keys here, on the CA's machine. Whoever
        /// holds this directory can then act as the site: demos and tests
        /// only. Real sites run `confide-site init` and send a request for
        /// `confide certs sign`.
        #[arg(long, requires = "site")]
        generate_keys_here: bool,
        #[arg(
            long,
            conflicts_with = "operator",
            required_unless_present = "operator"
        )]
        site: Option<String>,
        #[arg(long)]
        operator: Option<String>,
        /// Suite of the site's signing key.
        #[arg(long, default_value = "intl")]
        suite: String,
        /// The CA key's source, if not the one `certs init` recorded (checked
        /// against ca.pem, then recorded for later commands).
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
    /// Check a site's certificate request (from `confide-site init`) and
    /// issue its certificate; the site's private keys never come here.
    Sign {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The request file (PEM) the site sent.
        #[arg(long)]
        csr: PathBuf,
        /// The site name agreed out of band; the request must name it.
        #[arg(long)]
        site: Option<String>,
        /// The federation's suite; the request's signing key must be of it.
        #[arg(long)]
        suite: Suite,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = certs::DEFAULT_SITE_DAYS)]
        days: u32,
        /// Replace the site's current certificate (key rotation); the old
        /// one is kept as sites/NAME.<serial>.pem for revocation.
        #[arg(long)]
        rotate: bool,
        /// Also write the certificate here (the file to send back to the site).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The CA key's source, if not the one `certs init` recorded.
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
    /// List issued certificates (marking revoked ones).
    List {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Revoke a site, an operator or a certificate serial: recorded in
    /// DIR/revoked.toml and published in a freshly signed DIR/crl.pem, which
    /// a running coordinator re-reads on its next request and serves to sites.
    Revoke {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[command(flatten)]
        target: RevokeArgs,
        /// Days the new CRL stays valid.
        #[arg(long, default_value_t = certs::DEFAULT_CRL_DAYS)]
        days: u32,
        /// The CA key's source, if not the one `certs init` recorded.
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
    /// Re-issue DIR/crl.pem with the next CRL number and a fresh expiry.
    /// CRLs expire: run this from cron well within --days (e.g. daily).
    Crl {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Days the new CRL stays valid.
        #[arg(long, default_value_t = certs::DEFAULT_CRL_DAYS)]
        days: u32,
        /// The CA key's source, if not the one `certs init` recorded.
        #[command(flatten)]
        ca_key: CaKeyArgs,
    },
}

/// Exactly one certificate to revoke.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct RevokeArgs {
    /// Site name (its certificate is DIR/sites/NAME.pem).
    #[arg(long)]
    site: Option<String>,
    /// Operator name (its certificate is DIR/operators/NAME.pem).
    #[arg(long)]
    operator: Option<String>,
    /// Certificate serial in hex (colons allowed).
    #[arg(long)]
    serial: Option<String>,
}

impl RevokeArgs {
    pub(crate) fn target(&self) -> Result<certs::RevokeTarget<'_>> {
        Ok(match (&self.site, &self.operator, &self.serial) {
            (Some(n), _, _) => certs::RevokeTarget::Site(n),
            (_, Some(n), _) => certs::RevokeTarget::Operator(n),
            (_, _, Some(s)) => certs::RevokeTarget::Serial(s),
            _ => bail!("--site, --operator or --serial required"),
        })
    }
}
