//! Where the federation CA's private key lives and how it signs.
//!
//! Three sources ([`CaKeySource`]), one signer ([`CaSigner`], an
//! [`rcgen::SigningKey`], so `rcgen::Issuer<'_, CaSigner>` signs certificates
//! and `CertificateRevocationListParams::signed_by` signs CRLs):
//!
//! - `File`: `ca.key`, an unencrypted PKCS#8 PEM (the default, as before);
//! - `EncryptedFile`: `ca.key` as a PKCS#8 `ENCRYPTED PRIVATE KEY` (PBES2:
//!   scrypt, AES-256-CBC), its passphrase read from an environment variable
//!   whose *name* is given, never the passphrase itself;
//! - `Pkcs11`: an ECDSA P-256 key generated inside a PKCS#11 token
//!   (non-extractable, sensitive); the token signs, the key never leaves it.
//!
//! `certs init` records a non-default source in `ca.key.source`
//! ([`SOURCE_FILE`]): plain `key = value` lines holding the module path,
//! labels and the *names* of the environment variables, no secret. Later
//! commands ([`CaKeySource::recorded`]) find the key from it, so the flags are
//! needed at `init` only; given again to `certs issue` they are checked
//! against `ca.pem` and recorded (`certs::adopt_ca_key`).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use pkcs8::der::{Decode, asn1::OctetString};
use pkcs8::{EncryptedPrivateKeyInfoRef, LineEnding, PrivateKeyInfoRef};
use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};
use sha2::Digest;
use zeroize::Zeroizing;

pub use crate::error::CaKeyError;
use crate::error::CoordinatorError;

/// The CA key file inside the certs directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Where `certs init` records a non-default [`CaKeySource`] (no secrets).
pub const SOURCE_FILE: &str = "ca.key.source";

const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";
/// DER of the P-256 curve OID (1.2.840.10045.3.1.7), the token key's CKA_EC_PARAMS.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Where the CA private key lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CaKeySource {
    /// `ca.key`, unencrypted PKCS#8 PEM (0600).
    #[default]
    File,
    /// `ca.key`, PKCS#8 encrypted with the passphrase in `$passphrase_env`.
    EncryptedFile {
        /// Name of the environment variable holding the passphrase.
        passphrase_env: String,
    },
    /// A key pair inside a PKCS#11 token.
    Pkcs11 {
        /// The PKCS#11 module (shared library).
        module: PathBuf,
        /// The token's label.
        token: String,
        /// The key pair's CKA_LABEL.
        key_label: String,
        /// Name of the environment variable holding the user PIN.
        pin_env: String,
    },
}

/// The CA key flags of `confide certs init` and `confide certs issue`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CaKeyArgs {
    /// Encrypt (init) or decrypt the CA key file with the passphrase held in
    /// this environment variable (give its NAME: never a passphrase on the command line).
    #[arg(long, value_name = "VAR", conflicts_with = "pkcs11_module")]
    pub ca_passphrase_env: Option<String>,
    /// Keep the CA key in a PKCS#11 token: the module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(
        long,
        value_name = "PATH",
        requires_all = ["pkcs11_token", "pkcs11_key_label", "pkcs11_pin_env"]
    )]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the PKCS#11 token holding the CA key.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
    pub pkcs11_token: Option<String>,
    /// Label of the CA key pair in the token.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
    pub pkcs11_key_label: Option<String>,
    /// Environment variable holding the token's user PIN (its NAME).
    #[arg(long, value_name = "VAR", requires = "pkcs11_module")]
    pub pkcs11_pin_env: Option<String>,
}

