//! Integration tests: one binary (see `common` for the lab fixture). Every test runs the
//! built `rcops` against real redis-server processes started by `rcops lab`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

mod backup;
mod breakage;
mod config;
mod errors;
mod follow;
mod migrate;
mod observability;
mod readonly;
mod restore;
mod security;
mod serve;
