//! `confide rounds --transcript --checkpoints DIR`: the round transcript
//! (`crate::transcript`) read from the checkpoint directory, offline, as a
//! readable account per round or, with `--json`, its lines exactly as stored.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::CoordinatorError;
use crate::transcript::{self, Record, Transcript};

/// What `confide rounds --transcript` prints for checkpoint directory `dir`:
/// (stdout, stderr). Stderr carries a note on a torn last line, so that
/// stdout stays whole records (JSON lines with `json`).
pub fn show(dir: &Path, json: bool) -> Result<(String, String), CoordinatorError> {
    let path = transcript::path(dir);
    let t = transcript::read(&path)?;
    let out = if json { json_lines(&t) } else { render(&t) };
    let note = match t.torn_line {
        Some(line) => format!(
            "note: line {line} of {} is torn (the coordinator stopped while writing it); \
             it is not a record and the coordinator cuts it off before its next one\n",
            path.display()
        ),
        None => String::new(),
    };
    Ok((out, note))
}

/// The whole lines as stored, one per line.
pub fn json_lines(t: &Transcript) -> String {
    t.entries.iter().map(|e| format!("{}\n", e.raw)).collect()
}

/// Every record as a block of text, in file order.
pub fn render(t: &Transcript) -> String {
    if t.entries.is_empty() {
        return "no rounds in the transcript\n".into();
    }
    let blocks: Vec<String> = t.entries.iter().map(|e| record(&e.record)).collect();
    blocks.join("\n")
}

/// One round: what it was asked to do, who took part at each stage, and how
/// it ended. Hashes and seeds stay whole: an auditor compares them.
pub fn record(r: &Record) -> String {
    let mut s = String::new();
    let outcome = if r.success { "ok" } else { "FAILED" };
    let _ = writeln!(s, "round {} {}: {outcome}", r.round, r.kind);
    let _ = writeln!(
        s,
        "  started      {}  ended {}  ({:.3} s)",
        r.started, r.ended, r.duration_secs
    );
    match &r.plan {
        Some(p) => {
            let mode = if p.secure {
                format!(
                    "secure aggregation, k {}, t {}, min survivors {}, colluders {}, quorum {}",
                    p.k, p.t, p.min_survivors, p.max_colluders, p.quorum
                )
            } else {
                format!("plaintext, min survivors {}", p.min_survivors)
            };
            let _ = writeln!(s, "  suite        {}, ring {}, {mode}", r.suite, p.ring);
            let _ = writeln!(s, "  elements     {}", p.vector_len);
            let _ = writeln!(s, "  attempt      {}", p.attempt);
            let _ = writeln!(s, "  graph seed   {}", p.graph_seed);
            let _ = writeln!(s, "  context      {}", p.context);
            let _ = writeln!(s, "  session id   {}", p.session_id);
            let _ = writeln!(s, "  model before {}", p.model_sha256);
        }
        None => {
            let _ = writeln!(s, "  suite        {}; not announced", r.suite);
        }
    }
    if let Some(m) = &r.model_after {
        let _ = writeln!(s, "  model after  {m}");
    }
    let asked: Vec<String> = r
        .cohort
        .iter()
        .map(|m| format!("{} (member {})", m.site, m.member))
        .collect();
    let _ = writeln!(s, "  asked        {}: {}", r.cohort_size, list(&asked));
    for st in &r.stages {
        let _ = write!(
            s,
            "  {:<14} {:>8.3} s  {} completed",
            st.stage,
            st.secs,
            st.completed.len()
        );
        let _ = write!(s, "; dropped: {}", list(&st.dropped));
        if !st.pruned.is_empty() {
            let _ = write!(s, "; pruned: {}", list(&st.pruned));
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "  survivors    {}: {}",
        r.survivors.len(),
        list(&r.survivors)
    );
    let _ = writeln!(
        s,
        "  rebuilt      self-mask seeds {}, mask keys {}",
        r.reconstructed.self_mask_seeds, r.reconstructed.mask_keys
    );
    for b in &r.blamed {
        let _ = writeln!(s, "  blamed       {}: {}", b.site, b.reason);
    }
    for d in &r.declined {
        let _ = writeln!(s, "  declined     {}: {}", d.site, d.reason);
    }
    let reason = r
        .reason
        .as_deref()
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    let _ = writeln!(s, "  outcome      {outcome}{reason}: {}", r.message);
    s
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::{Blame, Member, Plan, StageRecord};

    #[test]
    fn a_record_renders_its_stages_dropouts_and_outcome() {
        let r = Record {
            round: 2,
            kind: "train".into(),
            suite: "intl".into(),
            cohort_size: 2,
            cohort: vec![
                Member {
                    member: 1,
                    site: "a".into(),
                },
                Member {
                    member: 2,
                    site: "b".into(),
                },
            ],
            plan: Some(Plan {
                secure: true,
                k: 1,
                t: 1,
                ..Default::default()
            }),
            stages: vec![StageRecord {
                stage: "share-keys".into(),
                secs: 1.5,
                completed: vec![],
                dropped: vec!["b".into()],
                pruned: vec!["a".into()],
            }],
            declined: vec![Blame {
                site: "b".into(),
                reason: "training_bounds: 9 epochs".into(),
            }],
            reason: Some("too_few_survivors".into()),
            message: "too few".into(),
            ..Default::default()
        };
        let text = record(&r);
        assert!(text.starts_with("round 2 train: FAILED\n"), "{text}");
        assert!(text.contains("a (member 1), b (member 2)"), "{text}");
        assert!(
            text.contains("share-keys        1.500 s  0 completed; dropped: b; pruned: a\n"),
            "{text}"
        );
        assert!(text.contains("survivors    0: -\n"), "{text}");
        assert!(
            text.contains("  declined     b: training_bounds: 9 epochs\n"),
            "{text}"
        );
        assert!(
            text.contains("outcome      FAILED (too_few_survivors): too few\n"),
            "{text}"
        );
    }
}