impl CaKeyArgs {
    /// The source these flags describe; `None` when none was given.
    pub fn source(&self) -> Result<Option<CaKeySource>, CaKeyError> {
        let p11 = (
            &self.pkcs11_module,
            &self.pkcs11_token,
            &self.pkcs11_key_label,
            &self.pkcs11_pin_env,
        );
        match (&self.ca_passphrase_env, p11) {
            (None, (None, None, None, None)) => Ok(None),
            (Some(var), (None, None, None, None)) => Ok(Some(CaKeySource::EncryptedFile {
                passphrase_env: var.clone(),
            })),
            (None, (Some(m), Some(t), Some(k), Some(p))) => Ok(Some(CaKeySource::Pkcs11 {
                module: m.clone(),
                token: t.clone(),
                key_label: k.clone(),
                pin_env: p.clone(),
            })),
            (Some(_), _) => Err(CaKeyError::Flags(
                "--ca-passphrase-env and --pkcs11-* exclude each other".into(),
            )),
            _ => Err(CaKeyError::Flags(
                "--pkcs11-module, --pkcs11-token, --pkcs11-key-label and --pkcs11-pin-env \
                 go together"
                    .into(),
            )),
        }
    }
}

impl CaKeySource {
    /// The source `certs init` (or `certs::adopt_ca_key`) recorded for `dir`; [`CaKeySource::File`] when none.
    pub fn recorded(dir: &Path) -> Result<Self, CaKeyError> {
        let path = dir.join(SOURCE_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Self::parse_record(&text).map_err(|reason| CaKeyError::Format {
                path: path.clone(),
                reason,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::File),
            Err(e) => Err(CaKeyError::Format {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// The text of `ca.key.source`; `None` for [`CaKeySource::File`], which needs no record.
    fn record_text(&self) -> Result<Option<String>, CaKeyError> {
        let head = "# Where `confide certs` finds this federation's CA private key.\n\
                    # No secret here: only names of environment variables.\n";
        let fields: Vec<(&str, String)> = match self {
            Self::File => return Ok(None),
            Self::EncryptedFile { passphrase_env } => vec![
                ("source", "encrypted-file".into()),
                ("passphrase-env", passphrase_env.clone()),
            ],
            Self::Pkcs11 {
                module,
                token,
                key_label,
                pin_env,
            } => vec![
                ("source", "pkcs11".into()),
                (
                    "module",
                    module
                        .to_str()
                        .ok_or_else(|| CaKeyError::Flags("module path is not UTF-8".into()))?
                        .into(),
                ),
                ("token", token.clone()),
                ("key-label", key_label.clone()),
                ("pin-env", pin_env.clone()),
            ],
        };
        let mut text = head.to_string();
        for (k, v) in fields {
            // One value per line, trimmed on reading: refuse what would not read back.
            if v.is_empty() || v.contains(['\n', '\r']) || v.trim() != v {
                return Err(CaKeyError::Flags(format!(
                    "{k} {v:?} must be non-empty, one line, without surrounding spaces"
                )));
            }
            text.push_str(&format!("{k} = {v}\n"));
        }
        Ok(Some(text))
    }

    fn parse_record(text: &str) -> Result<Self, String> {
        let mut kv = HashMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not `key = value`"))?;
            if kv.insert(k.trim(), v.trim().to_string()).is_some() {
                return Err(format!("{} given twice", k.trim()));
            }
        }
        let mut take = |k: &str| kv.remove(k).ok_or_else(|| format!("{k} missing"));
        let source = match take("source")?.as_str() {
            "encrypted-file" => Self::EncryptedFile {
                passphrase_env: take("passphrase-env")?,
            },
            "pkcs11" => Self::Pkcs11 {
                module: PathBuf::from(take("module")?),
                token: take("token")?,
                key_label: take("key-label")?,
                pin_env: take("pin-env")?,
            },
            other => return Err(format!("unknown source {other:?}")),
        };
        if let Some(k) = kv.keys().next() {
            return Err(format!("unknown key {k}"));
        }
        Ok(source)
    }

    /// Write `dir/ca.key.source` for this source (replacing any), or remove it for `File`.
    pub fn record(&self, dir: &Path) -> Result<(), CoordinatorError> {
        let path = dir.join(SOURCE_FILE);
        match self.record_text()? {
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Some(text) => {
                // Write then rename, so a reader never sees half a record.
                let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
                tmp.write_all(text.as_bytes())?;
                tmp.as_file().sync_all()?;
                tmp.persist(&path).map_err(|e| e.error)?;
                Ok(())
            }
        }
    }
}

fn env_secret(var: &str, flag: &'static str) -> Result<Zeroizing<String>, CaKeyError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Zeroizing::new(v)),
        _ => Err(CaKeyError::EnvVar {
            var: var.to_string(),
            flag,
        }),
    }
}

/// Refuse a key file that group or others may read (or write).
fn check_private(path: &Path) -> Result<(), CoordinatorError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaKeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            }
            .into());
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Encrypt a PKCS#8 DER private key as an `ENCRYPTED PRIVATE KEY` PEM
/// (PBES2: scrypt log2 N = 15, r = 8, p = 1; AES-256-CBC; random salt and IV).
pub fn encrypt_pkcs8(der: &[u8], passphrase: &[u8]) -> Result<String, CaKeyError> {
    let fail = |e: &dyn std::fmt::Display| CaKeyError::Format {
        path: PathBuf::from(CA_KEY_FILE),
        reason: format!("encryption failed: {e}"),
    };
    let info = PrivateKeyInfoRef::try_from(der).map_err(|e| fail(&e))?;
    let enc = info.encrypt(passphrase).map_err(|e| fail(&e))?;
    let pem = enc
        .to_pem(ENCRYPTED_LABEL, LineEnding::LF)
        .map_err(|e| fail(&e))?;
    Ok(pem.as_str().to_string())
}

/// Decrypt an `ENCRYPTED PRIVATE KEY` PEM into a key pair. `Ok(None)` means
/// the passphrase is wrong (decryption or the decrypted DER failed).
fn decrypt_pkcs8(pem: &str, passphrase: &[u8], path: &Path) -> Result<Option<KeyPair>, CaKeyError> {
    let format = |reason: String| CaKeyError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let (label, doc) = pkcs8::Document::from_pem(pem).map_err(|e| format(e.to_string()))?;
    if label != ENCRYPTED_LABEL {
        return Err(format(format!(
            "PEM label {label:?}, expected {ENCRYPTED_LABEL:?}"
        )));
    }
    let info =
        EncryptedPrivateKeyInfoRef::try_from(doc.as_bytes()).map_err(|e| format(e.to_string()))?;
    match info.decrypt(passphrase) {
        // SecretDocument zeroizes the plaintext DER when dropped.
        Ok(plain) => Ok(KeyPair::try_from(plain.as_bytes()).ok()),
        // An unsupported scheme is not a wrong passphrase: say so.
        Err(pkcs8::Error::EncryptedPrivateKey(
            e @ (pkcs8::pkcs5::Error::UnsupportedAlgorithm { .. }
            | pkcs8::pkcs5::Error::AlgorithmParametersInvalid { .. }),
        )) => Err(format(e.to_string())),
        // Bad padding or undecodable plaintext: the passphrase is wrong.
        Err(_) => Ok(None),
    }
}

/// The CA's signing key: in memory (from `ca.key`) or in a PKCS#11 token.
#[derive(Debug)]
// One signer per command, moved once into an Issuer: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum CaSigner {
    /// A key pair read from (or just written to) `ca.key`.
    Key(KeyPair),
    /// A key pair inside a token.
    Pkcs11(Pkcs11Signer),
}

