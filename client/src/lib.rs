//! # confide-client
//!
//! The library a Confide site embeds, and the `confide-site` daemon. It holds
//! the built-in trainers (`train`) and models, and drives the site side of a
//! secure-aggregation round.

pub mod train;
