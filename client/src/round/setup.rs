//! Setting a round up: the model download, then either the plaintext
//! input or the secure machine with its first message, and the description
//! of the local computation ([`LocalJob`]) the run loop performs.

use confide_crypto::Stage;
use confide_crypto::protocol::AnySite;
use confide_crypto::quant::Quantiser;
use confide_proto::{context, v1};
use tracing::debug;

use super::outgoing::Outgoing;
use super::{Action, Phase, RoundDriver};
use crate::convert;
use crate::error::ClientError;
use crate::train::{Model, Standardiser};
use crate::trainer::{Learn, LocalJob};
use crate::wire::{self, ModelAssembler};

impl RoundDriver {
    /// The global model arrived (for [`Action::Download`]).
    pub(crate) fn model_downloaded(
        &mut self,
        chunks: &[v1::ModelChunk],
    ) -> Result<Action, ClientError> {
        let Some(r) = self.round.as_mut() else {
            return Ok(Action::Wait);
        };
        let mut asm = ModelAssembler::new(r.start.model_bytes);
        for c in chunks {
            asm.push(c)?;
        }
        let bytes = asm.finish()?;
        r.bytes_in += bytes.len() as u64;
        // The model must be the one the announcement (and so the round's
        // context) names: a coordinator cannot hand this site another model.
        let got = context::sha256(&bytes);
        if got[..] != r.start.model_sha256[..] {
            return Err(ClientError::ModelHashMismatch {
                round: r.start.round,
                announced: hex::encode(&r.start.model_sha256),
                got: hex::encode(got),
            });
        }
        debug!(
            round = r.start.round,
            bytes = bytes.len(),
            "global model downloaded"
        );
        let model = Model::from_safetensors(&bytes)?;
        let file_model = r.start.training.as_ref().map(|t| t.model.as_str());
        if file_model == Some(confide_proto::model::ModelKind::File.name()) {
            // No built-in trainer checks a file model's tensors against a
            // layout; its names, shapes and dtypes are the downloaded
            // model's own (the announcement binds its hash). It must at
            // least be a model one can train from.
            model
                .check_loadable(wire::MAX_MODEL_BYTES)
                .map_err(|e| ClientError::InvalidRound(format!("global model: {e}")))?;
        }
        if r.kind == v1::RoundKind::Train && r.cfg.vector_len != wire::train_len(model.num_params())
        {
            return Err(ClientError::InvalidRound(format!(
                "vector of {} elements announced for a model of {} parameters (expected {})",
                r.cfg.vector_len,
                model.num_params(),
                wire::train_len(model.num_params())
            )));
        }
        r.global = Some(std::sync::Arc::new(model));
        self.kick_off()
    }

    /// The round is set up: compute the input right away (plaintext) or
    /// start the secure machine and queue its advert.
    pub(super) fn kick_off(&mut self) -> Result<Action, ClientError> {
        let Some(r) = self.round.as_ref() else {
            return Ok(Action::Wait);
        };
        if r.start.plaintext {
            // Comparison mode: no keys, no shares; submit right away.
            return self.compute();
        }
        let cfg = r.cfg.clone();
        let (member, start) = (r.start.member, r.start.clone());
        if cfg.suite != self.cfg.signing.suite() {
            return Err(ClientError::InvalidRound(format!(
                "round uses suite {} but this site's key is for {}",
                cfg.suite,
                self.cfg.signing.suite()
            )));
        }
        let verifier = (self.cfg.verifier)(cfg.suite)?;
        let mut machine = AnySite::new(
            cfg,
            member,
            self.cfg.signing.clone(),
            verifier,
            &self.cfg.policy,
            &mut self.rng,
        )?;
        let out = machine
            .poll_output()
            .map(|o| Outgoing::from_site(o, &self.session_str(), &start));
        if let Some(r) = self.round.as_mut() {
            r.phase = Phase::Secure(Box::new(machine));
        }
        Ok(match out {
            Some(out) => self.queue(out),
            None => Action::Wait,
        })
    }

    /// The round's local computation, unless this is where the site vanishes.
    pub(super) fn compute(&mut self) -> Result<Action, ClientError> {
        if self.vanish_now(Stage::MaskedInput) {
            return Ok(Action::Vanish);
        }
        if let Some(x) = self.replay_input() {
            // A retry on a model this site already sent an input for.
            return self.input_ready(x);
        }
        let Some(r) = self.round.as_ref() else {
            return Err(ClientError::InvalidRound("no round in progress".into()));
        };
        let rs = &r.start;
        if r.kind == v1::RoundKind::Statistics {
            let max_cohort = rs
                .quantisation
                .as_ref()
                .map_or(0, |q| q.max_cohort as usize);
            let max_cohort = if max_cohort == 0 {
                rs.cohort.len()
            } else {
                max_cohort
            };
            let bits = rs.training.as_ref().map_or(0, |t| t.stats_scale_bits);
            return Ok(Action::Compute(LocalJob::Statistics { bits, max_cohort }));
        }
        let ring = r.cfg.ring;
        let quantiser = Quantiser::new(
            &convert::quant_config(rs.quantisation.as_ref(), ring)
                .map_err(|e| ClientError::InvalidRound(e.to_string()))?,
        )?;
        let global = r
            .global
            .clone()
            .ok_or_else(|| ClientError::InvalidRound("no global model".into()))?;
        let standardiser = if !rs.feature_mean.is_empty() || !rs.feature_std.is_empty() {
            Some(
                Standardiser::new(rs.feature_mean.clone(), rs.feature_std.clone())
                    .map_err(|e| ClientError::InvalidRound(format!("feature statistics: {e}")))?,
            )
        } else {
            None
        };
        Ok(Action::Compute(LocalJob::Learn(Box::new(Learn {
            round: rs.round,
            ring,
            quantiser,
            training: rs.training.clone().unwrap_or_default(),
            global,
            standardiser,
            evaluate: rs.evaluate || r.kind == v1::RoundKind::Evaluate,
            fit: r.kind == v1::RoundKind::Train,
            spare: self.contributions.spare.take(),
        }))))
    }
}
