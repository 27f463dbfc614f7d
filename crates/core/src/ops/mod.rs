//! One module per ops capability. Each takes an [`crate::Executor`] and/or a
//! [`crate::ClusterView`] plus its options, and returns a serialisable report that the CLI
//! renders and the server returns as JSON.

pub mod bench;
pub mod check;
pub mod exporter;
pub mod info;
pub mod keyspace;
pub mod latency;
pub mod metrics;
pub mod nodes;
pub mod slots;
pub mod slowlog;

/// Percentage with one decimal, for human output.
pub fn pct(part: f64, whole: f64) -> f64 {
    if whole == 0.0 {
        0.0
    } else {
        (part / whole * 1000.0).round() / 10.0
    }
}
