//! Local lab clusters of real `redis-server` (or `valkey-server`) processes on 127.0.0.1:
//! start, create the cluster, wait for agreement, report status, load sample data, stop.
//!
//! A lab lives in one directory: `lab.json` (ports, pids, TLS and password files), and one
//! sub-directory per node with its config, log and cluster state. Processes are tracked by
//! pid and stopped by pid after checking the pid still belongs to that node's server.

pub mod certs;
pub mod load;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rcops_formats::info::Info;
use rcops_formats::slot::even_split;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use certs::LabTls;
use rcops_cluster::fanout::{query, Executor};
use rcops_cluster::node::{Addr, ConnectOptions, NodeError, Secret, TlsOptions};
use rcops_cluster::topology::{discover, Detail};

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub masters: usize,
    pub replicas: usize,
    /// First port; nodes take consecutive ports, cluster bus ports are +10000.
    pub port: u16,
    pub dir: PathBuf,
    pub server_bin: PathBuf,
    pub tls: bool,
    /// Password for the default user (and `masterauth`), if any.
    pub requirepass: Option<Secret>,
    /// `cluster-node-timeout` in milliseconds: low values make failover tests fast.
    pub node_timeout_ms: u64,
    /// How long to wait for the cluster to converge.
    pub wait: Duration,
}

/// One node process of a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    pub port: u16,
    pub pid: u32,
    /// The role the lab assigned at creation (`master` or `replica`); failovers may change it.
    pub planned_role: String,
}

/// What `lab.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub dir: PathBuf,
    pub port: u16,
    pub masters: usize,
    pub replicas: usize,
    pub server_bin: PathBuf,
    pub nodes: Vec<LabNode>,
    pub tls: Option<LabTls>,
    /// File holding the password (mode 0600), never the password itself.
    pub password_file: Option<PathBuf>,
    pub created_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Setup(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Busy(String),
    #[error("no lab in {} (start one with `rcops lab up`)", .0.display())]
    NotFound(PathBuf),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("lab did not converge: {0}")]
    Timeout(String),
}

impl LabError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        LabError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes a file readable by its owner only (keys, passwords).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), LabError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io(path, e))?;
    f.write_all(data).map_err(|e| LabError::io(path, e))
}

impl LabState {
    pub fn state_file(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }

    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = Self::state_file(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotFound(dir.to_path_buf()))
            }
            Err(e) => return Err(LabError::io(&path, e)),
        };
        serde_json::from_str(&text)
            .map_err(|e| LabError::Setup(format!("{}: corrupt lab state: {e}", path.display())))
    }

    fn save(&self) -> Result<(), LabError> {
        let path = Self::state_file(&self.dir);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| LabError::Setup(format!("cannot encode lab state: {e}")))?;
        write_private(&path, text.as_bytes())
    }

    /// The first node: what `-c` should point at.
    pub fn seed(&self) -> Addr {
        Addr::new("127.0.0.1", self.port)
    }

    pub fn addrs(&self) -> Vec<Addr> {
        self.nodes
            .iter()
            .map(|n| Addr::new("127.0.0.1", n.port))
            .collect()
    }

    /// Options that reach this lab's nodes (its CA and client certificate, its password).
    pub fn connect_options(&self, timeout: Duration) -> Result<ConnectOptions, LabError> {
        let mut opts = ConnectOptions::default();
        opts.timeout = timeout;
        if let Some(pw) = &self.password_file {
            let text = std::fs::read_to_string(pw).map_err(|e| LabError::io(pw, e))?;
            opts.password = Some(Secret::new(text.trim_end().to_string()));
        }
        if let Some(t) = &self.tls {
            opts = opts
                .with_tls(&TlsOptions {
                    cacert: Some(t.ca.clone()),
                    cert: Some(t.client_cert.clone()),
                    key: Some(t.client_key.clone()),
                    insecure: false,
                })
                .map_err(LabError::Setup)?;
        }
        Ok(opts)
    }
}

