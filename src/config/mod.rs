//! The configuration toolkit, the ground that every table's code builds on: reading a
//! TOML file with the place of every key ([`file`]), `${VAR}` expansion ([`env`]),
//! human durations and sizes ([`units`]), secrets that are never printed ([`secret`]),
//! findings placed at `file:line:column` and rendered ([`diagnostic`]); [`checks`], what
//! every table's validation
//! writes its findings with, and [`policy`], the retry and rate-limit policies that
//! several tables share.
//!
//! A pipeline file as a whole, its tables put together, loaded and compared, is
//! [`crate::pipeline`]; each table's own keys are read and checked beside its code.

pub mod checks;
pub mod diagnostic;
pub mod env;
pub mod file;
pub mod policy;
pub mod secret;
pub mod units;
