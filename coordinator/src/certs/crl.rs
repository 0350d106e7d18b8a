//! `confide certs revoke` and `confide certs crl`: the CA's revocation
//! database and the signed X.509 CRL made from it.
//!
//! ```text
//! certs revoke --site A ─▶ serial of sites/A.pem ─▶ revoked.toml (+ entry, crl_number + 1)
//!                                                 ─▶ crl.pem (every entry, signed by the CA key)
//! certs crl [--days N]  ─▶ revoked.toml (crl_number + 1) ─▶ crl.pem with a fresh nextUpdate
//! ```
//!
//! `revoked.toml` is the CA's record (serial, name, kind, date) and holds the
//! last CRL number issued; `crl.pem` is what coordinators and sites read.
//! Numbers only grow, also when `revoked.toml` was lost (the number in an
//! existing `crl.pem` counts too), because sites never accept a lower one.
//! A CRL expires after `--days` (default [`DEFAULT_CRL_DAYS`]); run
//! `confide certs crl` from cron well within that.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use confide_proto::crl::Crl;
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::err;
use crate::error::CoordinatorError;

/// File name of the signed CRL inside the certs directory.
pub const CRL_FILE: &str = "crl.pem";
/// File name of the CA's revocation database inside the certs directory.
pub const REVOKED_DB: &str = "revoked.toml";
/// Days a CRL stays valid unless `--days` says otherwise.
pub const DEFAULT_CRL_DAYS: u32 = 7;

/// What to revoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeTarget<'a> {
    /// The site certificate `sites/NAME.pem`.
    Site(&'a str),
    /// The operator certificate `operators/NAME.pem`.
    Operator(&'a str),
    /// A certificate serial in hex (colons allowed).
    Serial(&'a str),
}

/// One revoked certificate in `revoked.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry {
    /// Serial, lowercase hex without leading zero bytes.
    pub serial: String,
    /// Site or operator name; empty if an unknown serial was revoked.
    pub name: String,
    /// "site", "operator" or "serial".
    pub kind: String,
    /// When it was revoked (RFC 3339, UTC).
    pub date: String,
}

/// `revoked.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationDb {
    /// Number of the last CRL issued (0: none yet).
    #[serde(default)]
    pub crl_number: u64,
    /// Every revoked certificate, oldest first.
    #[serde(default)]
    pub revoked: Vec<RevokedEntry>,
}

/// What `revoke` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The entry (the existing one if it was revoked before).
    pub entry: RevokedEntry,
    /// Whether it was already revoked.
    pub already: bool,
    /// The CRL written.
    pub crl: IssuedCrl,
}

/// A CRL `issue_crl` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCrl {
    /// `crl.pem`.
    pub path: PathBuf,
    /// Its CRL number.
    pub number: u64,
    /// Revoked certificates in it.
    pub entries: usize,
    /// Its nextUpdate (RFC 3339).
    pub next_update: String,
}

/// Read `dir/revoked.toml` (empty if missing).
pub fn read_db(dir: &Path) -> Result<RevocationDb, CoordinatorError> {
    let path = dir.join(REVOKED_DB);
    match fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevocationDb::default()),
        Err(e) => Err(err(format!("{}: {e}", path.display()))),
    }
}

/// Replace `path` in one step (temporary file, fsync, rename), so a
/// coordinator re-reading it never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // Readable by the coordinator and whoever ships it to sites.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path)
        .map_err(|e| CoordinatorError::Io(e.error))?;
    Ok(())
}

fn write_db(dir: &Path, db: &RevocationDb) -> Result<(), CoordinatorError> {
    let text = toml::to_string(db).map_err(|e| err(format!("{REVOKED_DB}: {e}")))?;
    let header = "# Revoked certificates and the last CRL number; written by `confide certs revoke` / `certs crl`.\n";
    write_atomic(&dir.join(REVOKED_DB), format!("{header}{text}").as_bytes())
}

/// Now, to the second (X.509 times have no fractions; neither need the logs).
fn now_utc() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now - time::Duration::nanoseconds(i64::from(now.nanosecond()))
}

/// Lowercase hex of a serial's value (no leading zero bytes), the form
/// `revoked.toml` and `certs list` use.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    hex::encode(&raw[start..])
}

/// The serial of the PEM certificate at `path`.
pub(super) fn file_serial(path: &Path) -> Result<String, CoordinatorError> {
    let pem = fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let der = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .1
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    Ok(serial_hex(cert.raw_serial()))
}

