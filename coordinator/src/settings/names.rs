//! Serde adapters of the named choices (suite, ring, model and optimiser
//! kinds): each reads a name into its typed value, refusing a name that
//! means nothing while the file is read, and writes the canonical lowercase
//! name back.

use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

// The written names are part of the config hash (see `HashedConfig`), so
// each adapter writes exactly the lowercase spelling the string fields of
// earlier releases held. `confide_crypto` deliberately has no serde, hence
// adapters here rather than derives on `Suite` and `Ring`.

/// The value a name `T` parses to, or a deserialisation error naming `field`
/// and `accepted`.
fn checked<'de, D: Deserializer<'de>, T: FromStr>(
    d: D,
    field: &str,
    accepted: &str,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<T>()
        .map_err(|_| D::Error::custom(format!("{field}: unknown value {s:?}, expected {accepted}")))
}

/// `suite`: "intl" or "gm".
pub(super) mod suite {
    use confide_crypto::Suite;

    use super::*;

    pub(in crate::settings) fn serialize<S: Serializer>(
        v: &Suite,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }

    pub(in crate::settings) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Suite, D::Error> {
        checked(d, "suite", "\"intl\" or \"gm\"")
    }
}

/// `ring`: "u32" or "u64".
pub(super) mod ring {
    use confide_crypto::ring::Ring;

    use super::*;

    pub(in crate::settings) fn serialize<S: Serializer>(v: &Ring, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(in crate::settings) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Ring, D::Error> {
        checked(d, "ring", "\"u32\" or \"u64\"")
    }
}

/// `model.kind`: "logistic", "mlp" or "file".
pub(super) mod model_kind {
    use confide_proto::model::ModelKind;

    use super::*;

    pub(in crate::settings) fn serialize<S: Serializer>(
        v: &ModelKind,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }

    pub(in crate::settings) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<ModelKind, D::Error> {
        checked(d, "model.kind", "\"logistic\", \"mlp\" or \"file\"")
    }
}

/// `optimiser.kind`: "fedavg", "fedavgm", "fedadam", "fedyogi" or "fedadagrad".
pub(super) mod optimiser_kind {
    use super::super::OptimiserKind;
    use super::*;

    pub(in crate::settings) fn serialize<S: Serializer>(
        v: &OptimiserKind,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }

    pub(in crate::settings) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<OptimiserKind, D::Error> {
        checked(
            d,
            "optimiser.kind",
            "\"fedavg\", \"fedavgm\", \"fedadam\", \"fedyogi\" or \"fedadagrad\"",
        )
    }
}
