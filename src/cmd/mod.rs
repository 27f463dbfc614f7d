//! Dispatch: resolves global options into an executor and seeds once, runs the subcommand,
//! and maps failures to a one-line error and an exit code.

mod advise;
mod backup;
mod bench;
mod check;
mod config;
mod exporter;
mod info;
mod keyspace;
mod lab;
mod latency;
mod metrics;
mod migrate;
mod nodes;
mod rdb;
mod restore;
mod serve;
mod slots;
mod slowlog;
mod verify;

use rcops_core::topology::Detail;
use rcops_core::{
    discover_with, Addr, ClusterView, ConnectOptions, Executor, Follow, Secret, TlsOptions,
};

use crate::cli::{Cli, Command, GlobalOpts};
use crate::output::{self, EXIT_FAILED, EXIT_USAGE};

/// A command that could not do its job: what to print and which exit code to return.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

/// A library job's typed error: its class gives the exit code.
impl From<rcops_core::job::JobError> for Failure {
    fn from(e: rcops_core::job::JobError) -> Self {
        Failure {
            code: e.class.exit_code(),
            message: e.message,
        }
    }
}

impl Failure {
    pub fn failed(message: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_FAILED,
            message: message.to_string(),
        }
    }

    pub fn usage(message: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.to_string(),
        }
    }
}

pub type CmdResult = Result<u8, Failure>;

pub async fn run(cli: Cli) -> u8 {
    let json = cli.global.json;
    let result = match &cli.command {
        Command::Lab(c) => lab::run(&cli.global, c).await,
        Command::Check(a) => check::run(&cli.global, a).await,
        Command::Nodes => nodes::run(&cli.global).await,
        Command::Slots => slots::run(&cli.global).await,
        Command::Info(a) => info::run(&cli.global, a).await,
        Command::Metrics(a) => metrics::run(&cli.global, a).await,
        Command::Slowlog(a) => slowlog::run(&cli.global, a).await,
        Command::Exporter(a) => exporter::run(&cli.global, a).await,
        Command::Serve(a) => serve::serve(&cli.global, a).await,
        Command::Token(t) => serve::token(&cli.global, t).await,
        Command::Audit(a) => serve::audit(&cli.global, a).await,
        Command::Latency(a) => latency::run(&cli.global, a).await,
        Command::Bigkeys(a) => keyspace::run(&cli.global, a, false).await,
        Command::Memkeys(a) => keyspace::run(&cli.global, a, true).await,
        Command::Bench(a) => bench::run(&cli.global, a).await,
        Command::Config(c) => config::run(&cli.global, c).await,
        Command::Advise(a) => advise::run(&cli.global, a).await,
        Command::Rdb(c) => rdb::run(&cli.global, c),
        Command::Backup(a) => backup::run(&cli.global, a).await,
        Command::Restore(a) => restore::run(&cli.global, a).await,
        Command::Migrate(a) => migrate::run(&cli.global, a).await,
        Command::Verify(a) => verify::run(&cli.global, a).await,
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            output::error(&f.message);
            if json {
                output::print_json(&serde_json::json!({ "error": f.message, "exit_code": f.code }));
            }
            f.code
        }
    }
}

/// Connection options from the global flags; secrets only from files and the environment
/// (a `-a` value works but warns, like redis-cli).
pub fn connect_options(g: &GlobalOpts) -> Result<ConnectOptions, Failure> {
    let mut opts = ConnectOptions::default();
    opts.timeout = g.timeout;
    opts.user = g.user.clone().filter(|u| !u.is_empty());
    opts.password = if let Some(path) = &g.password_file {
        Some(password_file(path)?)
    } else if let Some(pw) = &g.pass {
        output::warn("using a password with '-a' on the command line may not be safe (use RCOPS_PASSWORD or --password-file)");
        Some(Secret::new(pw.clone()))
    } else {
        ["RCOPS_PASSWORD", "REDISCLI_AUTH"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|p| !p.is_empty()))
            .map(Secret::new)
    };
    // A named cluster brings its own credentials (by reference) unless some were given.
    if let Some(c) = named_cluster(g)? {
        if opts.user.is_none() {
            opts.user = c.user.clone();
        }
        if opts.password.is_none() {
            opts.password = c.password().map_err(Failure::usage)?;
        }
        let global_tls = g.tls || g.cacert.is_some() || g.cert.is_some() || g.insecure;
        if !global_tls && (c.tls || c.cacert.is_some() || c.cert.is_some()) {
            opts = opts
                .with_tls(&TlsOptions {
                    cacert: c.cacert.clone(),
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                    insecure: false,
                })
                .map_err(Failure::usage)?;
        }
    }
    if g.tls || g.cacert.is_some() || g.cert.is_some() || g.insecure {
        opts = with_tls(g, opts)?;
    }
    Ok(opts)
}

