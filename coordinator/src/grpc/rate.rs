//! Per-identity rate limit on the Site RPCs: one token bucket per site
//! (its certificate name under mTLS, the session's site without TLS), so one
//! site flooding the coordinator is refused without slowing the others.
//! The global Join bucket (`access::JoinLimiter`) still bounds joins by
//! peers that have no identity yet.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tracing::warn;

/// Buckets kept before full (idle) ones are forgotten: a forgotten bucket
/// would be recreated full, so dropping it loses nothing.
const PRUNE_AT: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Refused since its last admitted request (warn once per episode).
    limited: bool,
}

/// Token buckets of `rate` tokens per second up to `burst`, one per identity.
#[derive(Debug)]
pub struct SiteLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl SiteLimiter {
    /// Every identity starts with a full bucket.
    pub fn new(rate: f64, burst: u32) -> Self {
        SiteLimiter {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Take one of `site`'s tokens at `now`; `false` if its bucket is empty.
    pub fn try_take(&self, site: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(site) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refill(b, rate, burst, now) < burst);
        }
        let b = buckets.entry(site.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            limited: false,
        });
        b.tokens = refill(b, self.rate, self.burst, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.limited = false;
            true
        } else {
            if !b.limited {
                warn!(
                    site,
                    rate = self.rate,
                    burst = self.burst,
                    "site rate limit reached; refusing its requests until its bucket refills"
                );
            }
            b.limited = true;
            false
        }
    }
}

/// Tokens in `b` at `now` (not stored).
fn refill(b: &Bucket, rate: f64, burst: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_identity_has_its_own_bucket() {
        let l = SiteLimiter::new(2.0, 3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.try_take("a", t0)));
        assert!(!l.try_take("a", t0), "burst spent");
        // Another site is not affected.
        assert!((0..3).all(|_| l.try_take("b", t0)));
        // Half a second refills one token at 2/s, and no more than that.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.try_take("a", t1));
        assert!(!l.try_take("a", t1));
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        assert!((0..3).all(|_| l.try_take("a", t2)));
        assert!(!l.try_take("a", t2));
    }

    #[test]
    fn idle_buckets_are_forgotten_when_many_identities_appear() {
        let l = SiteLimiter::new(1.0, 1);
        let t0 = Instant::now();
        for i in 0..PRUNE_AT {
            assert!(l.try_take(&format!("s{i}"), t0));
        }
        // All empty at t0: a new identity cannot prune them...
        assert!(l.try_take("new", t0));
        assert_eq!(l.buckets.lock().map(|b| b.len()).unwrap_or(0), PRUNE_AT + 1);
        // ...but once they have refilled they are dropped.
        assert!(l.try_take("newer", t0 + Duration::from_secs(2)));
        assert_eq!(l.buckets.lock().map(|b| b.len()).unwrap_or(0), 1);
    }
}
