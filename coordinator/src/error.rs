//! Errors of the coordinator. [`RequestError`] is what a site's request can
//! provoke (mapped to one gRPC status in `grpc`); [`CoordinatorError`] is what
//! stops the coordinator.

use confide_crypto::{MemberId, ProtocolError, Stage};
use confide_proto::convert::ConvertError;
use confide_proto::model::ModelError;

/// Why a site's request was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RequestError {
    /// Unknown or replaced session.
    #[error("unknown or expired session")]
    UnknownSession,
    /// The TLS identity does not own the session / name.
    #[error("TLS identity {peer:?} may not act as site {site:?}")]
    IdentityMismatch {
        /// Name in the peer certificate.
        peer: String,
        /// Site claimed.
        site: String,
    },
    /// A stage message claims another member than the session's.
    #[error("site {site:?} may not act as member {claimed}")]
    MemberMismatch {
        /// The session's site.
        site: String,
        /// Member named in the message.
        claimed: MemberId,
    },
    /// Message for another round.
    #[error("message for round {got}, but the current round is {expected}")]
    WrongRound {
        /// Current round (0: none).
        expected: u64,
        /// Message's round.
        got: u64,
    },
    /// The site is not in the round's cohort.
    #[error("site {site} is not in the cohort of round {round}")]
    NotInCohort {
        /// Site name.
        site: String,
        /// The round.
        round: u64,
    },
    /// An upload outside the masked-input stage.
    #[error("round {round} is in stage {stage}, not masked-input")]
    NotUploading {
        /// The round.
        round: u64,
        /// Its current stage.
        stage: Stage,
    },
    /// The member already submitted its vector (or is not in this stage).
    #[error("duplicate submission: member {0} already submitted (or is not in this stage)")]
    AlreadySubmitted(MemberId),
    /// The crypto machine refused the message.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A wire message that does not convert into the protocol's types.
    #[error("invalid argument: {0}")]
    Convert(#[from] ConvertError),
    /// A site name outside `[A-Za-z0-9._-]{1,253}`.
    #[error("invalid argument: site name must be 1–253 characters of [A-Za-z0-9._-]")]
    SiteName,
    /// A verifying key of impossible length.
    #[error("invalid argument: verifying_key must be a public key of the federation's suite")]
    VerifyingKey,
    /// An upload announcing another vector length than the round's.
    #[error("invalid argument: vector has {got} elements, expected {expected}")]
    VectorLength {
        /// Elements the round's vector has.
        expected: usize,
        /// Elements announced.
        got: u64,
    },
    /// An upload chunk at the wrong offset.
    #[error("invalid argument: chunk offset {offset}, expected {expected}")]
    ChunkOffset {
        /// Offset given (elements).
        offset: u64,
        /// Elements received so far.
        expected: u64,
    },
    /// An upload chunk that does not end on a whole element and byte of
    /// the vector's wire form (`confide_proto::layout::pack`).
    #[error(
        "invalid argument: chunk of {bytes} bytes at element {offset} does not end on a whole \
         element of a vector of {elements} elements ({expected} bytes, model slots packed at \
         {bits} bits)"
    )]
    ChunkSize {
        /// Chunk bytes.
        bytes: usize,
        /// Its offset (elements).
        offset: u64,
        /// Elements of the vector.
        elements: usize,
        /// Bytes of the whole vector.
        expected: usize,
        /// Bits per packed element.
        bits: u32,
    },
    /// An upload whose length is not that of its vector's wire form.
    #[error(
        "invalid argument: upload of {received} bytes, expected {expected} bytes for \
         {elements} elements (model slots packed at {bits} bits)"
    )]
    Truncated {
        /// Bytes received.
        received: usize,
        /// Bytes of the whole vector.
        expected: usize,
        /// Elements of the vector.
        elements: usize,
        /// Bits per packed element.
        bits: u32,
    },
    /// A second masked-input stream of a member while its first is open.
    #[error(
        "upload in progress: member {0} already has a masked-input stream open for this round; \
         only one is accepted at a time"
    )]
    UploadInProgress(MemberId),
    /// No upload slot freed before the masked-input stage's deadline.
    #[error(
        "no upload slot became free before round {round}'s masked-input deadline \
         (limits.max_concurrent_uploads)"
    )]
    UploadSlotTimeout {
        /// The round.
        round: u64,
    },
    /// An upload stream that sent nothing for too long; its slot was released.
    #[error(
        "upload stalled: no chunk for {idle_secs} s after {received} of {elements} elements \
         (limits.upload_idle_secs); its upload slot was released"
    )]
    UploadStalled {
        /// The idle limit.
        idle_secs: u32,
        /// Elements received.
        received: usize,
        /// Elements of the vector.
        elements: usize,
    },
    /// An upload stream still incomplete when the masked-input stage closed.
    #[error(
        "upload not finished by the masked-input deadline: {received} of {elements} elements \
         received; its upload slot was released"
    )]
    UploadPastDeadline {
        /// Elements received.
        received: usize,
        /// Elements of the vector.
        elements: usize,
    },
    /// The identity sent requests faster than its token bucket allows.
    #[error(
        "rate limit: site {site:?} exceeded limits.site_rate_per_sec = {rate} \
         (burst limits.site_burst = {burst}); retry later"
    )]
    RateLimited {
        /// The site (or certificate name) limited.
        site: String,
        /// Sustained requests per second allowed.
        rate: f64,
        /// Requests allowed at once.
        burst: u32,
    },
    /// `max_sites` reached.
    #[error("limit exceeded: the federation already has max_sites = {max_sites} sites")]
    TooManySites {
        /// The limit.
        max_sites: usize,
    },
    /// No model to download for that round.
    #[error("not found: no model for round {round}")]
    NoModel {
        /// The round asked for.
        round: u64,
    },
    /// The coordinator is shutting down.
    #[error("internal error: shutting down")]
    ShuttingDown,
    /// The upload's spill file could not be written (a full disk, most
    /// likely); the upload was dropped and may be retried.
    #[error("the coordinator could not spill the upload to {dir} (limits.spill_dir): {reason}")]
    Spill {
        /// The spill directory.
        dir: String,
        /// What the file system said.
        reason: String,
    },
}

