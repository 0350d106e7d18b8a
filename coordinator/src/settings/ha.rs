//! `[ha]`: active / standby coordinators sharing one object store. Every
//! coordinator of the federation runs with the same settings except
//! `ha.node`; a lease object beside the checkpoints decides which one is
//! active (`checkpoint/lease.rs`, `docs/checkpoints.md`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;

/// High availability through a lease in the checkpoint store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HaSettings {
    /// Take part in active / standby failover (needs `checkpoints.url`).
    pub enabled: bool,
    /// This coordinator's name in the lease and in logs (default: the
    /// `HOSTNAME` environment variable, else "coordinator").
    pub node: Option<String>,
    /// A lease not renewed for this long may be taken by a standby.
    pub lease_ttl_secs: f64,
    /// How often the active coordinator renews its lease, and how often a
    /// standby looks at it.
    pub renew_secs: f64,
}

impl Default for HaSettings {
    fn default() -> Self {
        HaSettings {
            enabled: false,
            node: None,
            lease_ttl_secs: 15.0,
            renew_secs: 3.0,
        }
    }
}

impl HaSettings {
    /// The lease's time to live.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs_f64(self.lease_ttl_secs)
    }

    /// The renewal (and standby polling) interval.
    pub fn renew(&self) -> Duration {
        Duration::from_secs_f64(self.renew_secs)
    }

    /// The node name in the lease.
    pub fn node_name(&self) -> String {
        self.node
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "coordinator".into())
    }

    /// Timing that leaves room for a missed renewal, and object storage.
    pub fn validate(&self, object_storage: bool) -> Result<(), CoordinatorError> {
        if !self.enabled {
            return Ok(());
        }
        let bad = |m: String| Err(CoordinatorError::Config(m));
        if !object_storage {
            return bad(
                "ha.enabled needs checkpoints.url (s3://bucket/prefix): the lease lives in the \
                 object store both coordinators share"
                    .into(),
            );
        }
        let ok = |x: f64| x.is_finite() && x > 0.0 && x <= 3600.0;
        if !ok(self.lease_ttl_secs) || !ok(self.renew_secs) {
            return bad(format!(
                "ha.lease_ttl_secs ({}) and ha.renew_secs ({}) must be seconds in (0, 3600]",
                self.lease_ttl_secs, self.renew_secs
            ));
        }
        // Two renewals must fit in one lifetime, so that one slow or lost
        // request does not hand the federation to the standby.
        if self.renew_secs * 2.0 >= self.lease_ttl_secs {
            return bad(format!(
                "ha.renew_secs ({}) must be less than half of ha.lease_ttl_secs ({})",
                self.renew_secs, self.lease_ttl_secs
            ));
        }
        if let Some(n) = &self.node
            && (n.trim().is_empty() || n.len() > 128)
        {
            return bad(format!("ha.node must be 1–128 characters, got {n:?}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(h: &HaSettings, object: bool) -> String {
        h.validate(object)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn ha_needs_object_storage_and_room_for_a_missed_renewal() {
        let mut h = HaSettings::default();
        assert!(h.validate(false).is_ok(), "off: nothing to check");
        h.enabled = true;
        assert!(err(&h, false).contains("checkpoints.url"));
        assert!(h.validate(true).is_ok());
        h.renew_secs = 8.0;
        assert!(err(&h, true).contains("less than half"));
        h.renew_secs = f64::NAN;
        assert!(err(&h, true).contains("(0, 3600]"));
        h.renew_secs = 1.0;
        h.node = Some(" ".into());
        assert!(err(&h, true).contains("ha.node"));
    }
}