/// Whether a process we started has exited (gone, or a zombie waiting for us to reap it).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Whether `pid` is alive and still the server we started on `port` (pids get reused).
pub fn pid_is_node(pid: u32, port: u16) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    !exited(pid) && cmdline.contains("-server") && cmdline.contains(&format!(":{port}"))
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn node_config(opts: &LabOptions, port: u16, node_dir: &Path, tls: Option<&LabTls>) -> String {
    let mut c = String::new();
    let mut line = |k: &str, v: &str| {
        c.push_str(k);
        c.push(' ');
        c.push_str(v);
        c.push('\n');
    };
    line("bind", "127.0.0.1");
    line("dir", &node_dir.display().to_string());
    line("logfile", "redis.log");
    line("daemonize", "no");
    line("cluster-enabled", "yes");
    line("cluster-config-file", "nodes.conf");
    line("cluster-node-timeout", &opts.node_timeout_ms.to_string());
    line("save", "\"\"");
    line("appendonly", "no");
    // Replicas sync immediately instead of waiting 5 s for more replicas to join.
    line("repl-diskless-sync-delay", "0");
    line("protected-mode", "no");
    match tls {
        Some(t) => {
            line("port", "0");
            line("tls-port", &port.to_string());
            line("tls-cert-file", &t.server_cert.display().to_string());
            line("tls-key-file", &t.server_key.display().to_string());
            line("tls-ca-cert-file", &t.ca.display().to_string());
            line("tls-cluster", "yes");
            line("tls-replication", "yes");
            line("tls-auth-clients", "optional");
        }
        None => line("port", &port.to_string()),
    }
    if let Some(pw) = &opts.requirepass {
        line("requirepass", pw.expose());
        line("masterauth", pw.expose());
    }
    c
}

/// What a convergence probe found.
enum Probe {
    Done,
    /// Not yet; what is still pending.
    Pending(String),
    /// Will never converge (a node died): stop waiting.
    Failed(String),
}