/// Why the coordinator cannot start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Invalid settings.
    #[error("configuration: {0}")]
    Config(String),
    /// The model from the settings cannot be built.
    #[error("configuration: model: {0}")]
    Model(#[from] ModelError),
    /// Checkpoint trouble.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A checkpoint whose model does not fit the configured one.
    #[error("checkpoint: {0}")]
    CheckpointModel(#[source] ModelError),
    /// A manifest that does not serialise.
    #[error("checkpoint: {0}")]
    ManifestJson(#[source] serde_json::Error),
    /// A manifest that does not parse.
    #[error("checkpoint: {}: {source}", path.display())]
    Manifest {
        /// The checkpoint directory's manifest.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An object-storage request that failed (network, credentials,
    /// bucket, permissions).
    #[error("checkpoint store: {op} {location}: {source}")]
    ObjectStore {
        /// What was attempted (put, get, list, delete).
        op: &'static str,
        /// The object or prefix, as a URL.
        location: String,
        /// Why (boxed: `object_store`'s error is large and this one
        /// travels in every `Result`).
        #[source]
        source: Box<object_store::Error>,
    },
    /// A checkpoint whose data does not match its manifest (a torn upload,
    /// a truncated or edited object): never resumed from.
    #[error("checkpoint {location} is incomplete or damaged: {reason}")]
    TornCheckpoint {
        /// The checkpoint (directory or URL).
        location: String,
        /// What does not match.
        reason: String,
    },
    /// This coordinator does not (or no longer) hold the federation's
    /// lease: another one is active, so it must not write.
    #[error("lease {location}: {reason}; this coordinator is fenced and writes nothing more")]
    Fenced {
        /// The lease object, as a URL.
        location: String,
        /// Who holds it now, or why ours is no longer valid.
        reason: String,
    },
    /// An encrypted checkpoint that fails authentication (an edited
    /// manifest or object, or a manifest swapped in from another
    /// checkpoint), or a plaintext one where encryption is required: never
    /// loaded, and resume stops rather than fall back to older state.
    #[error("checkpoint {location} fails authentication, refusing it: {reason}")]
    TamperedCheckpoint {
        /// The checkpoint (directory or URL).
        location: String,
        /// What did not authenticate.
        reason: String,
    },
    /// An encrypted checkpoint whose data key cannot be unwrapped with the
    /// key at hand (none configured, another key id, a wrong KEK).
    #[error("checkpoint {location} is encrypted under key id {key_id:?}: {reason}")]
    CheckpointKey {
        /// The checkpoint (directory or URL).
        location: String,
        /// The key id its manifest names.
        key_id: String,
        /// Why it cannot be opened.
        reason: String,
    },
    /// A round the store holds no complete checkpoint of.
    #[error("checkpoint: no complete checkpoint of round {round} in {location}")]
    NoSuchCheckpoint {
        /// The store.
        location: String,
        /// The round asked for.
        round: u64,
    },
    /// The round transcript could not be read or written.
    #[error("round transcript: {}: {source}", path.display())]
    Transcript {
        /// The transcript file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A whole line of the round transcript that is not a record.
    #[error("round transcript: {}: line {line} is not a round record: {source}", path.display())]
    TranscriptLine {
        /// The transcript file.
        path: std::path::PathBuf,
        /// Its line number (from 1).
        line: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// TLS material (files, certificates, keys) that cannot be read or made.
    #[error("TLS: {0}")]
    Tls(String),
    /// A certificate or key that could not be made or parsed.
    #[error("TLS: {0}")]
    Certificate(#[source] rcgen::Error),
    /// The CA private key cannot be created, found, unlocked or used.
    #[error("CA key: {0}")]
    CaKey(#[from] CaKeyError),
    /// A TLS configuration the transport refused.
    #[error("TLS: {0}")]
    TlsConfig(#[source] tonic::transport::Error),
    /// TLS material rustls refused (a PEM without a certificate, a key that
    /// does not fit, an unparsable CRL).
    #[error("TLS: {0}")]
    Rustls(#[from] confide_proto::tls::TlsError),
    /// I/O.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An endpoint the transport refused (e.g. a malformed URL).
    #[error("transport: {0}")]
    Transport(#[source] tonic::transport::Error),
    /// A connection that could not be made.
    #[error("transport: {url}: {source}")]
    Connect {
        /// The coordinator's URL.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call the remote end answered with an error status. Boxed because a
    /// `Status` is large and this error travels in every `Result`.
    #[error("transport: {0}")]
    Rpc(#[source] Box<tonic::Status>),
    /// A background task (checkpoint writer) panicked or was cancelled.
    #[error("checkpoint: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Too many failed rounds in a row.
    #[error("{failures} consecutive rounds failed; giving up")]
    Rounds {
        /// Consecutive failures.
        failures: u32,
    },
}

/// Why the CA key cannot be created, found, unlocked or used.
#[derive(Debug, thiserror::Error)]
pub enum CaKeyError {
    /// The environment variable named by a flag is missing or empty.
    #[error("environment variable {var} (named by {flag}) is not set, empty or not UTF-8")]
    EnvVar {
        /// The variable's name.
        var: String,
        /// The flag that named it.
        flag: &'static str,
    },
    /// An encrypted `ca.key` but no passphrase source.
    #[error(
        "{} is encrypted: pass --ca-passphrase-env VAR, VAR being the name of the \
         environment variable that holds its passphrase",
        path.display()
    )]
    NeedsPassphrase {
        /// The key file.
        path: std::path::PathBuf,
    },
    /// A passphrase source for a `ca.key` that is not encrypted.
    #[error("{} is not an encrypted key, but --ca-passphrase-env was given", path.display())]
    NotEncrypted {
        /// The key file.
        path: std::path::PathBuf,
    },
    /// The passphrase does not decrypt the key.
    #[error("{}: wrong passphrase (from ${var}): the key does not decrypt", path.display())]
    WrongPassphrase {
        /// The key file.
        path: std::path::PathBuf,
        /// The variable the passphrase came from.
        var: String,
    },
    /// `ca.key` is missing because the key lives in a token.
    #[error(
        "the CA key is in a PKCS#11 token (see {}), not in ca.key: pass --pkcs11-module, \
         --pkcs11-token, --pkcs11-key-label and --pkcs11-pin-env",
        path.display()
    )]
    InToken {
        /// The source record.
        path: std::path::PathBuf,
    },
    /// A key file others may read.
    #[error(
        "{} is accessible to group or others (mode {mode:03o}); a CA key must be private to \
         its owner: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file or source record that does not parse.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// Flags that do not describe one source.
    #[error("{0}")]
    Flags(String),
    /// A PKCS#11 call that failed.
    #[error("PKCS#11: {op}: {source}")]
    Pkcs11 {
        /// What was attempted.
        op: String,
        /// The module's answer.
        #[source]
        source: cryptoki::error::Error,
    },
    /// The token or key is not as expected.
    #[error("PKCS#11: {0}")]
    Token(String),
    /// The key does not belong to the CA certificate.
    #[error("the CA key does not match the public key of {}", path.display())]
    KeyMismatch {
        /// The CA certificate.
        path: std::path::PathBuf,
    },
}
