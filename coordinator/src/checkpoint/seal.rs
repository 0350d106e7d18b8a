//! The primitives of checkpoint encryption at rest (no I/O): the data key,
//! key derivation, the segmented AEAD of data objects and the manifest's
//! MAC. `envelope.rs` puts them together; `keys.rs` wraps data keys.
//!
//! ```text
//! data key  DK: 32 random bytes, fresh for every checkpoint
//! object key  = HKDF(DK, salt SALT, info "object" ‖ 0 ‖ name)   32 B (AES-256-GCM) | 16 B (SM4-GCM)
//! MAC key     = HKDF(DK, salt SALT, info "manifest-mac")         32 B
//! object      = seg_0 ‖ seg_1 ‖ … ‖ seg_{n-1}     seg_i = AEAD(plaintext[i·S, (i+1)·S)) ‖ tag (16 B)
//! nonce_i     = 00 00 00 ‖ i (u64 BE) ‖ final (01 on the last segment, else 00)
//! aad         = "confide/checkpoint/v1/segment" ‖ suite code ‖ round (u64 BE) ‖ name
//! ```
//!
//! HKDF and the MAC's hash follow the suite (HKDF-SHA-256 / HMAC-SHA-256
//! for intl, HKDF-SM3 / HMAC-SM3 for gm), as does the AEAD (AES-256-GCM from
//! `ring`; SM4-GCM over the constant-time SM4 of `confide-crypto`).
//!
//! Why segments of [`SEGMENT`] bytes rather than one AEAD over the object:
//! a 10⁸-parameter model is 400 MB and its optimiser state 800 MB. One
//! AEAD call would have to hold the whole object before it could say
//! whether any of it is authentic, and could not be split across cores or
//! across the ranged GETs object storage already reads in. Each segment is
//! authenticated on its own, and the index and final flag in the nonce make
//! reordering, dropping or truncating segments fail to decrypt (the STREAM
//! construction of Hoang, Reyhanitabar, Rogaway and Vizár). One MiB keeps
//! the tag overhead at 16 B per MiB and a worker's buffer small.

use std::fmt;

use confide_crypto::Suite;
use hmac::{KeyInit, Mac};
use rand::Rng;
use zeroize::Zeroizing;

/// Plaintext bytes of one segment (the last one may be shorter).
pub const SEGMENT: usize = 1 << 20;
/// AEAD tag bytes (both suites).
pub const TAG: usize = 16;
/// Salt of every key derived from a data key.
const SALT: &[u8] = b"confide/checkpoint/v1";
const SEGMENT_AAD: &[u8] = b"confide/checkpoint/v1/segment";

/// Why sealed bytes do not open. Said without key material, always.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// A segment failed authentication.
    #[error(
        "{object}: segment {index} of {segments} does not authenticate (edited, reordered, truncated or from another checkpoint)"
    )]
    Segment {
        /// The object.
        object: String,
        /// 0-based segment index.
        index: usize,
        /// Segments the object's size implies.
        segments: usize,
    },
    /// Too short to hold even one tag.
    #[error("{object}: {len} bytes cannot be a sealed object (a truncated upload?)")]
    TooShort {
        /// The object.
        object: String,
        /// Its size.
        len: usize,
    },
    /// The manifest's MAC does not match.
    #[error(
        "the manifest's MAC does not match (the manifest was edited, or swapped in from another checkpoint)"
    )]
    Mac,
    /// A primitive refused its input (a bug, not tampering).
    #[error("{0}")]
    Primitive(&'static str),
}

/// A checkpoint's data key. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// Bytes of a data key.
    pub const LEN: usize = 32;

    /// A fresh random data key (the thread-local CSPRNG, seeded by the OS).
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(&mut k[..]);
        DataKey(k)
    }

    /// A data key from its bytes (after unwrapping); `None` if not 32 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = b.try_into().ok()?;
        Some(DataKey(Zeroizing::new(arr)))
    }

    /// Its bytes, for a [`crate::checkpoint::KeyWrapper`] to wrap.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Name of the suite's AEAD as the manifest records it.
pub fn aead_name(suite: Suite) -> &'static str {
    match suite {
        Suite::Intl => "AES-256-GCM",
        Suite::Gm => "SM4-GCM",
    }
}

/// Name of the suite's MAC as the manifest records it.
pub fn mac_name(suite: Suite) -> &'static str {
    match suite {
        Suite::Intl => "HMAC-SHA-256",
        Suite::Gm => "HMAC-SM3",
    }
}

/// Key bytes of the suite's AEAD.
pub fn aead_key_len(suite: Suite) -> usize {
    match suite {
        Suite::Intl => 32,
        Suite::Gm => 16,
    }
}

/// HKDF of the suite with the checkpoint salt.
pub fn derive(
    suite: Suite,
    ikm: &[u8],
    info: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    suite
        .provider()
        .kdf(ikm, SALT, info, &mut out[..])
        .map_err(|_| SealError::Primitive("HKDF output length"))?;
    Ok(out)
}

