//! How a site's long-term signing identity is written down: the SAN URI that
//! binds a verifying key into a site certificate, and the signing-key file.
//!
//! The certificate authority writes both (`confide certs`), the site reads
//! its key file, and every neighbour reads the URI back out of a relayed
//! certificate, so both sides must agree on the exact text.
//!
//! ```
//! use confide_proto::keys::{parse_vk_uri, vk_uri};
//! use confide_crypto::Suite;
//! let uri = vk_uri(Suite::Gm, &[0xab, 0x01]);
//! assert_eq!(uri, "confide:vk:gm:ab01");
//! assert_eq!(parse_vk_uri(&uri), Some((Suite::Gm, vec![0xab, 0x01])));
//! ```

use std::path::{Path, PathBuf};

use confide_crypto::suite::SigningKey;
use confide_crypto::{CryptoError, Suite};
use serde::Deserialize;

/// Prefix of the SAN URI that carries a site's verifying key:
/// `confide:vk:<suite>:<lowercase hex>`.
pub const VK_URI_PREFIX: &str = "confide:vk:";

/// The SAN URI binding `key` (of `suite`) to a site certificate.
pub fn vk_uri(suite: Suite, key: &[u8]) -> String {
    format!("{VK_URI_PREFIX}{}:{}", suite.name(), hex::encode(key))
}

/// SAN URI that makes a certificate an operator's (Admin API access). The
/// CA writes it only into certificates it issues with `--operator`, and it
/// builds every site certificate's names itself from a request, so a site can
/// never obtain it, whatever name it asks for. A certificate carrying it is
/// never admitted as a site.
pub const OPERATOR_ROLE_URI: &str = "confide:role:operator";

/// Parse a [`vk_uri`]; `None` if `uri` is not one.
pub fn parse_vk_uri(uri: &str) -> Option<(Suite, Vec<u8>)> {
    let rest = uri.strip_prefix(VK_URI_PREFIX)?;
    let (suite, hex_key) = rest.split_once(':')?;
    let suite = suite.parse::<Suite>().ok()?;
    let key = hex::decode(hex_key).ok()?;
    (!key.is_empty()).then_some((suite, key))
}

/// Why a signing-key file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Not TOML of the expected shape.
    #[error("not a valid key file: {0}")]
    Format(String),
    /// The suite is not one Confide knows.
    #[error("unknown suite '{0}': expected \"intl\" or \"gm\"")]
    Suite(String),
    /// The secret is not hexadecimal.
    #[error("secret is not hex: {0}")]
    Hex(#[from] hex::FromHexError),
    /// The secret has the wrong size.
    #[error("secret must be 32 bytes (64 hex digits), got {0} bytes")]
    Length(usize),
    /// The secret is not a key of its suite (zero, or out of range for SM2).
    #[error("secret is not a valid {suite} signing key: {source}")]
    Key {
        /// The suite named in the file.
        suite: Suite,
        /// What the suite said.
        #[source]
        source: CryptoError,
    },
    /// The file is readable by other users of the machine.
    #[error(
        "{}: a private key must be readable by its owner only (mode {mode:04o}); fix with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file cannot be read.
    #[error("{}: unreadable: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
}

/// The signing-key file: `suite = "intl"`, `secret = "<64 hex digits>"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningKeyFile {
    suite: String,
    secret: String,
}

/// Parses a signing-key TOML document.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, KeyFileError> {
    let file: SigningKeyFile =
        toml::from_str(text).map_err(|e| KeyFileError::Format(e.message().to_string()))?;
    let suite: Suite = file
        .suite
        .parse()
        .map_err(|_| KeyFileError::Suite(file.suite.clone()))?;
    let secret = zeroize::Zeroizing::new(file.secret);
    let bytes = zeroize::Zeroizing::new(hex::decode(secret.trim())?);
    if bytes.len() != 32 {
        return Err(KeyFileError::Length(bytes.len()));
    }
    SigningKey::from_bytes(suite, &bytes).map_err(|source| KeyFileError::Key { suite, source })
}

/// Reads and parses a signing-key file, refusing one that other users can
/// read ([`check_private_file`]).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    check_private_file(path)?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        }
    })?);
    parse_signing_key(&text)
}

/// Refuses a private-key file with any group or other permission bit (on
/// Unix): a key another account on the machine can read is no longer the
/// site's alone. The error says how to fix it.
pub fn check_private_file(path: &Path) -> Result<(), KeyFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The signing-key TOML for `key`.
pub fn signing_key_toml(key: &SigningKey) -> String {
    format!(
        "suite = \"{}\"\nsecret = \"{}\"\n",
        key.suite(),
        hex::encode(key.secret_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vk_uris_round_trip_and_refuse_other_text() {
        for suite in Suite::ALL {
            let uri = vk_uri(suite, &[1, 2, 255]);
            assert_eq!(parse_vk_uri(&uri), Some((suite, vec![1, 2, 255])));
        }
        for bad in [
            "https://example.org",
            "confide:vk:rsa:00",
            "confide:vk:intl:zz",
            "confide:vk:intl:",
            "confide:vk:intl",
        ] {
            assert_eq!(parse_vk_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_say_why() {
        let mut rng = rand::rng();
        for suite in Suite::ALL {
            let key = SigningKey::generate(suite, &mut rng);
            let back = parse_signing_key(&signing_key_toml(&key));
            assert!(
                back.is_ok_and(|k| k.secret_bytes() == key.secret_bytes() && k.suite() == suite)
            );
        }
        let hex32 = "11".repeat(32);
        assert!(matches!(
            parse_signing_key("suite = 1"),
            Err(KeyFileError::Format(_))
        ));
        assert!(matches!(
            parse_signing_key(&format!("suite = \"rsa\"\nsecret = \"{hex32}\"")),
            Err(KeyFileError::Suite(s)) if s == "rsa"
        ));
        assert!(matches!(
            parse_signing_key("suite = \"gm\"\nsecret = \"0011\""),
            Err(KeyFileError::Length(2))
        ));
        assert!(matches!(
            parse_signing_key(&format!("suite = \"gm\"\nsecret = \"{}\"", "00".repeat(32))),
            Err(KeyFileError::Key {
                suite: Suite::Gm,
                ..
            })
        ));
        let missing = load_signing_key(Path::new("/nonexistent/k.toml"));
        assert!(missing.is_err_and(|e| e.to_string().contains("/nonexistent/k.toml")));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_other_users_can_read_is_refused_with_the_fix()
    -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("site.signing.toml");
        let key = SigningKey::generate(Suite::Intl, &mut rand::rng());
        std::fs::write(&path, signing_key_toml(&key))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
        let err = load_signing_key(&path)
            .err()
            .ok_or("accepted a 0640 key file")?;
        assert!(
            matches!(err, KeyFileError::Exposed { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        assert!(load_signing_key(&path).is_ok());
        Ok(())
    }
}
