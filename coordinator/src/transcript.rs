//! The round transcript: `<checkpoints.dir>/transcript.jsonl` (or
//! `<checkpoints.transcript_dir>/…` with object storage), one JSON line
//! per ended round (success or failure) with what an auditor needs to
//! reconstruct the round — its parameters and context, who was asked, who
//! completed or dropped at each stage, whose inputs are in the sum, how many
//! secrets were rebuilt, who was blamed, the outcome and why — and no secret:
//! no keys, shares, masks, vectors or model values.
//!
//! Append-only and crash-safe: a record is one `write_all` of the whole line,
//! then `sync_data`, before the round's checkpoint is written (so a
//! checkpoint never exists without its record). A crash mid-write can only
//! tear the last line (no newline); the writer cuts a torn tail off before it
//! appends, and the reader reports one without failing. Nothing here knows
//! the federation: the driver hands in plain values.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use confide_crypto::{MemberId, RoundConfig, Stage};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::warn;

use crate::checkpoint::RoundRecord;
use crate::error::CoordinatorError;

/// The transcript's file name inside the checkpoint directory.
pub const FILE_NAME: &str = "transcript.jsonl";

/// The record format this version writes.
pub const FORMAT: u32 = 1;

/// The transcript file of checkpoint directory `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// One ended round: one line of the transcript.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Record format ([`FORMAT`]).
    pub format: u32,
    /// Round id.
    pub round: u64,
    /// "train", "statistics" or "evaluate".
    pub kind: String,
    /// When the round started (RFC 3339, UTC).
    pub started: String,
    /// When it ended.
    pub ended: String,
    /// Wall time between the two.
    pub duration_secs: f64,
    /// The federation's cipher suite.
    pub suite: String,
    /// Members asked to take part (sent the `RoundStart`).
    pub cohort_size: u32,
    /// Who they are, by member id; empty when no cohort was formed.
    pub cohort: Vec<Member>,
    /// What the round was announced with; `None` when no safe parameters
    /// existed for the cohort, so nothing was announced.
    pub plan: Option<Plan>,
    /// The stages that closed, in order (none in plaintext mode).
    pub stages: Vec<StageRecord>,
    /// Sites whose inputs are in the sum (none when the protocol failed
    /// before there was a sum).
    pub survivors: Vec<String>,
    /// Secrets the coordinator rebuilt to unmask the sum.
    pub reconstructed: Reconstructed,
    /// Sites the round machine found faulty, and why.
    pub blamed: Vec<Blame>,
    /// Sites that declined the round (absent, not faulty), and why: the
    /// reason code's name, a colon and the site's message (absent in
    /// records written before declines existed).
    #[serde(default)]
    pub declined: Vec<Blame>,
    /// Whether the round's result was applied.
    pub success: bool,
    /// The failure's class (as in the `confide_rounds_failed_total` metric).
    pub reason: Option<String>,
    /// Why it failed, or a note.
    pub message: String,
    /// SHA-256 of the global model after a successful training round (the
    /// next round's `plan.model_sha256`).
    pub model_after: Option<String>,
}

/// A cohort member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member id (the protocol's name for it).
    pub member: MemberId,
    /// Site name.
    pub site: String,
}

/// The round's announced parameters; hashes and seeds in hex.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The attempt nonce: a retried round is a new attempt.
    pub attempt: String,
    /// Ring of the masked vectors.
    pub ring: String,
    /// Secure aggregation (else plaintext comparison mode).
    pub secure: bool,
    /// SecAgg+ neighbour degree (0 in plaintext mode).
    pub k: usize,
    /// Shamir threshold (0 in plaintext mode).
    pub t: usize,
    /// Public seed of the neighbour graph.
    pub graph_seed: String,
    /// Fewest inputs the sum may have.
    pub min_survivors: usize,
    /// Colluders assumed.
    pub max_colluders: usize,
    /// Survivor-set signatures needed.
    pub quorum: usize,
    /// Elements of each input vector.
    pub vector_len: usize,
    /// The round context (hash of the announcement, federation and CA).
    pub context: String,
    /// The session id every signature of the round covers.
    pub session_id: String,
    /// SHA-256 of the model the round started from.
    pub model_sha256: String,
}

