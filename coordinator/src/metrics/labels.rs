//! The label values and label sets of the coordinator's metrics: small
//! enums only, so the series stay bounded whatever joins.

use confide_crypto::protocol::AnyRoundResult;
use confide_crypto::{ProtocolError, Stage};
use confide_proto::convert::DeclineReason;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};

use crate::federation::outcome::OutcomeError;
use crate::federation::scheduler::RoundKind;

/// A round's kind as a label value (the variant names are the values).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum KindLabel {
    /// Federated feature statistics.
    statistics,
    /// Training (and evaluation of the incoming model).
    train,
    /// Final evaluation.
    evaluate,
}

impl From<RoundKind> for KindLabel {
    fn from(k: RoundKind) -> Self {
        match k {
            RoundKind::Statistics => KindLabel::statistics,
            RoundKind::Train => KindLabel::train,
            RoundKind::Evaluate => KindLabel::evaluate,
        }
    }
}

/// A protocol stage as a label value.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum StageLabel {
    /// Stage 1: key adverts.
    advertise_keys,
    /// Stage 2: sealed shares.
    share_keys,
    /// Stage 3: local training and the masked upload.
    masked_input,
    /// Stage 4: signatures on the survivor set.
    consistency,
    /// Stage 5: unmask shares.
    unmask,
    /// The machine's end state (never closed as a stage in practice).
    done,
}

impl From<Stage> for StageLabel {
    fn from(s: Stage) -> Self {
        match s {
            Stage::AdvertiseKeys => StageLabel::advertise_keys,
            Stage::ShareKeys => StageLabel::share_keys,
            Stage::MaskedInput => StageLabel::masked_input,
            Stage::Consistency => StageLabel::consistency,
            Stage::Unmask => StageLabel::unmask,
            Stage::Done => StageLabel::done,
        }
    }
}

/// Why a round failed, in few enough classes to be a label.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum FailureReason {
    /// Fewer survivors than the round needs (dropouts, stage deadlines).
    too_few_survivors,
    /// A mask secret could not be rebuilt or did not match its commitment.
    reconstruction,
    /// The survivor set was refused or lacked a quorum of signatures.
    inconsistent,
    /// A site's message was malformed or its advert did not verify.
    malformed,
    /// Stopped from outside (shutdown).
    aborted,
    /// No safe parameters for the cohort, or an invalid round configuration.
    parameters,
    /// The unmasked sum was outside what honest sites can produce.
    aggregate_rejected,
    /// The sum could not be applied (decoding, optimiser, model limits).
    outcome,
    /// Anything else.
    other,
}

impl FailureReason {
    /// The class of a failed round machine.
    pub fn of_protocol(e: &ProtocolError) -> Self {
        match e {
            ProtocolError::TooFewSurvivors { .. } | ProtocolError::BelowThreshold { .. } => {
                FailureReason::too_few_survivors
            }
            ProtocolError::Reconstruction { .. }
            | ProtocolError::MissingPairKey { .. }
            | ProtocolError::CommitmentMismatch { .. }
            | ProtocolError::Shamir(_) => FailureReason::reconstruction,
            ProtocolError::Inconsistent(_) => FailureReason::inconsistent,
            ProtocolError::Malformed { .. }
            | ProtocolError::BadAdvert { .. }
            | ProtocolError::WrongLength { .. } => FailureReason::malformed,
            ProtocolError::Aborted { .. } | ProtocolError::Ended => FailureReason::aborted,
            ProtocolError::Config(_) => FailureReason::parameters,
            _ => FailureReason::other,
        }
    }

    /// The class of a sum that could not be applied.
    pub fn of_outcome(e: &OutcomeError) -> Self {
        match e {
            OutcomeError::Rejected(_) => FailureReason::aggregate_rejected,
            _ => FailureReason::outcome,
        }
    }
}

/// Why a Join was refused.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum JoinRefusal {
    /// mTLS on, no client certificate presented.
    no_certificate,
    /// Certificate revoked, not on the allow-list, or an operator's.
    certificate_refused,
    /// The site's own request rate limit.
    site_rate_limit,
    /// The global join rate limit.
    join_rate_limit,
    /// The certificate names another site than the request.
    identity_mismatch,
    /// The verifying key is not the one the certificate binds.
    key_mismatch,
    /// The certificate binds no verifying key.
    key_unbound,
    /// Bad site name or verifying key.
    invalid_request,
    /// `max_sites` sites have joined already.
    too_many_sites,
    /// Anything else.
    other,
}

/// `{kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Round kind.
    pub kind: KindLabel,
}

/// `{kind, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Round kind.
    pub kind: KindLabel,
    /// Failure class.
    pub reason: FailureReason,
}

/// `{stage}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Stage.
    pub stage: StageLabel,
}

/// `{reason}` of a refused Join.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Refusal class.
    pub reason: JoinRefusal,
}

/// Why a site declined a round, as a label value (the reason codes of
/// `DeclineRequest`; never the site's name or message).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DeclineLabel {
    /// The round's training settings break the site's bounds.
    training_bounds,
    /// The site already contributed on this model.
    already_contributed,
    /// Not an exact replay of the site's earlier contribution.
    replay_refused,
    /// The site's secure-aggregation policy.
    secure_aggregation_policy,
    /// Anything else (and codes this coordinator does not know).
    other,
    /// A re-run with another cohort than the survivor set the site signed.
    replay_cohort,
}

impl From<DeclineReason> for DeclineLabel {
    fn from(r: DeclineReason) -> Self {
        match r {
            DeclineReason::TrainingBounds => DeclineLabel::training_bounds,
            DeclineReason::AlreadyContributed => DeclineLabel::already_contributed,
            DeclineReason::ReplayRefused => DeclineLabel::replay_refused,
            DeclineReason::SecureAggregationPolicy => DeclineLabel::secure_aggregation_policy,
            DeclineReason::Other => DeclineLabel::other,
            DeclineReason::ReplayCohort => DeclineLabel::replay_cohort,
        }
    }
}

/// `{reason}` of a decline.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeclineLabels {
    /// Decline reason code.
    pub reason: DeclineLabel,
}

/// `{version, suite, ring, secure_aggregation}`: one series, value 1.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
    /// Cipher suite.
    pub suite: String,
    /// Ring of training rounds.
    pub ring: String,
    /// "true" or "false".
    pub secure_aggregation: String,
}

/// Secrets the coordinator rebuilt to unmask one round's sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconstructions {
    /// Self-mask seeds (one per survivor of a secure round).
    pub seeds: u64,
    /// Mask keys (one per member that shared keys and then dropped).
    pub mask_keys: u64,
}

impl Reconstructions {
    /// From the machine's result: a secure round rebuilds every survivor's
    /// seed and every dropped member's mask key; a plaintext round nothing.
    pub fn of(sum: &AnyRoundResult) -> Self {
        let total = sum.reconstructions as u64;
        let mask_keys = (sum.dropped.len() as u64).min(total);
        Reconstructions {
            seeds: total - mask_keys,
            mask_keys,
        }
    }
}
