//! The site's contribution ledger on disk: what `contribution.rs` keeps per
//! (federation, model hash), so that a restarted site still replays exactly
//! the input it sent and still refuses any cohort but the survivor set it
//! signed. Without it a restart would train afresh and put a *different*
//! input into a second sum on the same model — the differencing the replay
//! rule exists to prevent.
//!
//! Layout, in the site's state directory (created 0700, files 0600):
//!
//! ```text
//! contributions/ledger               "confide-ledger 1 sha256=<hex of body>\n" + JSON body
//! contributions/input-<id>.bin       one exact quantised input (binary, below)
//! contributions/lock                 held while a site process uses the directory
//! ```
//!
//! The JSON body lists every model's entry: federation, model hash, the
//! round-start terms (protobuf, hex), the signed survivor set, the plain
//! flag and, for the newest `KEPT` models, the input file with its length,
//! ring and SHA-256. Older models keep a small entry without input: they
//! stay refused. An input file is `CONFIDE-INPUT\0\0\0`, version (u32 LE),
//! ring bits (u32 LE, 32 or 64), element count (u64 LE), the elements
//! little-endian, then the SHA-256 of everything before it.
//!
//! Every file is written whole to a temporary file, fsynced, renamed over
//! the old one and the directory fsynced, so a crash leaves the old or the
//! new version, never a mix; an input file is written before the ledger
//! names it. A ledger that is unreadable, of another version, or whose
//! checksum or input files do not match is a startup error naming the file,
//! never ignored: docs/site.md ("Contribution ledger") says when an
//! operator may remove it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use confide_crypto::protocol::RingVec;
use confide_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ClientError;

/// The ledger's format version (the header line's number).
const VERSION: u32 = 1;
const HEADER: &str = "confide-ledger";
const INPUT_MAGIC: &[u8; 16] = b"CONFIDE-INPUT\0\0\0";
const INPUT_VERSION: u32 = 1;
/// Elements per write or read while streaming an input file.
const CHUNK: usize = 1 << 16;

/// One model's entry as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Stored {
    pub federation: String,
    /// SHA-256 of the model (hex).
    pub model: String,
    /// The round-start terms the input was computed under (protobuf, hex).
    pub terms: String,
    /// The input's file, while the input is kept.
    pub input: Option<InputFile>,
    /// The survivor set signed (site names).
    pub signed: Option<BTreeSet<String>>,
    pub plain: bool,
    pub seq: u64,
}

/// Where an input lives and what it must read back as.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InputFile {
    /// File name inside the ledger directory.
    pub file: String,
    /// Ring bits, 32 or 64.
    pub ring: u32,
    pub len: u64,
    /// SHA-256 of the whole file up to its trailer (hex).
    pub sha256: String,
}

/// The ledger's JSON body.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Body {
    pub seq: u64,
    pub entries: Vec<Stored>,
}

/// The ledger directory of a site, held (locked) while the site runs.
#[derive(Debug)]
pub(super) struct Store {
    dir: PathBuf,
    /// The advisory lock: a second site process on the same directory
    /// would overwrite this one's record.
    _lock: File,
}

