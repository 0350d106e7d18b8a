//! Shared test support of the coordinator's integration tests (each test
//! file that needs it says `mod support;`).

#![allow(dead_code)] // each test file uses its own part

pub mod data;
pub mod process;
pub mod seaweed;
