//! The CA key in a PKCS#11 token: one context per module, sessions, key
//! generation and signing inside the token.

use super::*;

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
