//! Error types of the crypto crate. Every failure a peer can provoke is one of
//! these values, never a panic.

use crate::ids::{MemberId, Stage};

/// Failures of the primitives.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// An unknown cipher-suite name or code.
    #[error("unknown cipher suite {0:?} (expected \"intl\" or \"gm\")")]
    UnknownSuite(String),
    /// The KDF cannot produce that many bytes.
    #[error("KDF output of {0} bytes is too long")]
    KdfLength(usize),
    /// AEAD sealing failed.
    #[error("encryption failed")]
    Encrypt,
    /// AEAD opening failed: wrong key, tampered ciphertext or wrong associated data.
    #[error(
        "decryption failed: ciphertext or its associated data was altered, or the key is wrong"
    )]
    Decrypt,
    /// A public key that does not parse or is unsafe to use.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(&'static str),
    /// A secret key that does not parse.
    #[error("invalid secret key: {0}")]
    InvalidSecretKey(&'static str),
    /// Signing failed.
    #[error("signing failed")]
    Sign,
    /// A signature that does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A vector too long for one mask stream.
    #[error("vector of {len} elements exceeds the mask PRG limit of {max} elements")]
    VectorTooLong {
        /// Requested length.
        len: usize,
        /// Largest supported length.
        max: usize,
    },
}

/// Failures of a secure-aggregation round, as seen by one party.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ProtocolError {
    /// A primitive failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Shamir sharing failed.
    #[error(transparent)]
    Shamir(#[from] crate::shamir::ShamirError),
    /// Invalid round parameters.
    #[error("invalid round configuration: {0}")]
    Config(String),
    /// A message arrived in a stage that does not accept it.
    #[error("message for stage {got} arrived while the round is in stage {expected}")]
    WrongStage {
        /// The stage the party is in.
        expected: Stage,
        /// The stage the message belongs to.
        got: Stage,
    },
    /// A message for another round.
    #[error("message for round {got}, but this is round {expected}")]
    WrongRound {
        /// This round.
        expected: u64,
        /// The message's round.
        got: u64,
    },
    /// A sender that is not part of this stage.
    #[error("member {0} is not a participant of this stage")]
    NotParticipant(MemberId),
    /// The same member sent twice.
    #[error("duplicate message from member {0}")]
    Duplicate(MemberId),
    /// A message that names members it must not (not neighbours, itself, …).
    #[error("malformed message from member {member}: {reason}")]
    Malformed {
        /// Who sent it (or whom it is about).
        member: MemberId,
        /// What is wrong.
        reason: String,
    },
    /// A neighbour's signed key advertisement failed verification.
    #[error("key advertisement of member {member} rejected: {reason}")]
    BadAdvert {
        /// Whose advertisement.
        member: MemberId,
        /// Why.
        reason: String,
    },
    /// A vector of the wrong length.
    #[error("vector has {got} elements, expected {expected}")]
    WrongLength {
        /// Configured length.
        expected: usize,
        /// Received length.
        got: usize,
    },
    /// Too few neighbours remain for the threshold.
    #[error("only {have} neighbours of member {member} remain, threshold is {need}")]
    BelowThreshold {
        /// Whose neighbourhood.
        member: MemberId,
        /// Remaining.
        have: usize,
        /// Required.
        need: usize,
    },
    /// The coordinator asked for both shares of one member.
    #[error("refusing to reveal both the self-mask and the mask-key share of member {0}")]
    BothSharesRequested(MemberId),
    /// Too few members survived.
    #[error("only {have} members survived stage {stage}, at least {need} required")]
    TooFewSurvivors {
        /// Stage that closed.
        stage: Stage,
        /// Survivors.
        have: usize,
        /// Configured minimum.
        need: usize,
    },
    /// A secret could not be reconstructed.
    #[error("cannot reconstruct the {what} of member {member}: {have} shares, {need} needed")]
    Reconstruction {
        /// Whose secret.
        member: MemberId,
        /// Which secret.
        what: &'static str,
        /// Shares available.
        have: usize,
        /// Threshold.
        need: usize,
    },
    /// A reconstructed secret does not match its commitment or public key.
    #[error("reconstructed {what} of member {member} does not match its commitment")]
    CommitmentMismatch {
        /// Whose secret.
        member: MemberId,
        /// Which secret.
        what: &'static str,
    },
    /// A one-sided pair's mask cannot be removed: its masker, the only one
    /// asked for the pair key, did not answer the unmask stage.
    #[error("the key of member {masker}'s one-sided mask with {peer} was not revealed")]
    MissingPairKey {
        /// The survivor whose input holds the mask.
        masker: MemberId,
        /// The survivor that did not mask with it.
        peer: MemberId,
    },
    /// The round breaks this site's own policy ([`crate::protocol::SitePolicy`]);
    /// nothing the coordinator sends can override it.
    #[error("round refused by site policy: {0}")]
    Policy(String),
    /// The coordinator's survivor set is inconsistent with what this site saw
    /// or signed, or lacks a quorum of signatures.
    #[error("survivor set refused: {0}")]
    Inconsistent(String),
    /// The round is over (finished or failed) and accepts nothing more.
    #[error("the round has ended")]
    Ended,
    /// The round was stopped from outside (for example on shutdown) before it
    /// finished. Distinct from [`ProtocolError::Config`] so callers can tell an
    /// operator's stop from parameters that never could have worked.
    #[error("round aborted: {reason}")]
    Aborted {
        /// Why, as given to the `abort` call.
        reason: String,
    },
}