impl Plan {
    /// From the round's configuration (its context already set), attempt
    /// nonce, mode and the SHA-256 of the model it announced.
    pub fn new(config: &RoundConfig, attempt: &[u8], secure: bool, model_sha256: &[u8]) -> Self {
        Plan {
            attempt: hex::encode(attempt),
            ring: config.ring.to_string(),
            secure,
            k: config.params.k,
            t: config.params.t,
            graph_seed: hex::encode(config.graph_seed),
            min_survivors: config.min_survivors,
            max_colluders: config.max_colluders,
            quorum: config.quorum(),
            vector_len: config.vector_len,
            context: hex::encode(config.context),
            session_id: hex::encode(config.session_id()),
            model_sha256: hex::encode(model_sha256),
        }
    }
}

/// One closed stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage ("advertise-keys", "share-keys", …).
    pub stage: String,
    /// Seconds it was open.
    pub secs: f64,
    /// Sites that completed it and go on.
    pub completed: Vec<String>,
    /// Sites expected that sent nothing the machine accepted before the
    /// stage closed (gone, late, or refused).
    pub dropped: Vec<String>,
    /// Sites that answered but were left out: too few of their neighbours
    /// went on to reconstruct their secrets (fewer than `t`).
    pub pruned: Vec<String>,
}

impl StageRecord {
    /// A closed stage of the machine, members named by `names`: of the
    /// machine's `dropped`, those in `answered` were pruned.
    pub fn new(
        stage: Stage,
        secs: f64,
        completed: &[MemberId],
        dropped: &[MemberId],
        answered: &BTreeSet<MemberId>,
        names: &BTreeMap<MemberId, String>,
    ) -> Self {
        let (pruned, silent): (Vec<MemberId>, Vec<MemberId>) =
            dropped.iter().partition(|m| answered.contains(m));
        StageRecord {
            stage: stage.to_string(),
            secs,
            completed: sites(completed, names),
            dropped: sites(&silent, names),
            pruned: sites(&pruned, names),
        }
    }
}

/// Secrets rebuilt from Shamir shares to unmask one sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconstructed {
    /// Self-mask seeds (one per survivor of a secure round).
    pub self_mask_seeds: u64,
    /// Mask keys (one per member that shared keys and then dropped).
    pub mask_keys: u64,
}

/// A site found faulty, or one that declined a round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blame {
    /// Site name.
    pub site: String,
    /// What was wrong.
    pub reason: String,
}

/// What the driver knows only when the round has ended.
#[derive(Clone, Debug, Default)]
pub struct Ending {
    /// Members whose inputs are in the sum.
    pub survivors: Vec<MemberId>,
    /// Secrets rebuilt.
    pub reconstructed: Reconstructed,
    /// The failure's class, if it failed.
    pub reason: Option<String>,
}

