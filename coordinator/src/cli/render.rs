//! What the `confide` subcommands print, rendered to text so the formats can
//! be tested and the binary stays dispatch only. Every line ends in `\n`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use confide_proto::v1 as pb;

use crate::certs;
use crate::checkpoint::RoundRecord;
use crate::error::CoordinatorError;

/// Render a history as a text table.
pub fn rounds_table(history: &[RoundRecord]) -> String {
    let mut s = String::from(
        "round  kind        ok   cohort  surv  drop  accuracy   loss     secs    bytes_in   bytes_out\n",
    );
    for r in history {
        let f = |v: Option<f64>, w: usize| {
            v.map(|x| format!("{x:<w$.4}"))
                .unwrap_or_else(|| format!("{:<w$}", "-"))
        };
        s.push_str(&format!(
            "{:<6} {:<11} {:<4} {:<7} {:<5} {:<5} {} {} {:<7.2} {:<10} {:<10}{}\n",
            r.round,
            r.kind,
            if r.success { "yes" } else { "NO" },
            r.cohort,
            r.survivors,
            r.dropped,
            f(r.accuracy, 10),
            f(r.loss, 8),
            r.duration_secs,
            r.bytes_in,
            r.bytes_out,
            if r.success {
                String::new()
            } else {
                format!(" {}", r.message)
            }
        ));
        // Faulty sites get a line each under their round.
        for (site, reason) in &r.blamed {
            s.push_str(&format!("       blamed {site}: {reason}\n"));
        }
        // Sites that refused the round: absent by their own policy, not faulty.
        for (site, reason) in &r.declined {
            s.push_str(&format!("       declined {site}: {reason}\n"));
        }
    }
    s
}

/// `confide serve`'s closing line, if the final evaluation completed.
pub fn final_accuracy(accuracy: Option<f64>) -> String {
    match accuracy {
        Some(a) => format!("final held-out accuracy: {:.2} %\n", a * 100.0),
        None => String::new(),
    }
}

/// `confide status`.
pub fn status(st: &pb::StatusResponse) -> String {
    format!(
        "federation      {}\nsuite           {}\nsecure agg.     {}\nround           {} ({})\ncompleted       {}/{}\nconnected sites {}\n",
        st.federation,
        st.suite,
        st.secure_aggregation,
        st.current_round,
        st.stage,
        st.completed_rounds,
        st.target_rounds,
        st.connected_sites.join(", ")
    )
}

/// `confide checkpoints list`.
pub fn checkpoints_table(list: &[pb::CheckpointInfo]) -> String {
    let mut s = String::from("round    accuracy  best  path\n");
    for c in list {
        s.push_str(&format!(
            "{:<8} {:<9.4} {:<5} {}\n",
            c.round,
            c.accuracy,
            if c.best { "*" } else { "" },
            c.path
        ));
    }
    s
}

/// `confide certs init`: one line per written file.
pub fn wrote(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("wrote {}\n", p.display()))
        .collect()
}

/// `confide certs issue`: the written certificates, and for a site the
/// reminder to allow it.
pub fn issued(paths: &[PathBuf], site: Option<&str>) -> String {
    let mut s: String = paths
        .iter()
        .map(|p| format!("wrote {} (private key beside it, mode 0600)\n", p.display()))
        .collect();
    if let Some(site) = site {
        s.push_str(&format!(
            "remember: add {site:?} to [tls] allowed_sites in the coordinator's config\n"
        ));
    }
    s
}

/// `confide certs sign`: what was issued, what to send back, what to check.
pub fn signed(s: &crate::certs::Signed, out: Option<&Path>, dir: &Path) -> String {
    let mut t = format!(
        "signed {site}'s request (SHA-256 {fp})\n  compare this fingerprint with the one {site} read out to you before sending anything back\nwrote {cert} (serial {serial})\n",
        site = s.site,
        fp = s.request_sha256,
        cert = s.certificate.display(),
        serial = s.serial,
    );
    if let Some(out) = out {
        t.push_str(&format!("copied it to {}\n", out.display()));
    }
    t.push_str(&format!(
        "send {site} its certificate and {ca} (both public); no private key of {site} is in {dir}\n",
        site = s.site,
        ca = dir.join("ca.pem").display(),
        dir = dir.display()
    ));
    if let Some(old) = &s.replaced {
        t.push_str(&format!(
            "the previous certificate is kept as {}; revoke it once {} runs with the new one\n",
            old.display(),
            s.site
        ));
    } else {
        t.push_str(&format!(
            "remember: add {:?} to [tls] allowed_sites in the coordinator's config\n",
            s.site
        ));
    }
    t
}

