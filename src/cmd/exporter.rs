//! `rcops exporter`: serves [`rcops_core::ops::exporter`] over HTTP until Ctrl-C/SIGTERM.

use rcops_core::ops::exporter::ExporterState;
use rcops_server::{serve, AppState};
use std::sync::Arc;

use super::{executor, CmdResult, Failure};
use crate::cli::{ExporterArgs, GlobalOpts};
use crate::output::EXIT_OK;

pub async fn run(g: &GlobalOpts, a: &ExporterArgs) -> CmdResult {
    let (exec, seeds) = executor(g)?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .map_err(|e| Failure::failed(format!("cannot listen on {}: {e}", a.listen)))?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| a.listen.clone());
    // Discovery takes a seed round plus a few node rounds, each bounded by --timeout.
    let scrape_timeout = g.timeout * 4 + std::time::Duration::from_secs(1);
    let state = Arc::new(AppState {
        exec,
        seeds,
        exporter: ExporterState::default(),
        scrape_timeout,
    });
    eprintln!("rcops exporter: serving http://{local}/metrics (scrape timeout {scrape_timeout:?})");
    serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| Failure::failed(format!("exporter on {local} failed: {e}")))?;
    Ok(EXIT_OK)
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
