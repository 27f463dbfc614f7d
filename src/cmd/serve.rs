//! `rcops serve`, `rcops token create`, `rcops audit verify`: the ops server over
//! [`rcops_server::api`], and its tokens and audit log in the state database.

use rcops_server::api::Api;
use rcops_server::settings::Settings;
use rcops_server::store::{Role, Store};
use std::path::PathBuf;
use std::sync::Arc;

use super::config::default_state_dir;
use super::{connect_options, CmdResult, Failure};
use crate::cli::{AuditCommand, GlobalOpts, ServeArgs, TokenCommand};
use crate::output::{self, EXIT_FAILED, EXIT_OK};

/// The configuration file: --config, RCOPS_CONFIG, or the default place.
pub fn config_path(g: &GlobalOpts) -> PathBuf {
    g.config.clone().unwrap_or_else(|| {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|d| !d.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("rcops").join("rcops.toml")
    })
}

fn settings(g: &GlobalOpts) -> Result<Settings, Failure> {
    Settings::load(&config_path(g)).map_err(Failure::usage)
}

fn state_dir(g: &GlobalOpts, s: &Settings) -> PathBuf {
    s.state_dir
        .clone()
        .or_else(|| g.state_dir.clone())
        .unwrap_or_else(default_state_dir)
}

async fn store(g: &GlobalOpts, s: &Settings) -> Result<Store, Failure> {
    Store::open(&s.state_url(&state_dir(g, s)))
        .await
        .map_err(Failure::failed)
}

pub async fn serve(g: &GlobalOpts, a: &ServeArgs) -> CmdResult {
    let s = settings(g)?;
    let store = store(g, &s).await?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .map_err(|e| Failure::failed(format!("cannot listen on {}: {e}", a.listen)))?;
    let local = listener
        .local_addr()
        .map_or(a.listen.clone(), |a| a.to_string());
    let dir = state_dir(g, &s);
    let clusters = s.clusters.len();
    let api = Arc::new(Api::new(
        s,
        store,
        connect_options(g)?,
        g.concurrency as usize,
        dir,
    ));
    let scheme = if a.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    output::note(format!(
        "rcops serve: {scheme}://{local}/api/v1 ({clusters} cluster(s); Ctrl-C or SIGTERM stops)"
    ));
    let failed = |e: String| Failure::failed(format!("the server on {local} failed: {e}"));
    let stop = super::exporter::shutdown_signal();
    match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| Failure::usage(format!("{}: {e}", p.display())))
            };
            let tls = rcops_server::tls::TlsListener::new(listener, &read(cert)?, &read(key)?)
                .map_err(Failure::usage)?;
            rcops_server::api::serve(tls, api, stop)
                .await
                .map_err(failed)?;
        }
        _ => rcops_server::api::serve(listener, api, stop)
            .await
            .map_err(failed)?,
    }
    Ok(EXIT_OK)
}

pub async fn token(g: &GlobalOpts, t: &TokenCommand) -> CmdResult {
    let TokenCommand::Create { user, role } = t;
    let role = Role::parse(role).map_err(Failure::usage)?;
    let s = settings(g)?;
    let store = store(g, &s).await?;
    // 256 random bits: stored as a SHA-256, shown once.
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let token = format!("rcops_{token}");
    store
        .add_token(user, role, &token)
        .await
        .map_err(Failure::failed)?;
    store
        .audit(
            user,
            "",
            "token: create",
            serde_json::json!({ "role": role.as_str() }),
            "created",
        )
        .await
        .map_err(Failure::failed)?;
    if g.json {
        output::print_json(
            &serde_json::json!({ "user": user, "role": role.as_str(), "token": token }),
        );
    } else {
        output::note(format!(
            "token for {user} ({}); shown once, stored as a hash:",
            role.as_str()
        ));
        crate::outln!("{token}");
    }
    Ok(EXIT_OK)
}

pub async fn audit(g: &GlobalOpts, a: &AuditCommand) -> CmdResult {
    let AuditCommand::Verify = a;
    let s = settings(g)?;
    let store = store(g, &s).await?;
    match store.audit_verify().await.map_err(Failure::failed)? {
        Ok(n) => {
            if g.json {
                output::print_json(&serde_json::json!({ "ok": true, "records": n }));
            } else {
                crate::outln!("audit log verified: {n} record(s), every hash chained");
            }
            Ok(EXIT_OK)
        }
        Err(problem) => {
            if g.json {
                output::print_json(&serde_json::json!({ "ok": false, "problem": problem }));
            }
            output::error(format!("audit log NOT verified: {problem}"));
            Ok(EXIT_FAILED)
        }
    }
}
