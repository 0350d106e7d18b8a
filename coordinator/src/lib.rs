//! Confide coordinator. Filled in by the end-to-end work.