/// Polls `probe` every 100 ms until it is done, fails, or the deadline passes.
async fn wait_until<F, Fut>(deadline: Instant, what: &str, mut probe: F) -> Result<(), LabError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Probe>,
{
    loop {
        match probe().await {
            Probe::Done => return Ok(()),
            Probe::Failed(why) => return Err(LabError::Setup(format!("{what}: {why}"))),
            Probe::Pending(status) if Instant::now() >= deadline => {
                return Err(LabError::Timeout(format!("{what}: {status}")))
            }
            Probe::Pending(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Turns "what is still pending, if anything" into a probe result.
fn pending(status: Option<String>) -> Probe {
    status.map_or(Probe::Done, Probe::Pending)
}

/// Starts a lab cluster and waits until every node reports `cluster_state:ok` and all nodes
/// agree on the configuration. On failure the processes already started are stopped.
pub async fn up(opts: &LabOptions, stage: &(dyn Fn(&str) + Sync)) -> Result<LabState, LabError> {
    let total = opts.masters * (1 + opts.replicas);
    if opts.masters == 0 {
        return Err(LabError::Setup("a lab needs at least one master".into()));
    }
    if total > 1000 {
        return Err(LabError::Setup(format!(
            "{total} nodes is more than a lab supports (1000)"
        )));
    }
    let last_port = u32::from(opts.port) + total as u32 - 1;
    if opts.port < 1024 || last_port + 10000 > 65535 {
        return Err(LabError::Setup(format!(
            "ports {}-{last_port} (and bus ports +10000) must lie within 1024-65535",
            opts.port
        )));
    }
    if let Ok(old) = LabState::load(&opts.dir) {
        if old.nodes.iter().any(|n| pid_is_node(n.pid, n.port)) {
            return Err(LabError::Busy(format!(
                "a lab is already running in {} (stop it with `rcops lab down --dir {}`)",
                opts.dir.display(),
                opts.dir.display()
            )));
        }
    }
    let ports: Vec<u16> = (0..total).map(|i| opts.port + i as u16).collect();
    if let Some(p) = ports
        .iter()
        .find(|&&p| !port_free(p) || !port_free(p + 10000))
    {
        return Err(LabError::Busy(format!(
            "port {p} or its bus port {} is in use on 127.0.0.1",
            p + 10000
        )));
    }
    let bin = which(&opts.server_bin).ok_or_else(|| {
        LabError::Setup(format!(
            "{} not found: install it (apt-get install -y redis-server) or pass --server-bin PATH",
            opts.server_bin.display()
        ))
    })?;
    std::fs::create_dir_all(&opts.dir).map_err(|e| LabError::io(&opts.dir, e))?;
    let dir = std::fs::canonicalize(&opts.dir).map_err(|e| LabError::io(&opts.dir, e))?;

    let tls = if opts.tls {
        stage("generating TLS certificates");
        Some(certs::generate(&dir)?)
    } else {
        None
    };
    let password_file = match &opts.requirepass {
        Some(pw) => {
            let path = dir.join("password");
            write_private(&path, pw.expose().as_bytes())?;
            Some(path)
        }
        None => None,
    };

    stage(&format!("starting {total} {} processes", bin.display()));
    let mut state = LabState {
        dir: dir.clone(),
        port: opts.port,
        masters: opts.masters,
        replicas: opts.replicas,
        server_bin: bin.clone(),
        nodes: Vec::with_capacity(total),
        tls: tls.clone(),
        password_file,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    for (i, &port) in ports.iter().enumerate() {
        let node_dir = dir.join(port.to_string());
        // A fresh cluster: stale nodes.conf or data from an earlier lab must not leak in.
        let _ = std::fs::remove_dir_all(&node_dir);
        std::fs::create_dir_all(&node_dir).map_err(|e| LabError::io(&node_dir, e))?;
        let conf = node_dir.join("redis.conf");
        write_private(
            &conf,
            node_config(opts, port, &node_dir, tls.as_ref()).as_bytes(),
        )?;
        let spawned = spawn_server(&bin, &conf, &node_dir);
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                let _ = state.save();
                stop_nodes(&state);
                return Err(e);
            }
        };
        state.nodes.push(LabNode {
            port,
            pid,
            planned_role: if i < opts.masters {
                "master"
            } else {
                "replica"
            }
            .to_string(),
        });
    }
    state.save()?;
    match create_cluster(opts, &state, stage).await {
        Ok(()) => Ok(state),
        Err(e) => {
            stop_nodes(&state);
            Err(e)
        }
    }
}

fn which(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

fn spawn_server(bin: &Path, conf: &Path, node_dir: &Path) -> Result<u32, LabError> {
    use std::os::unix::process::CommandExt;
    let stderr_path = node_dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| LabError::io(&stderr_path, e))?;
    let child = Command::new(bin)
        .arg(conf)
        .current_dir(node_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        // Own process group: a Ctrl-C aimed at rcops must not take the lab down with it.
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Setup(format!("cannot start {}: {e}", bin.display())))?;
    Ok(child.id())
}

/// Last lines of a node's log, to explain why it died.
fn log_tail(dir: &Path, port: u16) -> String {
    let mut out = String::new();
    for name in ["redis.log", "stderr.log"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(port.to_string()).join(name)) {
            if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                out = last.trim().to_string();
                break;
            }
        }
    }
    out
}

async fn create_cluster(
    opts: &LabOptions,
    state: &LabState,
    stage: &(dyn Fn(&str) + Sync),
) -> Result<(), LabError> {
    let deadline = Instant::now() + opts.wait;
    let conn_opts = state.connect_options(Duration::from_secs(2))?;
    let exec = Executor::new(conn_opts, 128);
    let addrs = state.addrs();
    let n = addrs.len();

    stage("waiting for every node to answer");
    wait_until(deadline, "nodes did not start", || async {
        if let Some(dead) = state.nodes.iter().find(|n| exited(n.pid)) {
            return Probe::Failed(format!(
                "node {} exited: {}",
                dead.port,
                log_tail(&state.dir, dead.port)
            ));
        }
        let r = exec
            .run(addrs.clone(), |addr, mut conn| async move {
                query::<String>(&addr, &mut conn, &redis::cmd("PING")).await
            })
            .await;
        pending(r.failed.iter().next().map(|(addr, e)| {
            format!(
                "{} of {n} not answering, e.g. {e} {}",
                r.failed.len(),
                log_tail(&state.dir, addr.port)
            )
        }))
    })
    .await?;

    let ids = exec
        .run(addrs.clone(), |addr, mut conn| async move {
            query::<String>(&addr, &mut conn, redis::cmd("CLUSTER").arg("MYID")).await
        })
        .await;
    if let Some(e) = ids.first_error() {
        return Err(e.clone().into());
    }
    let ids = ids.ok;

    stage("assigning slots");
    let ranges = even_split(opts.masters);
    let masters: Vec<Addr> = addrs[..opts.masters].to_vec();
    let plan: std::collections::BTreeMap<Addr, (usize, Option<rcops_formats::slot::SlotRange>)> =
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    a.clone(),
                    (i, ranges.get(i).copied().filter(|_| i < opts.masters)),
                )
            })
            .collect();
    let plan = &plan;
    let r = exec
        .run(addrs.clone(), |addr, mut conn| async move {
            let (i, range) = plan[&addr];
            // Distinct epochs avoid the collision-resolution dance on a fresh cluster.
            query::<()>(
                &addr,
                &mut conn,
                redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1),
            )
            .await?;
            if let Some(r) = range {
                let ok: Result<(), NodeError> = query(
                    &addr,
                    &mut conn,
                    redis::cmd("CLUSTER")
                        .arg("ADDSLOTSRANGE")
                        .arg(r.start)
                        .arg(r.end),
                )
                .await;
                if ok.is_err() {
                    // Servers before 7.0 only have ADDSLOTS.
                    let mut cmd = redis::cmd("CLUSTER");
                    cmd.arg("ADDSLOTS");
                    for s in r.start..=r.end {
                        cmd.arg(s);
                    }
                    query::<()>(&addr, &mut conn, &cmd).await?;
                }
            }
            Ok(())
        })
        .await;
    if let Some(e) = r.first_error() {
        return Err(e.clone().into());
    }

    stage(&format!("joining {n} nodes"));
    let first = addrs[0].clone();
    let first = &first;
    let r = exec
        .run(addrs[1..].to_vec(), |addr, mut conn| async move {
            query::<()>(
                &addr,
                &mut conn,
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg(&first.host)
                    .arg(first.port),
            )
            .await
        })
        .await;
    if let Some(e) = r.first_error() {
        return Err(e.clone().into());
    }
    wait_until(deadline, "nodes did not all meet", || async {
        let r = exec
            .run(addrs.clone(), |addr, mut conn| async move {
                let text: String =
                    query(&addr, &mut conn, redis::cmd("CLUSTER").arg("INFO")).await?;
                Ok(Info::parse(&text).u64("cluster_known_nodes").unwrap_or(0))
            })
            .await;
        let behind = r.ok.values().filter(|&&k| k < n as u64).count() + r.failed.len();
        pending(
            (behind > 0).then(|| format!("{behind} of {n} nodes do not know all {n} nodes yet")),
        )
    })
    .await?;

    if opts.replicas > 0 {
        stage("attaching replicas");
        let replica_of: std::collections::BTreeMap<Addr, String> = addrs[opts.masters..]
            .iter()
            .enumerate()
            .filter_map(|(j, a)| Some((a.clone(), ids.get(&masters[j / opts.replicas])?.clone())))
            .collect();
        let replica_of = &replica_of;
        wait_until(deadline, "replicas could not attach", || async {
            let r = exec
                .run(replica_of.keys().cloned(), |addr, mut conn| async move {
                    query::<()>(
                        &addr,
                        &mut conn,
                        redis::cmd("CLUSTER")
                            .arg("REPLICATE")
                            .arg(&replica_of[&addr]),
                    )
                    .await
                })
                .await;
            pending(r.first_error().map(ToString::to_string))
        })
        .await?;
    }

    stage("waiting for cluster_state:ok and agreement");
    let seeds = addrs.clone();
    wait_until(deadline, "cluster did not settle", || async {
        match discover(&exec, &seeds, Detail::Health).await {
            Ok(view) => pending(unsettled(&view, n)),
            Err(e) => Probe::Pending(e.to_string()),
        }
    })
    .await
}