/// `confide certs list`: issued certificates (revoked ones marked), then the
/// revocation list's entries.
pub fn certs_list(issued: &[(String, String, PathBuf)], revoked: &BTreeSet<String>) -> String {
    let mut s = String::new();
    for (kind, name, p) in issued {
        // Operators are revoked under their certificate name.
        let id = if kind == "operator" {
            format!("operator-{name}")
        } else {
            name.clone()
        };
        let mark = if revoked.contains(&id) { "REVOKED" } else { "" };
        s.push_str(&format!(
            "{kind:<12} {name:<24} {mark:<8} {}\n",
            p.display()
        ));
    }
    for r in revoked {
        s.push_str(&format!("revoked      {r}\n"));
    }
    s
}

/// [`certs_list`] of the certificate directory `dir`, revoked entries from
/// its `revoked.toml` (sites by name, operators as `operator-NAME`,
/// certificates of no known name by serial).
pub fn certs_dir_listing(dir: &Path) -> Result<String, CoordinatorError> {
    let revoked = certs::read_db(dir)?
        .revoked
        .into_iter()
        .map(|e| match e.kind.as_str() {
            "site" => e.name,
            "operator" => format!("operator-{}", e.name),
            _ => e.serial,
        })
        .collect();
    Ok(certs_list(&certs::list(dir)?, &revoked))
}

/// `confide certs revoke`.
pub fn revoked(r: &certs::Revoked) -> String {
    let who = match r.entry.kind.as_str() {
        "serial" => format!("serial {}", r.entry.serial),
        kind => format!("{kind} {} (serial {})", r.entry.name, r.entry.serial),
    };
    let verb = if r.already {
        "was already revoked"
    } else {
        "revoked"
    };
    format!(
        "{who} {verb}\n{}a running coordinator applies it on the next request and serves it to sites\n",
        crl_issued(&r.crl)
    )
}

/// `confide certs crl` (and the CRL line of `certs revoke`).
pub fn crl_issued(c: &certs::IssuedCrl) -> String {
    format!(
        "wrote {} (CRL number {}, {} revoked, valid until {}; re-issue before then with `confide certs crl`)\n",
        c.path.display(),
        c.number,
        c.entries,
        c.next_update
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_one_aligned_line_per_field() {
        let st = pb::StatusResponse {
            federation: "f".into(),
            suite: "intl".into(),
            current_round: 3,
            stage: "advertise".into(),
            connected_sites: vec!["a".into(), "b".into()],
            completed_rounds: 2,
            target_rounds: 5,
            secure_aggregation: true,
        };
        assert_eq!(
            status(&st),
            "federation      f\nsuite           intl\nsecure agg.     true\nround           3 (advertise)\ncompleted       2/5\nconnected sites a, b\n"
        );
    }

    #[test]
    fn certs_list_marks_revoked_operators_by_certificate_name() {
        let issued = vec![
            (
                "site".to_string(),
                "a".to_string(),
                PathBuf::from("s/a.pem"),
            ),
            (
                "operator".to_string(),
                "ops".to_string(),
                PathBuf::from("o/ops.pem"),
            ),
        ];
        let revoked: BTreeSet<String> = ["operator-ops".to_string()].into();
        let text = certs_list(&issued, &revoked);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(!lines[0].contains("REVOKED"));
        assert!(lines[1].contains("REVOKED"));
        assert_eq!(lines[2], "revoked      operator-ops");
    }

    #[test]
    fn failed_rounds_show_their_message() {
        let r = RoundRecord {
            round: 1,
            kind: "train".into(),
            success: false,
            message: "too few".into(),
            ..RoundRecord::default()
        };
        let t = rounds_table(std::slice::from_ref(&r));
        assert!(t.lines().nth(1).is_some_and(|l| l.ends_with(" too few")));
        let blamed = RoundRecord {
            blamed: vec![("hospital-e".into(), "refused by 4 sites".into())],
            ..r
        };
        let t = rounds_table(&[blamed]);
        assert_eq!(
            t.lines().nth(2),
            Some("       blamed hospital-e: refused by 4 sites")
        );
        let declined = RoundRecord {
            declined: vec![("hospital-b".into(), "training_bounds: 9 epochs".into())],
            ..RoundRecord::default()
        };
        assert_eq!(
            rounds_table(&[declined]).lines().nth(2),
            Some("       declined hospital-b: training_bounds: 9 epochs")
        );
        assert_eq!(final_accuracy(None), "");
        assert_eq!(
            final_accuracy(Some(0.5)),
            "final held-out accuracy: 50.00 %\n"
        );
    }
}