fn err(path: &Path, reason: impl Into<String>) -> ClientError {
    ClientError::Ledger {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What to tell an operator whose ledger cannot be read.
fn corrupt(path: &Path, what: impl std::fmt::Display) -> ClientError {
    err(
        path,
        format!(
            "{what}; the site will not start without its record of the inputs it sent \
             (see docs/site.md, \"Contribution ledger\", before removing it)"
        ),
    )
}

/// Creates `dir` (and parents) owner-only.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Writes `path` whole: a 0600 temporary file in the same directory,
/// fsynced, renamed over `path`, then the directory fsynced.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o600));
    }
    let tmp = builder.tempfile_in(dir)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

impl Store {
    /// Opens (creating) the ledger directory under the state directory
    /// `state` and locks it.
    pub(super) fn open(state: &Path) -> Result<Self, ClientError> {
        let dir = state.join("contributions");
        create_private_dir(&dir).map_err(|e| err(&dir, format!("cannot create: {e}")))?;
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| err(&lock_path, format!("cannot open: {e}")))?;
        lock.try_lock().map_err(|e| {
            err(
                &lock_path,
                format!("another site process uses this state directory ({e})"),
            )
        })?;
        Ok(Store { dir, _lock: lock })
    }

    /// The ledger file.
    pub(super) fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger")
    }

    /// The body, or `None` on a first start. Every input file it names is
    /// read and checked, one at a time, and not kept: a replay reads its
    /// input again (and checks it again) when it needs it.
    pub(super) fn load(&self) -> Result<Option<Body>, ClientError> {
        let path = self.ledger_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(corrupt(&path, format!("unreadable: {e}"))),
        };
        let body = parse(&path, &bytes)?;
        for f in body.entries.iter().filter_map(|e| e.input.as_ref()) {
            self.read_input(f)?;
        }
        Ok(Some(body))
    }

    /// Writes `body` as the ledger (its input files must exist already).
    pub(super) fn save(&self, body: &Body) -> Result<(), ClientError> {
        let path = self.ledger_path();
        let json = serde_json::to_vec(body).map_err(|e| err(&path, e.to_string()))?;
        let sum = hex::encode(Sha256::digest(&json));
        write_atomic(&path, |w| {
            writeln!(w, "{HEADER} {VERSION} sha256={sum}")?;
            w.write_all(&json)
        })
        .map_err(|e| err(&path, format!("cannot write: {e}")))
    }

    /// Writes `x` as input file `name`; returns its description.
    pub(super) fn write_input(&self, name: &str, x: &RingVec) -> Result<InputFile, ClientError> {
        let path = self.dir.join(name);
        let mut h = Sha256::new();
        let (ring, len) = (ring_bits(x), x.len() as u64);
        write_atomic(&path, |w| {
            let mut put = |b: &[u8]| -> io::Result<()> {
                h.update(b);
                w.write_all(b)
            };
            put(INPUT_MAGIC)?;
            put(&INPUT_VERSION.to_le_bytes())?;
            put(&ring.to_le_bytes())?;
            put(&len.to_le_bytes())?;
            let mut buf = Vec::with_capacity(CHUNK * 8);
            match x {
                RingVec::U32(v) => {
                    for c in v.chunks(CHUNK) {
                        buf.clear();
                        c.iter()
                            .for_each(|e| buf.extend_from_slice(&e.to_le_bytes()));
                        put(&buf)?;
                    }
                }
                RingVec::U64(v) => {
                    for c in v.chunks(CHUNK) {
                        buf.clear();
                        c.iter()
                            .for_each(|e| buf.extend_from_slice(&e.to_le_bytes()));
                        put(&buf)?;
                    }
                }
            }
            let digest = h.clone().finalize();
            w.write_all(&digest)
        })
        .map_err(|e| err(&path, format!("cannot write: {e}")))?;
        Ok(InputFile {
            file: name.to_string(),
            ring,
            len,
            sha256: hex::encode(h.finalize()),
        })
    }

    /// Reads input file `f` back, checking everything the ledger says of it.
    pub(super) fn read_input(&self, f: &InputFile) -> Result<RingVec, ClientError> {
        if f.file.contains(['/', '\\']) || f.file.starts_with('.') {
            return Err(corrupt(
                &self.ledger_path(),
                "an input file name is not a plain name",
            ));
        }
        let path = self.dir.join(&f.file);
        let file = File::open(&path).map_err(|e| corrupt(&path, format!("unreadable: {e}")))?;
        let mut r = BufReader::new(file);
        let mut h = Sha256::new();
        let bad = |what: &str| corrupt(&path, what);
        let mut take = |n: usize, h: &mut Sha256| -> Result<Vec<u8>, ClientError> {
            let mut b = vec![0u8; n];
            r.read_exact(&mut b)
                .map_err(|e| corrupt(&path, format!("truncated: {e}")))?;
            h.update(&b);
            Ok(b)
        };
        let head = take(16 + 4 + 4 + 8, &mut h)?;
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&head[24..32]);
        let (version, ring, len) = (u32_at(16), u32_at(20), u64::from_le_bytes(len8));
        if &head[..16] != INPUT_MAGIC || version != INPUT_VERSION {
            return Err(bad("not a Confide input file of a known version"));
        }
        if ring != f.ring || len != f.len {
            return Err(bad("its ring or length differs from the ledger's"));
        }
        let n = usize::try_from(len).map_err(|_| bad("length out of range"))?;
        let x = match ring {
            32 => {
                let mut v = Vec::with_capacity(n.min(1 << 28));
                while v.len() < n {
                    let m = (n - v.len()).min(CHUNK);
                    let b = take(4 * m, &mut h)?;
                    v.extend(
                        b.chunks_exact(4)
                            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    );
                }
                RingVec::U32(v)
            }
            64 => {
                let mut v = Vec::with_capacity(n.min(1 << 27));
                while v.len() < n {
                    let m = (n - v.len()).min(CHUNK);
                    let b = take(8 * m, &mut h)?;
                    v.extend(b.chunks_exact(8).map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        u64::from_le_bytes(a)
                    }));
                }
                RingVec::U64(v)
            }
            _ => return Err(bad("unknown ring")),
        };
        let digest = h.finalize();
        let mut trailer = [0u8; 32];
        r.read_exact(&mut trailer)
            .map_err(|e| corrupt(&path, format!("truncated: {e}")))?;
        let mut rest = [0u8; 1];
        let extra = r
            .read(&mut rest)
            .map_err(|e| corrupt(&path, e.to_string()))?;
        if trailer != digest.as_slice() || hex::encode(digest) != f.sha256 || extra != 0 {
            return Err(bad("checksum mismatch (corrupt, truncated or replaced)"));
        }
        Ok(x)
    }

    /// Removes input file `name` (its model's input was forgotten).
    pub(super) fn remove_input(&self, name: &str) {
        let path = self.dir.join(name);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a forgotten input");
        }
    }
}

