//! Test fixture: a lab cluster started with the `rcops` binary in a temp dir, on a port range
//! of its own, stopped by pid (through `rcops lab down`) when dropped — also on panic.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Each lab takes 20 consecutive ports from here (cluster bus ports are +10000).
static NEXT_PORT: AtomicU16 = AtomicU16::new(21000);

pub fn free_port_block() -> u16 {
    loop {
        let p = NEXT_PORT.fetch_add(20, Ordering::SeqCst);
        assert!(p < 25000, "ran out of test ports");
        let free = (p..p + 20).all(|q| {
            std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", q + 10000)).is_ok()
        });
        if free {
            return p;
        }
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rcops"))
}

/// `rcops ARGS…` with a clean environment (no inherited RCOPS_* settings).
pub fn rcops(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    for var in [
        "RCOPS_CLUSTER",
        "RCOPS_PASSWORD",
        "REDISCLI_AUTH",
        "RCOPS_USER",
        "RCOPS_LAB_DIR",
    ] {
        c.env_remove(var);
    }
    c.env("NO_COLOR", "1");
    c
}

/// What a run printed and returned.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn run(cmd: &mut Command) -> Run {
    finish(cmd.output().expect("run rcops"))
}

/// What a finished rcops printed and returned; fails the test if it panicked.
pub fn finish(out: Output) -> Run {
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !r.stderr.contains("panicked"),
        "rcops panicked:\n{}",
        r.stderr
    );
    r
}

/// Sends Ctrl-C (SIGINT) to a running rcops and waits for it: its exit code and how long it
/// took to stop.
pub fn interrupt(mut child: std::process::Child) -> (Option<i32>, Duration) {
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().map(|s| s.code()).unwrap_or(None);
    (status, started.elapsed())
}

/// Codes of the findings in a `check --json` document.
pub fn codes(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| f["code"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn finding<'a>(report: &'a Value, code: &str) -> Option<&'a Value> {
    report["findings"]
        .as_array()?
        .iter()
        .find(|f| f["code"] == code)
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub nodes: usize,
    /// Extra environment for every rcops call against this lab (password).
    pub env: Vec<(String, String)>,
    /// Extra arguments for every cluster command (TLS).
    pub conn_args: Vec<String>,
}

pub struct LabSpec {
    pub masters: u32,
    pub replicas: u32,
    pub node_timeout_ms: u32,
    pub tls: bool,
    pub requirepass: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            masters: 3,
            replicas: 1,
            node_timeout_ms: 5000,
            tls: false,
            requirepass: false,
        }
    }
}

impl Lab {
    pub fn start(spec: LabSpec) -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port_block();
        let mut args: Vec<String> = vec![
            "lab".into(),
            "up".into(),
            "--json".into(),
            "--port".into(),
            port.to_string(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--masters".into(),
            spec.masters.to_string(),
            "--replicas".into(),
            spec.replicas.to_string(),
            "--node-timeout".into(),
            spec.node_timeout_ms.to_string(),
            "--wait".into(),
            "90s".into(),
        ];
        if spec.tls {
            args.push("--tls".into());
        }
        if spec.requirepass {
            args.push("--requirepass".into());
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&mut rcops(&arg_refs));
        let mut lab = Lab {
            dir,
            port,
            nodes: (spec.masters * (1 + spec.replicas)) as usize,
            env: Vec::new(),
            conn_args: Vec::new(),
        };
        assert_eq!(r.code, 0, "lab up failed: {}\n{}", r.stderr, r.stdout);
        let state = r.json();
        if let Some(pw) = state["password_file"].as_str() {
            let pw = std::fs::read_to_string(pw).expect("password file");
            lab.env
                .push(("RCOPS_PASSWORD".into(), pw.trim().to_string()));
        }
        if let Some(ca) = state["tls"]["ca"].as_str() {
            lab.conn_args = vec!["--tls".into(), "--cacert".into(), ca.into()];
        }
        lab
    }

    /// `rcops lab load --keys N --json` into this lab.
    pub fn load(&self, keys: u32) -> Run {
        let k = keys.to_string();
        let d = self.path().display().to_string();
        run(&mut rcops(&[
            "lab", "load", "--keys", &k, "--json", "--dir", &d,
        ]))
    }

    pub fn seed(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `rcops ARGS… -c SEED` with the lab's password and TLS settings.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = rcops(args);
        c.arg("-c").arg(self.seed());
        c.args(&self.conn_args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(&mut self.cmd(args))
    }

    pub fn check(&self) -> (i32, Value) {
        let r = self.run(&["check", "--json"]);
        (r.code, r.json())
    }

    /// Polls `check --json` until `pred` holds; panics with the last report after `within`.
    pub fn check_until(
        &self,
        within: Duration,
        pred: impl Fn(i32, &Value) -> bool,
    ) -> (i32, Value) {
        let deadline = Instant::now() + within;
        loop {
            let (code, report) = self.check();
            if pred(code, &report) {
                return (code, report);
            }
            assert!(
                Instant::now() < deadline,
                "condition not reached; last check (exit {code}):\n{report:#}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `redis-cli` against one lab node, with the lab's password and TLS.
    pub fn redis_cli(&self, port: u16, args: &[&str]) -> String {
        let mut c = Command::new("redis-cli");
        c.arg("-p").arg(port.to_string());
        if let Some(i) = self.conn_args.iter().position(|a| a == "--cacert") {
            c.arg("--tls").arg("--cacert").arg(&self.conn_args[i + 1]);
        }
        for (k, v) in &self.env {
            if k == "RCOPS_PASSWORD" {
                c.env("REDISCLI_AUTH", v);
            }
        }
        c.args(args);
        let out = c.output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        self.redis_cli(port, &["CLUSTER", "MYID"])
    }

    /// Pid of the node on `port`, from `lab status --json`.
    pub fn pid(&self, port: u16) -> u32 {
        let r = run(&mut rcops(&[
            "lab",
            "status",
            "--json",
            "--dir",
            &self.path().display().to_string(),
        ]));
        r.json()["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["port"] == port))
            .and_then(|n| n["pid"].as_u64())
            .expect("pid in lab status") as u32
    }

    pub fn kill_node(&self, port: u16) {
        let pid = self.pid(port);
        let ok = Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = rcops(&["lab", "down", "--dir", &self.path().display().to_string()]).output();
    }
}

/// Keys over all shards of a backup manifest (`backup --json`'s `manifest`).
pub fn manifest_keys(m: &Value) -> u64 {
    m["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["keys"].as_u64().expect("keys"))
        .sum()
}

/// A plain `redis-server` (not a cluster) on a port of its own, stopped by pid on drop.
pub struct Standalone {
    pub child: std::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Standalone {
    pub fn start() -> Standalone {
        Self::start_with(free_port_block(), &[])
    }

    /// A server on `port` with more arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> Standalone {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // A replication client (migrate) gets its snapshot at once, not after 5 s.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .expect("url")
            .get_connection()
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "standalone redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Standalone { child, port, dir }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster built the way operators build one without rcops: `redis-server
/// --cluster-enabled yes` processes joined by `redis-cli --cluster create`.
pub struct CliCluster {
    pub nodes: Vec<Standalone>,
}

impl CliCluster {
    pub fn start(masters: u16) -> CliCluster {
        let base = free_port_block();
        let nodes: Vec<Standalone> = (0..masters)
            .map(|i| Standalone::start_with(base + i, &["--cluster-enabled", "yes"]))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(Standalone::addr).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not form");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        CliCluster { nodes }
    }

    pub fn seed(&self) -> String {
        self.nodes[0].addr()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }
}
