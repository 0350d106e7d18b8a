//! Confide site client. Filled in by the end-to-end work.
