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
//! against `ca.pem` and recorded ([`adopt`]).

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

use crate::error::CoordinatorError;

/// The CA key file inside the certs directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Where `certs init` records a non-default [`CaKeySource`] (no secrets).
pub const SOURCE_FILE: &str = "ca.key.source";

const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";
/// DER of the P-256 curve OID (1.2.840.10045.3.1.7), the token key's CKA_EC_PARAMS.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Why the CA key cannot be created, found, unlocked or used.
#[derive(Debug, thiserror::Error)]
pub enum CaKeyError {
    /// The environment variable named by a flag is missing or empty.
    #[error("environment variable {var} (named by {flag}) is not set, empty or not UTF-8")]
    EnvVar {
        /// The variable's name.
        var: String,
        /// The flag that named it.
        flag: &'static str,
    },
    /// An encrypted `ca.key` but no passphrase source.
    #[error(
        "{} is encrypted: pass --ca-passphrase-env VAR, VAR being the name of the \
         environment variable that holds its passphrase",
        path.display()
    )]
    NeedsPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// A passphrase source for a `ca.key` that is not encrypted.
    #[error("{} is not an encrypted key, but --ca-passphrase-env was given", path.display())]
    NotEncrypted {
        /// The key file.
        path: PathBuf,
    },
    /// The passphrase does not decrypt the key.
    #[error("{}: wrong passphrase (from ${var}): the key does not decrypt", path.display())]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
        /// The variable the passphrase came from.
        var: String,
    },
    /// `ca.key` is missing because the key lives in a token.
    #[error(
        "the CA key is in a PKCS#11 token (see {}), not in ca.key: pass --pkcs11-module, \
         --pkcs11-token, --pkcs11-key-label and --pkcs11-pin-env",
        path.display()
    )]
    InToken {
        /// The source record.
        path: PathBuf,
    },
    /// A key file others may read.
    #[error(
        "{} is accessible to group or others (mode {mode:03o}); a CA key must be private to \
         its owner: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file or source record that does not parse.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Flags that do not describe one source.
    #[error("{0}")]
    Flags(String),
    /// A PKCS#11 call that failed.
    #[error("PKCS#11: {op}: {source}")]
    Pkcs11 {
        /// What was attempted.
        op: String,
        /// The module's answer.
        #[source]
        source: P11Error,
    },
    /// The token or key is not as expected.
    #[error("PKCS#11: {0}")]
    Token(String),
    /// The key does not belong to the CA certificate.
    #[error("the CA key does not match the public key of {}", path.display())]
    KeyMismatch {
        /// The CA certificate.
        path: PathBuf,
    },
}

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
    /// The source `certs init` (or [`adopt`]) recorded for `dir`; [`CaKeySource::File`] when none.
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