/// `opts` over TLS with the global certificate options.
pub fn with_tls(g: &GlobalOpts, opts: ConnectOptions) -> Result<ConnectOptions, Failure> {
    opts.with_tls(&TlsOptions {
        cacert: g.cacert.clone(),
        cert: g.cert.clone(),
        key: g.key.clone(),
        insecure: g.insecure,
    })
    .map_err(Failure::usage)
}

/// A password from the first line of a file.
pub fn password_file(path: &std::path::Path) -> Result<Secret, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::usage(format!("cannot read password file {}: {e}", path.display()))
    })?;
    Ok(Secret::new(text.lines().next().unwrap_or_default()))
}

/// The seed list from `-c` / `RCOPS_CLUSTER`.
pub fn seeds(g: &GlobalOpts) -> Result<Vec<Addr>, Failure> {
    let Some(text) = &g.cluster else {
        return Err(Failure::usage(
            "no cluster given: pass -c HOST:PORT[,HOST:PORT…] or set RCOPS_CLUSTER",
        ));
    };
    if let Some(c) = named_cluster(g)? {
        return c.seeds().map_err(Failure::usage);
    }
    // A malformed address is a usage error (64) naming the address.
    Addr::parse_list(text).map_err(Failure::usage)
}

/// `-c NAME`: a cluster of rcops.toml (a name has no `:`), when the file exists.
fn named_cluster(
    g: &GlobalOpts,
) -> Result<Option<rcops_server::settings::ClusterSettings>, Failure> {
    let Some(name) = g.cluster.as_deref().filter(|t| !t.contains(':')) else {
        return Ok(None);
    };
    let path = serve::config_path(g);
    if !path.is_file() {
        return Ok(None);
    }
    let s = rcops_server::settings::Settings::load(&path).map_err(Failure::usage)?;
    match s.cluster(name) {
        Some(c) => Ok(Some(c.clone())),
        None => Err(Failure::usage(format!(
            "-c {name}: no such cluster in {} (it has: {})",
            path.display(),
            s.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Executor and seeds for a cluster command.
pub fn executor(g: &GlobalOpts) -> Result<(Executor, Vec<Addr>), Failure> {
    let seeds = seeds(g)?;
    let exec = Executor::new(connect_options(g)?, g.concurrency as usize);
    Ok((exec, seeds))
}

/// Discovers the cluster from the seeds' views only (see `discover_light`): for commands
/// that need the node list and per-node numbers, not every node's opinion.
pub async fn view_light(
    g: &GlobalOpts,
    detail: Detail,
) -> Result<(Executor, ClusterView), Failure> {
    view_by(g, detail, Follow::Light).await
}

/// The cluster as the seeds see it (see `discover_seeds`): for commands that then talk to
/// every node and report the ones that fail.
pub async fn view_seeds(
    g: &GlobalOpts,
    detail: Detail,
) -> Result<(Executor, ClusterView), Failure> {
    view_by(g, detail, Follow::No).await
}

/// Discovers the cluster or fails with the seeds' errors in one line.
pub async fn view(g: &GlobalOpts, detail: Detail) -> Result<(Executor, ClusterView), Failure> {
    view_by(g, detail, Follow::AllViews).await
}

async fn view_by(
    g: &GlobalOpts,
    detail: Detail,
    follow: Follow,
) -> Result<(Executor, ClusterView), Failure> {
    let (exec, seeds) = executor(g)?;
    let view = discover_with(&exec, &seeds, detail, follow)
        .await
        .map_err(Failure::failed)?;
    if let Some(w) = view.denied_warning() {
        output::warn(w);
    }
    Ok((exec, view))
}

/// A flag that turns true on Ctrl-C, for long runs that stop early but still clean up.
/// A job's context for the CLI: cancelled by Ctrl-C or SIGTERM, progress as bars per shard.
pub fn job_ctx(
    json: bool,
) -> (
    rcops_core::job::JobCtx,
    std::sync::Arc<crate::output::ShardBars>,
) {
    let cancel = cancel_on_signals();
    let bars = std::sync::Arc::new(crate::output::ShardBars::new(json));
    let ctx = rcops_core::job::JobCtx {
        cancel,
        progress: bars.clone(),
    };
    (ctx, bars)
}

/// A token cancelled by Ctrl-C or SIGTERM: the job stops cleanly (checkpointed, resumable,
/// cleaned up).
pub fn cancel_on_signals() -> rcops_core::job::CancellationToken {
    let cancel = rcops_core::job::CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
        }
        cancel.cancel();
    });
    token
}
