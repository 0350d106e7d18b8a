//! Deserialisers of the named choices (suite, ring, model and optimiser
//! kinds): the value must name something, checked while the file is read.

use std::str::FromStr;

use confide_crypto::Suite;
use confide_crypto::ring::Ring;
use confide_proto::model::ModelKind;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::OptimiserKind;

// The named choices stay strings in `Settings` (their exact spelling is part
// of the config hash, and callers assign them as text), but a file or
// environment value that names nothing is refused while it is read, with the
// field and the accepted values in the message.

/// A name `T` parses, or a deserialisation error naming `field` and `accepted`.
fn checked_name<'de, D: Deserializer<'de>, T: FromStr>(
    d: D,
    field: &str,
    accepted: &str,
) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.parse::<T>() {
        Ok(_) => Ok(s),
        Err(_) => Err(D::Error::custom(format!(
            "{field}: unknown value {s:?}, expected {accepted}"
        ))),
    }
}

pub(super) fn suite_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_name::<D, Suite>(d, "suite", "\"intl\" or \"gm\"")
}

pub(super) fn ring_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_name::<D, Ring>(d, "ring", "\"u32\" or \"u64\"")
}

pub(super) fn model_kind_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_name::<D, ModelKind>(d, "model.kind", "\"logistic\" or \"mlp\"")
}

pub(super) fn optimiser_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_name::<D, OptimiserKind>(
        d,
        "optimiser.kind",
        "\"fedavg\", \"fedavgm\", \"fedadam\", \"fedyogi\" or \"fedadagrad\"",
    )
}