/// The suite's AEAD under one key.
pub enum Aead {
    /// AES-256-GCM (`ring`; boxed: its key schedule is half a KiB).
    Aes(Box<ring::aead::LessSafeKey>),
    /// SM4-GCM (`confide-crypto`'s constant-time SM4).
    Sm4(Zeroizing<[u8; 16]>),
}

impl Aead {
    /// The AEAD of `suite` under `key` ([`aead_key_len`] bytes).
    pub fn new(suite: Suite, key: &[u8]) -> Result<Self, SealError> {
        let bad = SealError::Primitive("AEAD key length");
        Ok(match suite {
            Suite::Intl => Aead::Aes(Box::new(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key).map_err(|_| bad)?,
            ))),
            Suite::Gm => Aead::Sm4(Zeroizing::new(key.try_into().map_err(|_| bad)?)),
        })
    }

    /// Seal `buf` (plaintext) in place and write its tag to `tag`.
    fn seal_into(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), SealError> {
        let fail = SealError::Primitive("AEAD seal");
        match self {
            Aead::Aes(k) => {
                let t = k
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(aad),
                        buf,
                    )
                    .map_err(|_| fail)?;
                tag.copy_from_slice(t.as_ref());
            }
            Aead::Sm4(k) => {
                let ct = Suite::Gm
                    .provider()
                    .seal(k, &nonce, aad, buf)
                    .map_err(|_| fail)?;
                let (c, t) = ct.split_at(buf.len());
                buf.copy_from_slice(c);
                tag.copy_from_slice(t);
            }
        }
        Ok(())
    }

    /// Open `ct` (ciphertext ‖ tag) into `out` (its plaintext length); false
    /// if it does not authenticate.
    fn open_into(&self, nonce: [u8; 12], aad: &[u8], ct: &[u8], out: &mut [u8]) -> bool {
        let (body, tag) = ct.split_at(ct.len() - TAG);
        match self {
            Aead::Aes(k) => {
                let Ok(tag) = ring::aead::Tag::try_from(tag) else {
                    return false;
                };
                out.copy_from_slice(body);
                k.open_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(aad),
                    tag,
                    out,
                    0..,
                )
                .is_ok()
            }
            Aead::Sm4(k) => match Suite::Gm.provider().open(k, &nonce, aad, ct) {
                Ok(pt) if pt.len() == out.len() => {
                    out.copy_from_slice(&pt);
                    true
                }
                _ => false,
            },
        }
    }

    /// Seal a short message with a random nonce: nonce ‖ ciphertext ‖ tag
    /// (data-key wrapping, where one key seals few messages).
    pub fn seal_random(&self, aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(12 + msg.len() + TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(msg);
        out.resize(12 + msg.len() + TAG, 0);
        let (body, tag) = out[12..].split_at_mut(msg.len());
        self.seal_into(nonce, aad, body, tag)?;
        Ok(out)
    }

    /// Open what [`Aead::seal_random`] sealed; `None` if it does not authenticate.
    pub fn open_random(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < 12 + TAG {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        let mut out = Zeroizing::new(vec![0u8; ct.len() - TAG]);
        self.open_into(nonce, aad, ct, &mut out).then_some(out)
    }
}

/// What one sealed object is bound to besides its key.
#[derive(Clone, Copy, Debug)]
pub struct ObjectContext<'a> {
    /// The federation's suite.
    pub suite: Suite,
    /// The checkpoint's round.
    pub round: u64,
    /// The object's file name.
    pub name: &'a str,
}

impl ObjectContext<'_> {
    fn key(&self, dk: &DataKey) -> Result<Aead, SealError> {
        let info = [b"object\0".as_slice(), self.name.as_bytes()].concat();
        let k = derive(self.suite, dk.expose(), &info, aead_key_len(self.suite))?;
        Aead::new(self.suite, &k)
    }

    fn aad(&self) -> Vec<u8> {
        let mut a = SEGMENT_AAD.to_vec();
        a.push(self.suite.code());
        a.extend_from_slice(&self.round.to_be_bytes());
        a.extend_from_slice(self.name.as_bytes());
        a
    }
}

fn nonce(index: usize, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&(index as u64).to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Workers for the segments of one object: the machine's cores, at most
/// one per segment.
fn workers(segments: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, segments.max(1))
}

/// One segment's work: its index, its input and its output.
type Job<'a, 'b> = (usize, &'a [u8], &'b mut [u8]);