impl CaSigner {
    /// A new CA key for `source`, with the PEM to write to `ca.key` (`None` for a token key).
    pub fn generate(
        source: &CaKeySource,
    ) -> Result<(Self, Option<Zeroizing<String>>), CoordinatorError> {
        match source {
            CaKeySource::File => {
                let key = KeyPair::generate().map_err(CoordinatorError::Certificate)?;
                let pem = Zeroizing::new(key.serialize_pem());
                Ok((Self::Key(key), Some(pem)))
            }
            CaKeySource::EncryptedFile { passphrase_env } => {
                let pass = env_secret(passphrase_env, "--ca-passphrase-env")?;
                let key = KeyPair::generate().map_err(CoordinatorError::Certificate)?;
                let der = Zeroizing::new(key.serialize_der());
                let pem = encrypt_pkcs8(&der, pass.as_bytes())?;
                Ok((Self::Key(key), Some(Zeroizing::new(pem))))
            }
            CaKeySource::Pkcs11 {
                module,
                token,
                key_label,
                pin_env,
            } => {
                let pin = env_secret(pin_env, "--pkcs11-pin-env")?;
                let signer = Pkcs11Signer::generate(module, token, key_label, pin_env, &pin)?;
                Ok((Self::Pkcs11(signer), None))
            }
        }
    }

