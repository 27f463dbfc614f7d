//! rcops-server: the HTTP side of rcops — the ops API of `rcops serve` ([`api`]: jobs,
//! approvals, audit, over the state in [`store`] and the clusters of [`settings`]), the
//! Prometheus exporter (`/metrics`, `/health`) and the `backup follow` process's own
//! `/metrics`. Handlers only call `rcops_core::ops` functions, like the CLI does.

pub mod actions;
pub mod api;
pub mod settings;
pub mod store;
pub mod tls;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rcops_core::ops::exporter::{scrape, ExporterState};
use rcops_core::ops::follow::FollowStats;
use rcops_core::{Addr, Executor};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What every request shares: one executor (so connections are reused across scrapes),
/// the seeds, and the exporter's counters.
pub struct AppState {
    pub exec: Executor,
    pub seeds: Vec<Addr>,
    pub exporter: ExporterState,
    /// Upper bound for one whole scrape, whatever the nodes do.
    pub scrape_timeout: Duration,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = match tokio::time::timeout(
        state.scrape_timeout,
        scrape(&state.exec, &state.seeds, &state.exporter),
    )
    .await
    {
        Ok(body) => body,
        Err(_) => {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("scrape exceeded {:?}\n", state.scrape_timeout),
            )
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body)
}

async fn health() -> &'static str {
    "ok\n"
}

/// The exporter's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn follow_metrics(State(stats): State<Arc<FollowStats>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, OPENMETRICS)],
        stats.encode(),
    )
}

/// Serves a follower's figures (`/metrics`, `/health`) until `shutdown` resolves.
pub async fn serve_follow(
    listener: tokio::net::TcpListener,
    stats: Arc<FollowStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(follow_metrics))
        .route("/health", get(health))
        .with_state(stats);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
