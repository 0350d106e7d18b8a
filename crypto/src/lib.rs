//! # confide-crypto
//!
//! The secure-aggregation core of Confide: cipher suites, the mask PRG, Shamir
//! secret sharing, quantisation, the SecAgg+ neighbour graph, and the round
//! protocol as two sans-IO state machines. No networking, no clock, no global
//! randomness: everything a round needs is passed in, so a whole round with
//! dropouts runs deterministically in memory (see `Simulation` behind the
//! `test-util` feature).
//!
//! ```text
//!        quant ──▶ site::SiteMachine ──messages──▶ coordinator::CoordinatorMachine ──▶ sum
//!                     │  suite (KDF, AEAD, ECDH, signatures)          │
//!                     └──── prg (AES/SM4-CTR masks) ─── shamir ───────┘
//!                               graph (who masks with whom, k and t)
//!
//!   AnySite ─ wraps SiteMachine<u32|u64>        AnyCoordinator ─ wraps CoordinatorMachine<u32|u64>
//!   (ring chosen at run time, vectors as RingVec)              or PlainAggregator<u32|u64>
//!                                                              (plaintext comparison mode)
//! ```
//!
//! Callers that learn the ring only from the announced [`RoundConfig`] use
//! [`AnySite`] and [`AnyCoordinator`] instead of keeping their own `u32`/`u64`
//! enums. [`PlainAggregator`] is the coordinator of a round with secure
//! aggregation switched off (plain sums, same checks, no privacy). [`MemberId`]
//! and [`Stage`] live in the leaf module [`ids`].
//!
//! ## Example: masks cancel, secrets come back from t shares
//!
//! ```
//! use confide_crypto::{prg::Prg, shamir, suite::Suite};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! for suite in Suite::ALL {
//!     let mask = Prg::new(suite, &[7u8; 16]);
//!     let mut v = vec![1u32, 2, 3];
//!     mask.add_into(&mut v)?;
//!     mask.sub_from(&mut v)?;
//!     assert_eq!(v, [1, 2, 3]);
//! }
//! let mut rng = rand::rng();
//! let shares = shamir::split(&[42u8; 32], 2, &[1, 2, 3], &mut rng)?;
//! assert_eq!(*shamir::reconstruct(&shares[1..], 2)?, [42u8; 32]);
//! # Ok(()) }
//! ```
//!
//! ## Threat model
//!
//! **Parties.** A coordinator and a cohort of n sites per round. Sites know the
//! federation CA; each site has a long-term signing key certified by it.
//!
//! **What the coordinator learns.** With every site following the protocol,
//! the coordinator learns, per round, only the sum Σ wᵢ·Δᵢ of the survivors'
//! quantised weighted updates, the summed weight Σ wᵢ, the summed extra slots
//! (evaluation metrics), and who dropped out when. A single masked vector is
//! uniformly distributed in the ring to anyone not holding the masks.
//!
//! **Malicious coordinator** (holds against any deviation, with up to
//! `max_colluders` sites colluding; argued in `docs/security.md`):
//!
//! * Every signature of a round — key adverts, masking sets, survivor-set
//!   signatures — covers [`RoundConfig::session_id`], a hash of the cohort,
//!   `k`, `t`, graph seed, collusion bound, vector length and the caller's
//!   context (federation, CA, attempt nonce, model hash, training settings).
//!   A site leaves out any peer whose signed view differs from its own, so a
//!   coordinator that splits views or sends one site another model only
//!   splits the cohort; each part is a round of its own under every rule
//!   below.
//! * [`SitePolicy`] is the site's own floor: minimum cohort and survivors
//!   (≥ 3), the complete graph up to a cohort size (32 by default, so no
//!   graph seed matters there), `⌈γ·n⌉` colluders assumed, and `t` at least
//!   [`graph::secure_threshold`]. No announced parameter can lower it.
//! * Before any share is revealed, every survivor signs the one survivor set,
//!   after checking every survivor's masking set (and the signatures of the
//!   sets of the members whose shares it holds): each masked mutually
//!   (each listing the other) with at least `t` survivors, and the graph of
//!   mutual masks stays connected after removing any `max_colluders` survivors
//!   ([`graph::connectivity`]; masks between honest survivors are never
//!   revealed, so each component's sum would come out on its own). A site
//!   reveals only with a quorum of
//!   `⌊(n + c)/2⌋ + 1` signatures on the very set it signed; since honest
//!   sites sign one set per round, no two sets reach a quorum, so no member
//!   is ever "survived" to some sites and "dropped" to others. Withholding
//!   shares from a victim and calling its few peers dropped fails the
//!   masking check at every honest site.
//! * Hence the coordinator learns the sum over a signed survivor set of at
//!   least `max(min_survivors, quorum)` members, or nothing. It can still drop
//!   honest sites at will (the sum of any large-enough subset), partition the
//!   cohort into views each meeting the policy, and run more rounds;
//!   differencing across rounds is out of scope (see below). For cohorts
//!   above `complete_graph_up_to` the coordinator chooses the SecAgg+ graph
//!   seed, and so where its colluders sit; the threshold therefore covers
//!   every colluder being one victim's neighbour (`2t > k + c`), and a
//!   ground seed can only make a round fail.
//!
//! **Faulty sites.** A peer whose advert or sealed share is bad is left out
//! ([`SiteMachine::rejected`]) while `t` good peers remain, and the
//! coordinator names it once more sites refused it than may collude; a
//! located bad unmask share is dropped and its sender named (both as
//! `CoordinatorOutput::Blamed`, which callers may count towards exclusion);
//! a one-sided pair (one survivor lists a peer that does not list it) is
//! resolved by its masker revealing that pair's mask key alone, which leaves
//! the sum as if neither had masked with the other; it blames nobody and
//! does not fail the round unless the masker falls silent.
//! An invalid survivor-set signature is refused where it arrives by a
//! coordinator that checks them (`CoordinatorMachine::check_signatures`,
//! under the key the member advertised with), and its sender blamed and no
//! longer awaited; only valid ones are relayed. Unchecked, they are borne
//! from up to `max_colluders` signers (`quorum + max_colluders` are
//! relayed); more can leave a quorum short, and the round then fails at
//! unmask with nothing revealed. Sites check every relayed signature
//! either way.
//!
//! **Colluding sites.** Up to γ·n sites colluding with the coordinator learn
//! nothing beyond the sum of the honest survivors' inputs, provided the
//! threshold was chosen for γ ([`graph::choose`]): t > (k + c)/2 with c the
//! colluders in the whole cohort (capped at k), whatever their positions.
//! `tests/malicious_coordinator.rs` checks each attack of the security review
//! with an isolation oracle.
//!
//! **Out of scope.** Poisoning beyond what clipping bounds (a site can submit
//! any update within ±clip), inference from the aggregate itself and
//! differencing across rounds (use differential privacy on top), traffic analysis, side channels of the
//! machines involved, and the correctness of a site's local training.
//!
//! **Hygiene.** Secret keys, seeds and shares are zeroized on drop and never
//! printed by `Debug`. Randomness for keys, seeds, shares and rounding comes
//! from a caller-supplied CSPRNG; no seed is ever reduced below 256 bits, and
//! no non-cryptographic generator is used for masks or rounding. SM4 (the
//! `gm` mask PRG and SM4-GCM) has no secret-indexed table look-ups or
//! secret-dependent branches on any CPU ([`simd`] kernels, else the bitsliced
//! [`sm4ct`]). Signature verification, which sees only public values, runs
//! in variable time (SM2's in `suite/sm2_verify.rs`); signing and key
//! agreement stay constant-time.

#![warn(missing_docs)]

pub mod aesfast;
pub mod error;
pub mod graph;
pub mod ids;
pub mod kdf;
pub mod prg;
pub mod protocol;
pub mod quant;
pub mod ring;
pub mod shamir;
#[cfg(any(test, feature = "test-util"))]
pub mod sim;
pub mod simd;
pub mod sm4ct;
pub mod sm4fast;
pub mod stats;
pub mod suite;

pub use error::{CryptoError, ProtocolError};
pub use ids::{MemberId, Stage};
pub use protocol::{
    AnyCoordinator, AnyOutput, AnyRoundResult, AnySite, AnySiteOutput, CoordinatorMachine,
    PlainAggregator, RingVec, RoundConfig, RoundResult, SiteMachine, SitePolicy,
};
pub use ring::{Ring, RingElement};
pub use suite::{CipherSuite, Suite};
