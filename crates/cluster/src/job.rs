//! The job contract: what every long operation takes (a cancellation token and a progress
//! sink, beside its executors and options) and what its report says (an [`Outcome`] the
//! CLI maps to an exit code and the server to a job state), plus the checkpoint file
//! format every resumable job writes.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

pub use tokio_util::sync::CancellationToken;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Everything asked for was done.
    Ok,
    /// Done, with something skipped or reported that an operator should read.
    Findings,
    /// Something could not be done.
    Failed,
    /// Stopped by a cancellation; resumable where the job says so.
    Interrupted,
}

impl Outcome {
    /// The CLI's exit code: 0, 1, 2, 130.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Findings => 1,
            Outcome::Failed => 2,
            Outcome::Interrupted => 130,
        }
    }
}

/// Where a job reports progress, per shard (the CLI draws bars, the server streams events).
pub trait Progress: Send + Sync {
    /// Shard `shard` (by its label) has done `done` of `total` units (keys, bytes,
    /// commands: the job says which), `phase` naming what it is doing.
    fn shard(&self, shard: &str, phase: &str, done: u64, total: Option<u64>);
    /// A line worth showing as it happens (a reconnect, a resync).
    fn message(&self, _text: &str) {}
}

/// A sink that drops everything.
pub struct Quiet;

impl Progress for Quiet {
    fn shard(&self, _: &str, _: &str, _: u64, _: Option<u64>) {}
}

/// What a job gets besides its options.
#[derive(Clone)]
pub struct JobCtx {
    pub cancel: CancellationToken,
    pub progress: Arc<dyn Progress>,
}

impl Default for JobCtx {
    fn default() -> Self {
        JobCtx {
            cancel: CancellationToken::new(),
            progress: Arc::new(Quiet),
        }
    }
}

/// Writes `value` as JSON to `path` atomically (a temporary name, fsync, rename): a crash
/// leaves the old checkpoint or the new one, never half of one.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// What kind of failure stopped a job, so a caller can tell "fix the request" from "try
/// again later": mapped to exit codes by the CLI and to HTTP statuses by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The request is wrong (a flag, an id that does not exist).
    Usage,
    /// The request is fine but the clusters are not in a state to do it (a non-empty
    /// target under `fail`, an unhealthy target).
    Precondition,
    /// A node or a cluster could not be reached or refused to answer.
    Unavailable,
    /// rcops itself failed (a file it could not write, a bug).
    Internal,
}

impl ErrorClass {
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::Usage => 64,
            _ => 2,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::Usage => 400,
            ErrorClass::Precondition => 409,
            ErrorClass::Unavailable => 503,
            ErrorClass::Internal => 500,
        }
    }
}

/// A job that could not start or go on, with its class and a one-line message that names
/// the node or file and the cause.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
}

impl JobError {
    pub fn usage(m: impl std::fmt::Display) -> Self {
        JobError {
            class: ErrorClass::Usage,
            message: m.to_string(),
        }
    }
    pub fn precondition(m: impl std::fmt::Display) -> Self {
        JobError {
            class: ErrorClass::Precondition,
            message: m.to_string(),
        }
    }
    pub fn unavailable(m: impl std::fmt::Display) -> Self {
        JobError {
            class: ErrorClass::Unavailable,
            message: m.to_string(),
        }
    }
    pub fn internal(m: impl std::fmt::Display) -> Self {
        JobError {
            class: ErrorClass::Internal,
            message: m.to_string(),
        }
    }
}