/// Check that `source` unlocks the CA key of `dir` and that the key is the
/// one of `ca.pem`, then record it, so later commands need not repeat the flags.
pub fn adopt(dir: &Path, source: &CaKeySource) -> Result<(), CoordinatorError> {
    crate::certs::issuer(dir, source)?;
    source.record(dir)
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

/// One PKCS#11 context per module for the process: C_Initialize is
/// process-wide, and a second context would be refused or, finalized, would
/// log every session of the first out.
fn context(module: &Path) -> Result<Pkcs11, CaKeyError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = map.get(module) {
        return Ok(c.clone());
    }
    let op = || format!("load {}", module.display());
    let ctx = Pkcs11::new(module).map_err(|source| CaKeyError::Pkcs11 { op: op(), source })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in this process (another library) initialized it: share.
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(source) => return Err(CaKeyError::Pkcs11 { op: op(), source }),
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// A logged-in session on the token labelled `token`.
fn session(
    module: &Path,
    token: &str,
    pin_env: &str,
    pin: &str,
    rw: bool,
) -> Result<Session, CaKeyError> {
    let ctx = context(module)?;
    let p11 = |op: &str| {
        let op = op.to_string();
        move |source| CaKeyError::Pkcs11 { op, source }
    };
    let mut labels = Vec::new();
    let mut found = None;
    for slot in ctx.get_slots_with_token().map_err(p11("list slots"))? {
        let info = ctx.get_token_info(slot).map_err(p11("read token info"))?;
        let label = info.label().trim_end().to_string();
        if label == token {
            found = Some(slot);
            break;
        }
        labels.push(label);
    }
    let slot = found.ok_or_else(|| {
        CaKeyError::Token(format!(
            "no token labelled {token:?} in {} (tokens: {labels:?})",
            module.display()
        ))
    })?;
    let session = if rw {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    }
    .map_err(p11("open session"))?;
    match session.login(UserType::User, Some(&AuthPin::from(pin))) {
        // The login state is per token and application: another session of
        // this process did it (with the right PIN, or it would not be logged in).
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(source) => Err(CaKeyError::Pkcs11 {
            op: format!("log in to token {token:?} with the PIN from ${pin_env}"),
            source,
        }),
    }
}

/// The CA key inside a PKCS#11 token: CKM_ECDSA over a SHA-256 digest
/// computed here, the token's raw `r || s` re-encoded as DER for X.509.
pub struct Pkcs11Signer {
    session: Session,
    key: ObjectHandle,
    /// Uncompressed EC point (0x04 || X || Y), as X.509 puts it in the SPKI.
    public: Vec<u8>,
}

impl std::fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What the token says about the CA private key's protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyProtection {
    /// CKA_EXTRACTABLE: may be wrapped out of the token.
    pub extractable: bool,
    /// CKA_SENSITIVE: its value is never revealed in the clear.
    pub sensitive: bool,
}

impl Pkcs11Signer {
    fn label_attr(key_label: &str) -> Attribute {
        Attribute::Label(key_label.as_bytes().to_vec())
    }

    /// Generate a P-256 key pair labelled `key_label` in the token (refusing
    /// if the label is taken): private part sensitive and non-extractable.
    pub fn generate(
        module: &Path,
        token: &str,
        key_label: &str,
        pin_env: &str,
        pin: &str,
    ) -> Result<Self, CaKeyError> {
        let session = session(module, token, pin_env, pin, true)?;
        let taken = session
            .find_objects(&[Self::label_attr(key_label)])
            .map_err(|source| CaKeyError::Pkcs11 {
                op: "find objects".into(),
                source,
            })?;
        if !taken.is_empty() {
            return Err(CaKeyError::Token(format!(
                "token {token:?} already holds objects labelled {key_label:?}; refusing to \
                 create another CA key under that label"
            )));
        }
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Self::label_attr(key_label),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Derive(false),
            Self::label_attr(key_label),
        ];
        let (public, key) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|source| CaKeyError::Pkcs11 {
                op: "generate an EC P-256 key pair".into(),
                source,
            })?;
        let public = ec_point(&session, public)?;
        Ok(Self {
            session,
            key,
            public,
        })
    }

    /// The key pair labelled `key_label` in the token.
    pub fn open(
        module: &Path,
        token: &str,
        key_label: &str,
        pin_env: &str,
        pin: &str,
    ) -> Result<Self, CaKeyError> {
        let session = session(module, token, pin_env, pin, false)?;
        let find = |class| {
            session
                .find_objects(&[
                    Attribute::Class(class),
                    Attribute::KeyType(KeyType::EC),
                    Self::label_attr(key_label),
                ])
                .map_err(|source| CaKeyError::Pkcs11 {
                    op: "find objects".into(),
                    source,
                })
        };
        let one = |v: Vec<ObjectHandle>, what: &str| match v.as_slice() {
            [h] => Ok(*h),
            [] => Err(CaKeyError::Token(format!(
                "no EC {what} labelled {key_label:?} in token {token:?}"
            ))),
            _ => Err(CaKeyError::Token(format!(
                "several EC {what}s labelled {key_label:?} in token {token:?}"
            ))),
        };
        let key = one(find(ObjectClass::PRIVATE_KEY)?, "private key")?;
        let public = one(find(ObjectClass::PUBLIC_KEY)?, "public key")?;
        let params = session
            .get_attributes(key, &[AttributeType::EcParams])
            .map_err(|source| CaKeyError::Pkcs11 {
                op: "read CKA_EC_PARAMS".into(),
                source,
            })?;
        if !params
            .iter()
            .any(|a| matches!(a, Attribute::EcParams(p) if p.as_slice() == P256_PARAMS))
        {
            return Err(CaKeyError::Token(format!(
                "key {key_label:?} is not on curve P-256"
            )));
        }
        let public = ec_point(&session, public)?;
        Ok(Self {
            session,
            key,
            public,
        })
    }

    /// CKA_EXTRACTABLE and CKA_SENSITIVE of the private key, as the token reports them.
    pub fn protection(&self) -> Result<KeyProtection, CaKeyError> {
        let attrs = self
            .session
            .get_attributes(
                self.key,
                &[AttributeType::Extractable, AttributeType::Sensitive],
            )
            .map_err(|source| CaKeyError::Pkcs11 {
                op: "read key attributes".into(),
                source,
            })?;
        // Absent attributes count as the unsafe answer.
        let mut p = KeyProtection {
            extractable: true,
            sensitive: false,
        };
        for a in attrs {
            match a {
                Attribute::Extractable(b) => p.extractable = b,
                Attribute::Sensitive(b) => p.sensitive = b,
                _ => {}
            }
        }
        Ok(p)
    }
}