/// Run `f(index, segment_in, segment_out)` over paired segments on
/// [`workers`] threads (each takes a contiguous run of segments).
fn par_segments<F>(input: Vec<&[u8]>, output: Vec<&mut [u8]>, f: F) -> Result<(), SealError>
where
    F: Fn(usize, &[u8], &mut [u8]) -> Result<(), SealError> + Sync,
{
    let n = input.len();
    let per = n.div_ceil(workers(n)).max(1);
    let mut jobs: Vec<Vec<Job<'_, '_>>> = Vec::new();
    for (i, (a, b)) in input.into_iter().zip(output).enumerate() {
        if i % per == 0 {
            jobs.push(Vec::new());
        }
        if let Some(j) = jobs.last_mut() {
            j.push((i, a, b));
        }
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let f = &f;
                s.spawn(move || job.into_iter().try_for_each(|(i, a, b)| f(i, a, b)))
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or(Err(SealError::Primitive("a sealing worker panicked")))
        })
    })
}

/// Seal one data object under the checkpoint's data key.
pub fn seal_object(
    dk: &DataKey,
    ctx: ObjectContext<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let aead = ctx.key(dk)?;
    let aad = ctx.aad();
    let segments = plaintext.len().div_ceil(SEGMENT).max(1);
    let mut out = vec![0u8; plaintext.len() + segments * TAG];
    let input: Vec<&[u8]> = if plaintext.is_empty() {
        vec![plaintext]
    } else {
        plaintext.chunks(SEGMENT).collect()
    };
    let output: Vec<&mut [u8]> = out.chunks_mut(SEGMENT + TAG).collect();
    par_segments(input, output, |i, pt, seg| {
        let (body, tag) = seg.split_at_mut(pt.len());
        body.copy_from_slice(pt);
        aead.seal_into(nonce(i, i + 1 == segments), &aad, body, tag)
    })?;
    Ok(out)
}

/// Open one data object sealed by [`seal_object`].
pub fn open_object(
    dk: &DataKey,
    ctx: ObjectContext<'_>,
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    let segments = sealed.len().div_ceil(SEGMENT + TAG);
    let last_len = sealed
        .len()
        .saturating_sub((segments.max(1) - 1) * (SEGMENT + TAG));
    if segments == 0 || last_len < TAG {
        return Err(SealError::TooShort {
            object: ctx.name.into(),
            len: sealed.len(),
        });
    }
    let aead = ctx.key(dk)?;
    let aad = ctx.aad();
    let mut out = vec![0u8; sealed.len() - segments * TAG];
    let input: Vec<&[u8]> = sealed.chunks(SEGMENT + TAG).collect();
    let mut output: Vec<&mut [u8]> = out.chunks_mut(SEGMENT).collect();
    if output.is_empty() {
        // An empty plaintext is one segment of only a tag.
        output.push(&mut []);
    }
    if output.len() != input.len() {
        // A trailing tag-only segment: the writer never makes one.
        return Err(SealError::Segment {
            object: ctx.name.into(),
            index: segments - 1,
            segments,
        });
    }
    par_segments(input, output, |i, ct, pt| {
        if aead.open_into(nonce(i, i + 1 == segments), &aad, ct, pt) {
            Ok(())
        } else {
            Err(SealError::Segment {
                object: ctx.name.into(),
                index: i,
                segments,
            })
        }
    })?;
    Ok(out)
}

/// The manifest's MAC over `bytes`, under a key derived from the data key.
pub fn manifest_mac(suite: Suite, dk: &DataKey, bytes: &[u8]) -> Result<[u8; 32], SealError> {
    Ok(match manifest_hmac(suite, dk, bytes)? {
        Hmac::Sha256(m) => m.finalize().into_bytes().into(),
        Hmac::Sm3(m) => m.finalize().into_bytes().into(),
    })
}

/// Check a manifest MAC (in constant time: `hmac`'s `verify_slice`).
pub fn verify_manifest_mac(
    suite: Suite,
    dk: &DataKey,
    bytes: &[u8],
    tag: &[u8],
) -> Result<(), SealError> {
    match manifest_hmac(suite, dk, bytes)? {
        Hmac::Sha256(m) => m.verify_slice(tag),
        Hmac::Sm3(m) => m.verify_slice(tag),
    }
    .map_err(|_| SealError::Mac)
}

enum Hmac {
    Sha256(hmac::Hmac<sha2::Sha256>),
    Sm3(hmac::Hmac<sm3::Sm3>),
}

fn manifest_hmac(suite: Suite, dk: &DataKey, bytes: &[u8]) -> Result<Hmac, SealError> {
    let key = derive(suite, dk.expose(), b"manifest-mac", 32)?;
    let bad = SealError::Primitive("HMAC key");
    Ok(match suite {
        Suite::Intl => {
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|_| bad)?;
            m.update(bytes);
            Hmac::Sha256(m)
        }
        Suite::Gm => {
            let mut m = hmac::Hmac::<sm3::Sm3>::new_from_slice(&key).map_err(|_| bad)?;
            m.update(bytes);
            Hmac::Sm3(m)
        }
    })
}

#[cfg(test)]
mod tests;