impl Record {
    /// The record of the round `rec` summarises, which ended at `ended`,
    /// asked the members `names` and was announced as `plan`.
    pub fn new(
        rec: &RoundRecord,
        suite: &str,
        names: &BTreeMap<MemberId, String>,
        plan: Option<Plan>,
        stages: Vec<StageRecord>,
        ending: Ending,
        ended: SystemTime,
    ) -> Self {
        let started = ended
            .checked_sub(Duration::from_secs_f64(rec.duration_secs.max(0.0)))
            .unwrap_or(ended);
        Record {
            format: FORMAT,
            round: rec.round,
            kind: rec.kind.clone(),
            started: rfc3339(started),
            ended: rfc3339(ended),
            duration_secs: rec.duration_secs,
            suite: suite.to_string(),
            cohort_size: rec.cohort,
            cohort: names
                .iter()
                .map(|(&member, site)| Member {
                    member,
                    site: site.clone(),
                })
                .collect(),
            plan,
            stages,
            survivors: sites(&ending.survivors, names),
            reconstructed: ending.reconstructed,
            blamed: rec
                .blamed
                .iter()
                .map(|(site, reason)| Blame {
                    site: site.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            declined: rec
                .declined
                .iter()
                .map(|(site, reason)| Blame {
                    site: site.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            success: rec.success,
            reason: ending.reason,
            message: rec.message.clone(),
            model_after: None,
        }
    }
}

/// Site names of `ids` (a member outside `names` keeps its id).
fn sites(ids: &[MemberId], names: &BTreeMap<MemberId, String>) -> Vec<String> {
    ids.iter()
        .map(|m| {
            names
                .get(m)
                .cloned()
                .unwrap_or_else(|| format!("member {m}"))
        })
        .collect()
}

/// `t` in RFC 3339, UTC, always to the millisecond (so the times of a
/// transcript sort as text).
fn rfc3339(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CoordinatorError + '_ {
    move |source| CoordinatorError::Transcript {
        path: path.to_path_buf(),
        source,
    }
}

/// Append `rec` to the transcript in checkpoint directory `dir` (created if
/// missing): one write of the whole line, then fsync; a torn last line left
/// by a crash is cut off first.
pub fn append(dir: &Path, rec: &Record) -> Result<(), CoordinatorError> {
    let p = path(dir);
    fs::create_dir_all(dir).map_err(io_err(&p))?;
    let fresh = !p.exists();
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&p)
        .map_err(io_err(&p))?;
    let cut = repair(&mut f).map_err(io_err(&p))?;
    if cut > 0 {
        warn!(path = %p.display(), bytes = cut, "cut a torn last line off the round transcript (a crash while it was written)");
    }
    let mut line = serde_json::to_vec(rec).map_err(|e| io_err(&p)(std::io::Error::other(e)))?;
    line.push(b'\n');
    // One write of the whole line: a crash leaves it whole or torn at the
    // end, never interleaved; a torn end is what `repair` removes.
    f.write_all(&line).map_err(io_err(&p))?;
    f.sync_data().map_err(io_err(&p))?;
    if fresh {
        // The new file's directory entry must survive a crash too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&p))?;
    }
    Ok(())
}

/// Cut everything after the last newline of `f` (a line torn by a crash
/// mid-write), so the file is whole JSON lines again; returns the bytes cut.
pub fn repair(f: &mut File) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    let mut buf = [0u8; 4096];
    let mut end = len;
    // Scan back block by block: the last line is short, so one read usually.
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        f.set_len(keep)?;
        f.sync_data()?;
    }
    Ok(len - keep)
}

/// One whole line of a transcript.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Its line number (from 1).
    pub line: usize,
    /// The line as stored (without the newline).
    pub raw: String,
    /// The record it holds.
    pub record: Record,
}

/// A transcript as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transcript {
    /// Every whole line.
    pub entries: Vec<Entry>,
    /// The line number of a torn last line (no newline: the coordinator
    /// crashed while writing it; its next append cuts it off).
    pub torn_line: Option<usize>,
}

/// Read the transcript at `path`. A whole line that is not a record is an
/// error naming its line; a torn last line is reported in
/// [`Transcript::torn_line`].
pub fn read(path: &Path) -> Result<Transcript, CoordinatorError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let mut out = Transcript::default();
    let mut lines = bytes.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let last = lines.peek().is_none();
        if last {
            // After the final newline: nothing, or a torn line.
            if !line.is_empty() {
                out.torn_line = Some(i + 1);
            }
            break;
        }
        let record =
            serde_json::from_slice(line).map_err(|source| CoordinatorError::TranscriptLine {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?;
        out.entries.push(Entry {
            line: i + 1,
            raw: String::from_utf8_lossy(line).into_owned(),
            record,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