/// The uncompressed point of a token's EC public key. CKA_EC_POINT is a DER
/// OCTET STRING by the standard; some modules return the bare point.
fn ec_point(session: &Session, public: ObjectHandle) -> Result<Vec<u8>, CaKeyError> {
    let attrs = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(|source| CaKeyError::Pkcs11 {
            op: "read CKA_EC_POINT".into(),
            source,
        })?;
    let raw = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| CaKeyError::Token("public key without CKA_EC_POINT".into()))?;
    let point = match OctetString::from_der(&raw) {
        Ok(o) => o.into_bytes().into_vec(),
        Err(_) => raw,
    };
    if point.len() != 65 || point[0] != 0x04 {
        return Err(CaKeyError::Token(
            "CKA_EC_POINT is not an uncompressed P-256 point".into(),
        ));
    }
    Ok(point)
}

/// A raw `r || s` P-256 signature (what CKM_ECDSA returns) as the DER
/// ECDSA-Sig-Value X.509 carries; `None` if it is not one.
pub fn raw_ecdsa_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    let sig = p256::ecdsa::Signature::from_slice(raw).ok()?;
    Some(sig.to_der().as_bytes().to_vec())
}

impl PublicKeyData for Pkcs11Signer {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for Pkcs11Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // Hash here: CKM_ECDSA is what every token has (CKM_ECDSA_SHA256 is optional),
        // and only 32 bytes cross to the token.
        let digest = sha2::Sha256::digest(msg);
        let raw = self
            .session
            .sign(&Mechanism::Ecdsa, self.key, digest.as_slice())
            .map_err(|e| {
                // rcgen's error carries no detail: log it so the operator sees why.
                tracing::error!(error = %e, "PKCS#11 signature with the CA key failed");
                rcgen::Error::RemoteKeyError
            })?;
        raw_ecdsa_to_der(&raw).ok_or_else(|| {
            tracing::error!(len = raw.len(), "token returned no P-256 r||s signature");
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_refuses_junk() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        assert_eq!(CaKeySource::recorded(tmp.path())?, CaKeySource::File);
        for s in [
            CaKeySource::EncryptedFile {
                passphrase_env: "CA_PASS".into(),
            },
            CaKeySource::Pkcs11 {
                module: "/usr/lib/softhsm/libsofthsm2.so".into(),
                token: "confide ca".into(),
                key_label: "ca-2026".into(),
                pin_env: "CA_PIN".into(),
            },
        ] {
            s.record(tmp.path())?;
            assert_eq!(CaKeySource::recorded(tmp.path())?, s);
        }
        CaKeySource::File.record(tmp.path())?;
        assert!(!tmp.path().join(SOURCE_FILE).exists());
        for bad in [
            "source = tape\n",
            "source = encrypted-file\n",
            "source = encrypted-file\npassphrase-env = A\nextra = 1\n",
            "source = encrypted-file\nsource = pkcs11\n",
            "junk\n",
        ] {
            assert!(CaKeySource::parse_record(bad).is_err(), "{bad}");
        }
        let newline = CaKeySource::EncryptedFile {
            passphrase_env: "A\nsource = pkcs11".into(),
        };
        assert!(newline.record(tmp.path()).is_err());
        Ok(())
    }

    #[test]
    fn flags_describe_one_source() {
        let none = CaKeyArgs::default();
        assert!(matches!(none.source(), Ok(None)));
        let enc = CaKeyArgs {
            ca_passphrase_env: Some("P".into()),
            ..Default::default()
        };
        assert!(matches!(
            enc.source(),
            Ok(Some(CaKeySource::EncryptedFile { .. }))
        ));
        let partial = CaKeyArgs {
            pkcs11_module: Some("/m.so".into()),
            ..Default::default()
        };
        assert!(partial.source().is_err());
        let both = CaKeyArgs {
            ca_passphrase_env: Some("P".into()),
            pkcs11_module: Some("/m.so".into()),
            pkcs11_token: Some("t".into()),
            pkcs11_key_label: Some("k".into()),
            pkcs11_pin_env: Some("PIN".into()),
        };
        assert!(both.source().is_err());
    }

    #[test]
    fn encrypted_pkcs8_decrypts_only_with_its_passphrase() -> Result<(), Box<dyn std::error::Error>>
    {
        let key = KeyPair::generate()?;
        let der = Zeroizing::new(key.serialize_der());
        let pem = encrypt_pkcs8(&der, b"correct horse")?;
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let path = Path::new("ca.key");
        let back = decrypt_pkcs8(&pem, b"correct horse", path)?.ok_or("did not decrypt")?;
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        assert!(decrypt_pkcs8(&pem, b"wrong horse", path)?.is_none());
        Ok(())
    }

    #[test]
    fn raw_signature_becomes_der_that_verifies() -> Result<(), Box<dyn std::error::Error>> {
        use ring::signature::{
            ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
            UnparsedPublicKey,
        };
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "keygen")?;
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| e.to_string())?;
        // Many messages, so that r or s with a high bit (DER needs a 0x00) and
        // short values (DER drops leading zeros) both occur.
        for i in 0..64u32 {
            let msg = i.to_be_bytes();
            let raw = kp.sign(&rng, &msg).map_err(|_| "sign")?;
            let der = raw_ecdsa_to_der(raw.as_ref()).ok_or("not r||s")?;
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, kp.public_key().as_ref())
                .verify(&msg, &der)
                .map_err(|_| "DER signature does not verify")?;
        }
        assert!(
            raw_ecdsa_to_der(&[0u8; 64]).is_none(),
            "r = s = 0 is invalid"
        );
        assert!(raw_ecdsa_to_der(&[1u8; 63]).is_none());
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn readable_key_file_is_refused_with_the_fix() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir()?;
        crate::certs::init(tmp.path(), "t", &[], &CaKeySource::File)?;
        let key = tmp.path().join(CA_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640))?;
        let e = CaSigner::load(tmp.path(), &CaKeySource::File)
            .err()
            .ok_or("accepted a 0640 CA key")?;
        assert!(
            e.to_string()
                .contains(&format!("chmod 600 {}", key.display())),
            "{e}"
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        CaSigner::load(tmp.path(), &CaKeySource::File)?;
        Ok(())
    }
}