/// What keeps a fresh lab from being ready, if anything: nodes not answering, not
/// `cluster_state:ok`, disagreeing, or replicas not in sync.
fn unsettled(view: &rcops_cluster::topology::ClusterView, n: usize) -> Option<String> {
    if view.snapshots.len() < n {
        return Some(format!("{} of {n} nodes answered", view.snapshots.len()));
    }
    let snaps = || view.snapshots.values();
    let not_ok = snaps()
        .filter(|s| s.cluster_info.get("cluster_state") != Some("ok"))
        .count();
    if not_ok > 0 {
        return Some(format!("{not_ok} nodes not yet cluster_state:ok"));
    }
    if view.signatures.len() > 1 {
        return Some(format!(
            "{} different views of the configuration",
            view.signatures.len()
        ));
    }
    let unsynced = snaps()
        .filter(|s| {
            s.info.get("role") == Some("slave") && s.info.get("master_link_status") != Some("up")
        })
        .count();
    (unsynced > 0).then(|| format!("{unsynced} replicas not yet in sync"))
}

/// Sends SIGTERM to every node still running, waits up to 5 s, then SIGKILLs stragglers.
fn stop_nodes(state: &LabState) -> (usize, usize) {
    let running: Vec<&LabNode> = state
        .nodes
        .iter()
        .filter(|n| pid_is_node(n.pid, n.port))
        .collect();
    for n in &running {
        let _ = kill(Pid::from_raw(n.pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && running.iter().any(|n| pid_is_node(n.pid, n.port)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in running.iter().filter(|n| pid_is_node(n.pid, n.port)) {
        let _ = kill(Pid::from_raw(n.pid as i32), Signal::SIGKILL);
    }
    (running.len(), state.nodes.len() - running.len())
}

/// What `lab down` did.
#[derive(Debug, Clone, Serialize)]
pub struct DownReport {
    pub dir: PathBuf,
    pub stopped: usize,
    pub already_gone: usize,
    pub removed_dir: bool,
}

/// Stops every node of the lab in `dir` by pid and (unless `keep`) deletes its directory.
pub fn down(dir: &Path, keep: bool) -> Result<DownReport, LabError> {
    let state = LabState::load(dir)?;
    let (stopped, already_gone) = stop_nodes(&state);
    let removed_dir = !keep && std::fs::remove_dir_all(dir).is_ok();
    Ok(DownReport {
        dir: dir.to_path_buf(),
        stopped,
        already_gone,
        removed_dir,
    })
}

/// One node's state in `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub port: u16,
    pub pid: u32,
    pub running: bool,
    pub answering: bool,
    pub role: Option<String>,
    pub error: Option<String>,
}

/// JSON: `{"dir", "seed", "tls", "nodes": [NodeStatus], "running", "answering"}`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub dir: PathBuf,
    pub seed: String,
    pub tls: bool,
    pub nodes: Vec<NodeStatus>,
    pub running: usize,
    pub answering: usize,
}

/// Which nodes of a lab run and answer, and in which role.
pub async fn status(dir: &Path, timeout: Duration) -> Result<StatusReport, LabError> {
    let state = LabState::load(dir)?;
    let exec = Executor::new(state.connect_options(timeout)?, 128);
    let roles = exec
        .run(state.addrs(), |addr, mut conn| async move {
            let text: String =
                query(&addr, &mut conn, redis::cmd("INFO").arg("replication")).await?;
            Ok(Info::parse(&text).get("role").map(|r| {
                if r == "slave" {
                    "replica".to_string()
                } else {
                    r.to_string()
                }
            }))
        })
        .await;
    let nodes: Vec<NodeStatus> = state
        .nodes
        .iter()
        .map(|n| {
            let addr = Addr::new("127.0.0.1", n.port);
            NodeStatus {
                port: n.port,
                pid: n.pid,
                running: pid_is_node(n.pid, n.port),
                answering: roles.ok.contains_key(&addr),
                role: roles.ok.get(&addr).cloned().flatten(),
                error: roles.failed.get(&addr).map(ToString::to_string),
            }
        })
        .collect();
    Ok(StatusReport {
        dir: state.dir.clone(),
        seed: state.seed().to_string(),
        tls: state.tls.is_some(),
        running: nodes.iter().filter(|n| n.running).count(),
        answering: nodes.iter().filter(|n| n.answering).count(),
        nodes,
    })
}