fn ring_bits(x: &RingVec) -> u32 {
    match x {
        RingVec::U32(_) => 32,
        RingVec::U64(_) => 64,
    }
}

/// Parses a ledger file: header line, checksum, JSON body.
pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<Body, ClientError> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt(path, "not a Confide contribution ledger (no header line)"))?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt(path, "bad header"))?;
    let mut words = header.split(' ');
    let (Some(HEADER), Some(version), Some(sum), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(corrupt(path, "not a Confide contribution ledger"));
    };
    if version != VERSION.to_string() {
        return Err(corrupt(
            path,
            format!("format version {version}, this site reads {VERSION}"),
        ));
    }
    let body = &bytes[nl + 1..];
    if sum.strip_prefix("sha256=") != Some(hex::encode(Sha256::digest(body)).as_str()) {
        return Err(corrupt(path, "checksum mismatch (corrupt or truncated)"));
    }
    serde_json::from_slice(body).map_err(|e| corrupt(path, format!("unreadable body: {e}")))
}

/// Terms as stored (protobuf, hex) and back.
pub(super) fn encode_terms(t: &v1::RoundStart) -> String {
    hex::encode(t.encode_to_vec())
}

pub(super) fn decode_terms(path: &Path, s: &str) -> Result<v1::RoundStart, ClientError> {
    let b = hex::decode(s).map_err(|_| corrupt(path, "round terms are not hex"))?;
    v1::RoundStart::decode(b.as_slice()).map_err(|e| corrupt(path, format!("round terms: {e}")))
}

/// The input file name of (federation, model): fixed per model, so a
/// rewrite replaces it and nothing else.
pub(super) fn input_name(federation: &str, model: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((federation.len() as u64).to_le_bytes());
    h.update(federation.as_bytes());
    h.update(model);
    format!("input-{}.bin", hex::encode(&h.finalize()[..16]))
}
