//! Several coordinator URLs (active / standby) and the failover policy.
//!
//! `--coordinator URL1,URL2` (or [`SiteConfig::coordinator`] with commas)
//! names the coordinators of one federation: one is active, the others are
//! standbys that share its object store and answer `UNAVAILABLE`
//! ("standby coordinator …") and health `NOT_SERVING` until they take over.
//! The site talks to one at a time and moves to the next one, round-robin,
//! when the current one cannot be reached or says it does not serve
//! ([`next_target`]); the run loop's backoff and its give-up budget
//! (`--max-reconnect-secs`) span all URLs together. With one URL nothing
//! changes: the policy always answers index 0.
//!
//! [`SiteConfig::coordinator`]: crate::SiteConfig::coordinator

use crate::error::ClientError;

/// Parses and checks a comma-separated list of coordinator URLs: no empty
/// entry, no URL twice, every one `https://` (or, with `insecure`, all
/// `http://`: a list mixing plaintext and TLS would silently downgrade).
pub fn parse_urls(list: &str, insecure: bool) -> Result<Vec<String>, ClientError> {
    let bad = |url: &str, reason: &str| ClientError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let mut urls: Vec<String> = Vec::new();
    for (i, raw) in list.split(',').enumerate() {
        let url = raw.trim();
        if url.is_empty() {
            return Err(bad(
                list,
                &format!(
                    "entry {} of the comma-separated list is empty (give URL1,URL2 without blanks)",
                    i + 1
                ),
            ));
        }
        let scheme = url.split_once("://").map(|(s, _)| s);
        match (scheme, insecure) {
            (Some("https"), _) | (Some("http"), true) => {}
            (Some("http"), false) => {
                return Err(bad(
                    url,
                    "http:// is plaintext; use https:// or pass --insecure for a local experiment",
                ));
            }
            _ => {
                return Err(bad(
                    url,
                    "expected https://HOST:PORT (or http:// with --insecure)",
                ));
            }
        }
        if host(url).is_none() {
            return Err(bad(url, "no host"));
        }
        if urls.iter().any(|u| u.eq_ignore_ascii_case(url)) {
            return Err(bad(url, "given twice in the coordinator list"));
        }
        urls.push(url.to_string());
    }
    let https = urls.iter().filter(|u| u.starts_with("https://")).count();
    if https != 0 && https != urls.len() {
        return Err(bad(
            list,
            "mixes http:// and https:// coordinators; use one scheme for all",
        ));
    }
    Ok(urls)
}

/// The host of a URL (the default TLS server name), IPv6 brackets removed.
pub fn host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Why the link to the current coordinator failed, as far as failover cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// TCP refused or reset, TLS handshake or HTTP/2 failure: nobody serves
    /// this federation there right now.
    Unreachable,
    /// It answered `UNAVAILABLE` (a standby, or one shutting down) or its
    /// health service said `NOT_SERVING`.
    NotServing,
    /// Anything else (a lost session, a stream that ended, a refusal): the
    /// coordinator is there and serving; stay with it.
    Other,
}

impl Failure {
    /// Classifies a transient error of the run loop.
    pub(crate) fn of(e: &ClientError) -> Failure {
        match e {
            ClientError::Connect { .. } => Failure::Unreachable,
            ClientError::NotServing { .. } => Failure::NotServing,
            ClientError::Refused {
                code: tonic::Code::Unavailable,
                ..
            } => Failure::NotServing,
            _ => Failure::Other,
        }
    }
}

/// The rotation policy: after `failure` on URL `current` of `len`, the index
/// of the URL to try next. Round-robin over every URL on `Unreachable` and
/// `NotServing`; stays put otherwise (and with a single URL).
pub(crate) fn next_target(len: usize, current: usize, failure: Failure) -> usize {
    if len <= 1 {
        return 0;
    }
    match failure {
        Failure::Unreachable | Failure::NotServing => (current + 1) % len,
        Failure::Other => current % len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_parses_and_bad_lists_are_refused() {
        assert_eq!(
            parse_urls("https://a:7443", false).ok(),
            Some(vec!["https://a:7443".to_string()])
        );
        assert_eq!(
            parse_urls(" https://a:7443 ,https://b:7443", false).ok(),
            Some(vec!["https://a:7443".into(), "https://b:7443".into()])
        );
        let err = |list: &str, insecure: bool| {
            parse_urls(list, insecure)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("https://a:1,,https://b:1", false).contains("entry 2"));
        assert!(err("https://a:1,", false).contains("entry 2"));
        assert!(err("", false).contains("entry 1"));
        assert!(err("https://a:1,https://a:1", false).contains("given twice"));
        assert!(err("https://a:1,https://A:1", false).contains("given twice"));
        assert!(err("https://a:1,ftp://b:1", false).contains("expected https://"));
        assert!(err("https://a:1,b:1", false).contains("expected https://"));
        assert!(err("http://a:1", false).contains("plaintext"));
        assert!(err("http://a:1,https://b:1", true).contains("mixes"));
        assert!(err("https://:1", false).contains("no host"));
        assert!(parse_urls("http://a:1,http://b:1", true).is_ok());
    }

    #[test]
    fn hosts_are_the_default_server_names() {
        assert_eq!(
            host("https://coord-b.example:7443").as_deref(),
            Some("coord-b.example")
        );
        assert_eq!(host("https://[::1]:7443/x").as_deref(), Some("::1"));
        assert_eq!(host("https://c").as_deref(), Some("c"));
        assert_eq!(host("https://:7443"), None);
    }

    #[test]
    fn rotation_is_round_robin_on_unreachable_or_not_serving_only() {
        use Failure::*;
        assert_eq!(next_target(1, 0, Unreachable), 0, "one URL: as today");
        assert_eq!(next_target(1, 0, NotServing), 0);
        assert_eq!(next_target(2, 0, Unreachable), 1);
        assert_eq!(next_target(2, 1, Unreachable), 0, "wraps around");
        assert_eq!(next_target(3, 1, NotServing), 2);
        assert_eq!(next_target(3, 2, NotServing), 0);
        assert_eq!(next_target(3, 1, Other), 1, "a serving coordinator is kept");
        assert_eq!(next_target(0, 0, Unreachable), 0);
        let refused = |code| ClientError::Refused {
            call: "Join",
            code,
            message: "standby coordinator".into(),
        };
        assert_eq!(Failure::of(&refused(tonic::Code::Unavailable)), NotServing);
        assert_eq!(Failure::of(&refused(tonic::Code::Unauthenticated)), Other);
        assert_eq!(
            Failure::of(&ClientError::Connect {
                url: "https://a:1".into(),
                reason: "connection refused".into()
            }),
            Unreachable
        );
        assert_eq!(
            Failure::of(&ClientError::NotServing {
                url: "https://a:1".into()
            }),
            NotServing
        );
        assert_eq!(Failure::of(&ClientError::StreamClosed), Other);
    }
}