/// The (kind, name) of the issued certificate with `serial`, if any.
fn find_serial(dir: &Path, serial: &str) -> Result<Option<(String, String)>, CoordinatorError> {
    for (kind, name, path) in super::list(dir)? {
        if (kind == "site" || kind == "operator") && file_serial(&path)? == serial {
            return Ok(Some((kind, name)));
        }
    }
    Ok(None)
}

/// `certs revoke`: record the certificate's serial in `revoked.toml` and
/// write a fresh CRL valid for `days`. Revoking twice keeps one entry (and
/// still re-issues the CRL).
pub fn revoke(
    dir: &Path,
    target: RevokeTarget<'_>,
    days: u32,
) -> Result<Revoked, CoordinatorError> {
    let (serial, kind, name) = match target {
        RevokeTarget::Site(n) | RevokeTarget::Operator(n) => {
            super::check_name(n)?;
            let (kind, sub) = match target {
                RevokeTarget::Site(_) => ("site", "sites"),
                _ => ("operator", "operators"),
            };
            let path = dir.join(sub).join(format!("{n}.pem"));
            if !path.exists() {
                return Err(err(format!(
                    "no {kind} certificate {} to revoke",
                    path.display()
                )));
            }
            (file_serial(&path)?, kind.to_string(), n.to_string())
        }
        RevokeTarget::Serial(s) => {
            let raw = hex::decode(s.trim().replace(':', ""))
                .map_err(|_| err(format!("{s:?} is not a hexadecimal serial")))?;
            let serial = serial_hex(&raw);
            if serial.is_empty() {
                return Err(err(format!("{s:?} is not a certificate serial")));
            }
            match find_serial(dir, &serial)? {
                Some((kind, name)) => (serial, kind, name),
                None => (serial, "serial".to_string(), String::new()),
            }
        }
    };
    let mut db = read_db(dir)?;
    let existing = db.revoked.iter().find(|e| e.serial == serial).cloned();
    let entry = match &existing {
        Some(e) => e.clone(),
        None => {
            let date = now_utc()
                .format(&Rfc3339)
                .map_err(|e| err(format!("date: {e}")))?;
            let e = RevokedEntry {
                serial,
                name,
                kind,
                date,
            };
            db.revoked.push(e.clone());
            e
        }
    };
    let crl = issue(dir, db, days)?;
    Ok(Revoked {
        entry,
        already: existing.is_some(),
        crl,
    })
}

/// `certs crl`: re-issue the CRL from `revoked.toml` with the next number
/// and a `nextUpdate` `days` from now (creating both files if missing).
pub fn issue_crl(dir: &Path, days: u32) -> Result<IssuedCrl, CoordinatorError> {
    issue(dir, read_db(dir)?, days)
}

fn issue(dir: &Path, mut db: RevocationDb, days: u32) -> Result<IssuedCrl, CoordinatorError> {
    if days == 0 {
        return Err(err("a CRL must stay valid for at least one day"));
    }
    let issuer = super::issuer(dir, &crate::ca_key::CaKeySource::recorded(dir)?)?;
    // Never below a CRL already out there, even if revoked.toml was lost.
    let published = match fs::read(dir.join(CRL_FILE)) {
        Ok(pem) => Crl::from_pem(&pem).map(|c| c.number()).unwrap_or(0),
        Err(_) => 0,
    };
    db.crl_number = db.crl_number.max(published) + 1;
    let now = now_utc();
    let next = now + time::Duration::days(i64::from(days));
    let revoked_certs = db
        .revoked
        .iter()
        .map(|e| {
            let serial = hex::decode(&e.serial)
                .map_err(|_| err(format!("{REVOKED_DB}: serial {:?} is not hex", e.serial)))?;
            let when = OffsetDateTime::parse(&e.date, &Rfc3339)
                .map_err(|x| err(format!("{REVOKED_DB}: date {:?}: {x}", e.date)))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: when,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CoordinatorError>>()?;
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: next,
        crl_number: SerialNumber::from(db.crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(CoordinatorError::Certificate)?;
    let pem = crl.pem().map_err(CoordinatorError::Certificate)?;
    // The database first: a CRL must never hold an entry the database lost.
    write_db(dir, &db)?;
    let path = dir.join(CRL_FILE);
    write_atomic(&path, pem.as_bytes())?;
    Ok(IssuedCrl {
        path,
        number: db.crl_number,
        entries: db.revoked.len(),
        next_update: next.format(&Rfc3339).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
