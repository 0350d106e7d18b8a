//! End-to-end tests for Confide.
