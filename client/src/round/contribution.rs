//! At most one training contribution per (federation, model): a site sends
//! an update for a given global model once per process. Two unmasked sums
//! over different cohorts that both contain this site's update on the same
//! model could be subtracted to isolate it (with the others' inputs known or
//! also repeated), so a coordinator that announces a second training round on
//! a model this site already sent an update for is refused
//! ([`ClientError::AlreadyContributed`]).
//!
//! A plain update (comparison mode) counts the moment it leaves the site. A
//! masked one counts once this site has signed a survivor set that includes
//! it, whether or not the round then succeeds (a round reported as failed
//! may still have been unmasked by a dishonest coordinator). Why not at
//! upload: a round that fails before the consistency stage (too few inputs
//! in time) would otherwise stall the federation on that model. Why that is
//! still safe: any sum the coordinator can unmask needs a quorum of
//! signatures, and every signer counts its update as given, so each
//! unmaskable sum holds a quorum of inputs that never appear in another sum
//! on the same model — no difference of sums isolates this site's update,
//! even if its own signature was withheld. After a round fails past the
//! consistency stage this site sits out retries on the same model until the
//! model changes (or the site restarts).

use std::collections::BTreeSet;

use confide_proto::v1;
use tracing::{info, warn};

use crate::error::ClientError;

/// The models this process sent training updates for.
#[derive(Debug, Default)]
pub(super) struct Contributions(BTreeSet<(String, Vec<u8>)>);

impl Contributions {
    /// Refuse `rs` if it is a training round on a model already contributed to.
    pub(super) fn check(&self, federation: &str, rs: &v1::RoundStart) -> Result<(), ClientError> {
        if rs.kind != v1::RoundKind::Train as i32 {
            return Ok(());
        }
        if self
            .0
            .contains(&(federation.to_string(), rs.model_sha256.clone()))
        {
            let model = hex::encode(&rs.model_sha256);
            warn!(round = rs.round, %model, "refusing a second training contribution on the same model");
            return Err(ClientError::AlreadyContributed {
                round: rs.round,
                federation: federation.to_string(),
                model,
            });
        }
        Ok(())
    }

    /// This site's update of training round `rs` is about to leave it.
    pub(super) fn record(&mut self, federation: &str, rs: &v1::RoundStart) {
        if rs.kind == v1::RoundKind::Train as i32
            && self
                .0
                .insert((federation.to_string(), rs.model_sha256.clone()))
        {
            info!(round = rs.round, model = %hex::encode(&rs.model_sha256), "training update on this model sent; no second one will be");
        }
    }
}