    /// The CA key of `dir` from `source`.
    pub fn load(dir: &Path, source: &CaKeySource) -> Result<Self, CoordinatorError> {
        let path = dir.join(CA_KEY_FILE);
        let read = || -> Result<Zeroizing<String>, CoordinatorError> {
            let missing = |e: std::io::Error| {
                if matches!(CaKeySource::recorded(dir), Ok(CaKeySource::Pkcs11 { .. })) {
                    CaKeyError::InToken {
                        path: dir.join(SOURCE_FILE),
                    }
                    .into()
                } else {
                    CoordinatorError::Tls(format!(
                        "{}: {e} (run `confide certs init`)",
                        path.display()
                    ))
                }
            };
            fs::metadata(&path).map_err(missing)?;
            // Refuse an exposed key before reading it.
            check_private(&path)?;
            Ok(Zeroizing::new(
                fs::read_to_string(&path).map_err(CoordinatorError::Io)?,
            ))
        };
        match source {
            CaKeySource::File => {
                let pem = read()?;
                if pem.contains(ENCRYPTED_LABEL) {
                    return Err(CaKeyError::NeedsPassphrase { path }.into());
                }
                Ok(Self::Key(
                    KeyPair::from_pem(&pem).map_err(CoordinatorError::Certificate)?,
                ))
            }
            CaKeySource::EncryptedFile { passphrase_env } => {
                let pem = read()?;
                if !pem.contains(ENCRYPTED_LABEL) {
                    return Err(CaKeyError::NotEncrypted { path }.into());
                }
                let pass = env_secret(passphrase_env, "--ca-passphrase-env")?;
                match decrypt_pkcs8(&pem, pass.as_bytes(), &path)? {
                    Some(key) => Ok(Self::Key(key)),
                    None => Err(CaKeyError::WrongPassphrase {
                        path,
                        var: passphrase_env.clone(),
                    }
                    .into()),
                }
            }
            CaKeySource::Pkcs11 {
                module,
                token,
                key_label,
                pin_env,
            } => {
                let pin = env_secret(pin_env, "--pkcs11-pin-env")?;
                Ok(Self::Pkcs11(Pkcs11Signer::open(
                    module, token, key_label, pin_env, &pin,
                )?))
            }
        }
    }

    /// Refuse a key that is not the one certified by `ca_pem` (whose path is `path`).
    pub fn check_matches(&self, ca_pem: &str, path: &Path) -> Result<(), CoordinatorError> {
        let mismatch = || CaKeyError::KeyMismatch {
            path: path.to_path_buf(),
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).map_err(|_| {
            CaKeyError::Format {
                path: path.to_path_buf(),
                reason: "not a PEM certificate".into(),
            }
        })?;
        let cert = pem.parse_x509().map_err(|e| CaKeyError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if cert.public_key().subject_public_key.data.as_ref() != self.der_bytes() {
            return Err(mismatch().into());
        }
        Ok(())
    }
}

impl PublicKeyData for CaSigner {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::Key(k) => k.der_bytes(),
            Self::Pkcs11(p) => p.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            Self::Key(k) => PublicKeyData::algorithm(k),
            Self::Pkcs11(p) => p.algorithm(),
        }
    }
}

impl SigningKey for CaSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::Key(k) => k.sign(msg),
            Self::Pkcs11(p) => p.sign(msg),
        }
    }
}

mod pkcs11;
pub use pkcs11::{KeyProtection, Pkcs11Signer, raw_ecdsa_to_der};

#[cfg(test)]
mod tests;
