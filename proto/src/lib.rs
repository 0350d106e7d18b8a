//! Confide wire protocol (package `confide.v1`). Filled in by the transport work.
