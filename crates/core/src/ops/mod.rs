//! One module per ops capability. Each takes an [`crate::Executor`] and/or a
//! [`crate::ClusterView`] plus its options, and returns a serialisable report that the CLI
//! renders and the server returns as JSON.

pub mod aof;
pub mod backup;
pub mod bench;
pub mod check;
pub mod config;
pub mod exporter;
pub mod follow;
pub mod info;
pub mod keyspace;
pub mod latency;
pub mod link;
pub mod metrics;
pub mod migrate;
pub mod nodes;
pub mod pitr;
pub mod rdb;
pub mod restore;
pub mod slots;
pub mod slowlog;
pub mod verify;

/// Percentage with one decimal, for human output.
pub fn pct(part: f64, whole: f64) -> f64 {
    if whole == 0.0 {
        0.0
    } else {
        (part / whole * 1000.0).round() / 10.0
    }
}

/// A histogram of round-trip times in microseconds: 1 µs to 60 s, 3 significant digits.
pub fn rtt_histogram() -> hdrhistogram::Histogram<u64> {
    // Constant, valid bounds (low ≥ 1, high ≥ 2·low, sigfig ≤ 5): construction cannot fail.
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in milliseconds (µs precision), as every latency report shows them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        Percentiles {
            mean_ms: h.mean().round() / 1000.0,
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}
