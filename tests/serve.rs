//! `rcops serve` against a real lab (with a password): every route × every role, plan and
//! confirm, a config job, the two-person rule on a production cluster (self-approval
//! refused, a plan that changed refused, expiry, rejection), the audit log (who requested,
//! who approved; an edited or deleted record found by `rcops audit verify`), and no secret in
//! the database or the server's log.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request (the connection closed after it): the status and the JSON body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    if !body.is_empty() {
        req += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    req += &body;
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out[9..12].parse().unwrap();
    let text = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    // Chunked bodies (axum streams JSON this way): take the JSON between the chunk sizes.
    let json_text = match (text.find(['{', '[']), text.rfind(['}', ']'])) {
        (Some(a), Some(b)) if b >= a => &text[a..=b],
        _ => "null",
    };
    (
        status,
        serde_json::from_str(json_text).unwrap_or(Value::String(text.into())),
    )
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rcops serve` on `port` (its stderr into `log`), once it listens.
fn start_server(cfg: &str, port: u16, password: &str, log: &std::path::Path) -> Server {
    let child = rcops(&[
        "serve",
        "--config",
        cfg,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .env("LAB_PW", password)
    .stdout(Stdio::null())
    .stderr(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap(),
    )
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, port }
}

fn token(config: &str, user: &str, role: &str) -> String {
    let r = run(&mut rcops(&[
        "token", "create", "--config", config, "--user", user, "--role", role,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout.lines().last().unwrap().trim().to_string()
}

fn wait_job(port: u16, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, j) = http(
            port,
            "GET",
            &format!("/api/v1/jobs/{id}"),
            Some(token),
            None,
        );
        assert_eq!(code, 200, "{j}");
        if ["succeeded", "failed", "cancelled", "interrupted"]
            .contains(&j["state"].as_str().unwrap())
        {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} never finished: {j:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn policies(lab: &Lab) -> Vec<String> {
    (0..lab.nodes as u16)
        .map(|i| {
            let out = lab.redis_cli(lab.port + i, &["CONFIG", "GET", "maxmemory-policy"]);
            out.lines().nth(1).unwrap_or_default().to_string()
        })
        .collect()
}

/// Where the server's state lives in a run of the suite.
trait StateDb {
    /// The `state = …` line of rcops.toml (empty: the SQLite default).
    fn setting(&self) -> String;
    /// Files that hold the state (searched for secrets).
    fn files(&self) -> Vec<std::path::PathBuf>;
    /// Runs one SQL statement on it (to tamper with the audit log).
    fn sql(&self, q: &str);
}

struct Sqlite(std::path::PathBuf);

impl StateDb for Sqlite {
    fn setting(&self) -> String {
        String::new()
    }
    fn files(&self) -> Vec<std::path::PathBuf> {
        vec![self.0.clone()]
    }
    fn sql(&self, q: &str) {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import sqlite3; c = sqlite3.connect({:?}); c.execute({q:?}); c.commit()",
                    self.0.display().to_string()
                ),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

/// A private PostgreSQL from Debian's package: initdb into a temporary folder (as the
/// `postgres` user when running as root), a port of its own, stopped on drop.
struct Postgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

fn as_postgres(bin: &std::path::Path, tool: &str, args: &[&str]) -> std::process::Output {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let exe = bin.join(tool).display().to_string();
    let mut c = if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", &exe]);
        c
    } else {
        std::process::Command::new(&exe)
    };
    c.args(args).output().unwrap()
}

impl Postgres {
    fn start() -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").is_file())?;
        let dir = tempfile::tempdir().unwrap();
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres", &dir.path().display().to_string()])
            .output();
        let data = dir.path().join("data").display().to_string();
        let out = as_postgres(
            &bin,
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        let port = free_port_block();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        let log = dir.path().join("log").display().to_string();
        let out = as_postgres(
            &bin,
            "pg_ctl",
            &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        );
        assert!(out.status.success(), "pg_ctl start: {out:?}");
        Some(Postgres { dir, bin, port })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data").display().to_string();
        let _ = as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "stop"],
        );
    }
}

impl StateDb for Postgres {
    fn setting(&self) -> String {
        format!(
            "state = \"postgres://postgres@127.0.0.1:{}/postgres\"\n",
            self.port
        )
    }
    fn files(&self) -> Vec<std::path::PathBuf> {
        fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("data"), &mut out);
        out
    }
    fn sql(&self, q: &str) {
        let port = self.port.to_string();
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                q,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn serve_on_sqlite_checks_every_route_by_role_runs_jobs_and_keeps_a_chained_audit() {
    suite(|dir| Box::new(Sqlite(dir.join("state").join("rcops-server.db"))));
}

#[test]
fn serve_on_postgresql_passes_the_same_suite() {
    let Some(pg) = Postgres::start() else {
        eprintln!(
            "SKIPPED: no PostgreSQL server binaries (apt install postgresql; scripts/test does)"
        );
        return;
    };
    let pg = std::cell::RefCell::new(Some(pg));
    suite(|_| Box::new(pg.borrow_mut().take().unwrap()));
}

fn suite(db: impl FnOnce(&std::path::Path) -> Box<dyn StateDb>) {
    let lab = Lab::start(LabSpec {
        replicas: 0,
        requirepass: true,
        ..Default::default()
    });
    let password = lab
        .env
        .iter()
        .find(|(k, _)| k == "RCOPS_PASSWORD")
        .map(|(_, v)| v.clone())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rcops.toml");
    let state = dir.path().join("state");
    let db = db(dir.path());
    std::fs::write(
        &config,
        format!(
            "{}state_dir = {:?}\napproval_ttl = \"4s\"\n\n[clusters.lab]\nseeds = [\"{}\"]\n\
             password_env = \"LAB_PW\"\n\n[clusters.prod]\nseeds = [\"{}\"]\n\
             password_env = \"LAB_PW\"\nproduction = true\n",
            db.setting(),
            state.display(),
            lab.seed(),
            lab.seed()
        ),
    )
    .unwrap();
    let cfg = config.display().to_string();
    let admin = token(&cfg, "alice", "admin");
    let op = token(&cfg, "oscar", "operator");
    let op2 = token(&cfg, "otto", "operator");
    let viewer = token(&cfg, "vera", "viewer");
    let log = dir.path().join("serve.log");
    let server = start_server(&cfg, free_port_block(), &password, &log);
    let port = server.port;

    // Every route × every role: 401 without a token, 403 below the route's role, otherwise
    // through (a missing job is a 404, a plan a 200).
    let dry = json!({ "set": { "maxmemory-policy": "allkeys-lru" }, "dry_run": true });
    let dry_plain = json!({ "dry_run": true });
    let routes: Vec<(&str, &str, Option<&Value>, u8)> = vec![
        ("GET", "/api/v1/clusters", None, 1),
        ("GET", "/api/v1/openapi.json", None, 0),
        ("GET", "/api/v1/clusters/lab/check", None, 1),
        ("GET", "/api/v1/clusters/lab/nodes", None, 1),
        ("GET", "/api/v1/clusters/lab/slots", None, 1),
        ("GET", "/api/v1/clusters/lab/info", None, 1),
        ("GET", "/api/v1/clusters/lab/metrics", None, 1),
        ("GET", "/api/v1/clusters/lab/slowlog", None, 1),
        (
            "POST",
            "/api/v1/clusters/lab/slowlog/reset",
            Some(&dry_plain),
            2,
        ),
        ("GET", "/api/v1/backups", None, 1),
        ("GET", "/api/v1/jobs/j-none/events", None, 1),
        ("POST", "/api/v1/clusters/lab/config", Some(&dry), 2),
        ("GET", "/api/v1/jobs", None, 1),
        ("GET", "/api/v1/jobs/j-none", None, 1),
        ("DELETE", "/api/v1/jobs/j-none", None, 2),
        ("GET", "/api/v1/approvals", None, 1),
        ("POST", "/api/v1/approvals/j-none/approve", None, 2),
        ("POST", "/api/v1/approvals/j-none/reject", None, 2),
        ("GET", "/api/v1/audit", None, 1),
        ("GET", "/metrics", None, 1),
    ];
    let callers: [(Option<&str>, u8); 5] = [
        (None, 0),
        (Some("rcops_not-a-token"), 0),
        (Some(&viewer), 1),
        (Some(&op), 2),
        (Some(&admin), 3),
    ];
    for (method, path, body, need) in &routes {
        for (tok, level) in &callers {
            let (code, v) = http(port, method, path, *tok, *body);
            let want = match (level, need) {
                (_, 0) => None,
                (0, _) => Some(401),
                (l, n) if l < n => Some(403),
                _ => None,
            };
            match want {
                Some(w) => assert_eq!(code, w, "{method} {path} as level {level}: {v}"),
                None => assert!(
                    ![401, 403].contains(&code) && code < 500,
                    "{method} {path} as level {level}: {code} {v}"
                ),
            }
        }
    }
    let (code, _) = http(port, "GET", "/health", None, None);
    assert_eq!(code, 200);

    // The check is `rcops check --json`'s document (the CLI resolves -c NAME from the file).
    let (code, api_check) = http(
        port,
        "GET",
        "/api/v1/clusters/lab/check",
        Some(&viewer),
        None,
    );
    assert_eq!(code, 200);
    let cli =
        run(rcops(&["check", "-c", "lab", "--config", &cfg, "--json"]).env("LAB_PW", &password));
    let want = if api_check["status"] == "ok" { 0 } else { 1 };
    assert_eq!(cli.code, want, "{}", cli.stderr);
    let cli = cli.json();
    for k in ["status", "nodes", "masters", "slots_covered", "findings"] {
        assert_eq!(api_check[k], cli[k], "{k}");
    }

    // Plan, confirm, run: a non-production cluster changes at once.
    let set = |policy: &str, confirm: bool| json!({ "set": { "maxmemory-policy": policy }, "confirm": confirm });
    let (code, v) = http(
        port,
        "POST",
        "/api/v1/clusters/lab/config",
        Some(&op),
        Some(&dry),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["changes"], 3, "{v}");
    let (code, v) = http(
        port,
        "POST",
        "/api/v1/clusters/lab/config",
        Some(&op),
        Some(&set("allkeys-lru", false)),
    );
    assert_eq!(code, 400, "{v}");
    assert!(policies(&lab).iter().all(|p| p == "noeviction"));
    let (code, v) = http(
        port,
        "POST",
        "/api/v1/clusters/lab/config",
        Some(&op),
        Some(&set("allkeys-lru", true)),
    );
    assert_eq!(code, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let j = wait_job(port, &viewer, &id);
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert!(policies(&lab).iter().all(|p| p == "allkeys-lru"));
    // Its events: the stream ends with the job's last state.
    let (code, ev) = http(
        port,
        "GET",
        &format!("/api/v1/jobs/{id}/events"),
        Some(&viewer),
        None,
    );
    assert_eq!(
        (code, ev["state"].as_str()),
        (200, Some("succeeded")),
        "{ev}"
    );
    // The read routes give the CLI's documents; the OpenAPI document lists every route.
    let (_, slots) = http(
        port,
        "GET",
        "/api/v1/clusters/lab/slots",
        Some(&viewer),
        None,
    );
    assert_eq!(slots["masters"].as_array().unwrap().len(), 3, "{slots}");
    let (_, doc) = http(port, "GET", "/api/v1/openapi.json", None, None);
    for (method, path, _, _) in &routes {
        let templ: Vec<&str> = path.split('/').collect();
        assert!(
            doc["paths"].as_object().unwrap().iter().any(|(p, ops)| {
                let t: Vec<&str> = p.split('/').collect();
                t.len() == templ.len()
                    && t.iter()
                        .zip(&templ)
                        .all(|(a, b)| a == b || a.starts_with('{'))
                    && ops.get(method.to_ascii_lowercase()).is_some()
            }),
            "{method} {path} is not in the OpenAPI document"
        );
    }

    // Production: the request waits; its requester and a viewer cannot approve; another
    // operator can, and the change runs.
    let (code, v) = http(
        port,
        "POST",
        "/api/v1/clusters/prod/config",
        Some(&op),
        Some(&set("volatile-lru", true)),
    );
    assert_eq!(
        (code, v["state"].as_str()),
        (202, Some("waiting-approval")),
        "{v}"
    );
    let id = v["job"].as_str().unwrap().to_string();
    let (_, q) = http(port, "GET", "/api/v1/approvals", Some(&viewer), None);
    assert_eq!(q["approvals"][0]["id"], id.as_str());
    assert_eq!(
        q["approvals"][0]["plan"]["nodes"].as_array().unwrap().len(),
        3
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        policies(&lab).iter().all(|p| p == "allkeys-lru"),
        "nothing before approval"
    );
    let approve = |tok: &str, id: &str| {
        http(
            port,
            "POST",
            &format!("/api/v1/approvals/{id}/approve"),
            Some(tok),
            None,
        )
    };
    let (code, v) = approve(&op, &id);
    assert_eq!(code, 403, "self-approval: {v}");
    assert!(v["error"].as_str().unwrap().contains("another person"));
    let (code, _) = approve(&viewer, &id);
    assert_eq!(code, 403);
    let (code, v) = approve(&op2, &id);
    assert_eq!(code, 200, "{v}");
    let j = wait_job(port, &viewer, &id);
    assert_eq!(
        (j["state"].as_str(), j["approved_by"].as_str()),
        (Some("succeeded"), Some("otto")),
        "{j:#}"
    );
    assert!(policies(&lab).iter().all(|p| p == "volatile-lru"));

    // Rejected: nothing changes. Changed under the plan: refused at approval, nothing
    // applied. Expired: refused.
    let request = |policy: &str| {
        let (code, v) = http(
            port,
            "POST",
            "/api/v1/clusters/prod/config",
            Some(&op),
            Some(&set(policy, true)),
        );
        assert_eq!(code, 202, "{v}");
        v["job"].as_str().unwrap().to_string()
    };
    let id = request("allkeys-random");
    let (code, _) = http(
        port,
        "POST",
        &format!("/api/v1/approvals/{id}/reject"),
        Some(&admin),
        None,
    );
    assert_eq!(code, 200);
    let (_, j) = http(
        port,
        "GET",
        &format!("/api/v1/jobs/{id}"),
        Some(&viewer),
        None,
    );
    assert_eq!(j["state"], "cancelled");
    let id = request("allkeys-random");
    lab.redis_cli(
        lab.port + 1,
        &["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"],
    );
    let (code, _) = approve(&admin, &id);
    assert_eq!(code, 200);
    let j = wait_job(port, &viewer, &id);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert!(
        j["log"][1]
            .as_str()
            .unwrap_or_default()
            .contains("cluster changed")
            || j.to_string().contains("cluster changed"),
        "{j:#}"
    );
    assert_eq!(
        policies(&lab),
        ["volatile-lru", "volatile-ttl", "volatile-lru"]
    );
    let id = request("allkeys-random");
    std::thread::sleep(Duration::from_millis(4500));
    let (code, v) = approve(&admin, &id);
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");

    // Another action through the same flow: a slow-log reset on production, approved.
    let slow_len = |p: u16| {
        lab.redis_cli(p, &["SLOWLOG", "LEN"])
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    for p in lab.port..lab.port + 3 {
        lab.redis_cli(p, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
        lab.redis_cli(p, &["PING"]);
        lab.redis_cli(p, &["CONFIG", "SET", "slowlog-log-slower-than", "1000000"]);
        assert!(slow_len(p) > 0);
    }
    let (code, v) = http(
        port,
        "POST",
        "/api/v1/clusters/prod/slowlog/reset",
        Some(&op),
        Some(&json!({ "confirm": true })),
    );
    assert_eq!(
        (code, v["state"].as_str()),
        (202, Some("waiting-approval")),
        "{v}"
    );
    let id = v["job"].as_str().unwrap().to_string();
    let (code, _) = approve(&admin, &id);
    assert_eq!(code, 200);
    let j = wait_job(port, &viewer, &id);
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(j["report"]["reset"].as_array().unwrap().len(), 3, "{j:#}");
    for p in lab.port..lab.port + 3 {
        assert_eq!(slow_len(p), 0);
    }
    // A secret cannot wait for an approval (the request keeps none).
    let secret = json!({ "set": { "requirepass": "s3cret-new" }, "confirm": true });
    let (code, v) = http(
        port,
        "POST",
        "/api/v1/clusters/prod/config",
        Some(&op),
        Some(&secret),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("secret"), "{v}");

    // The audit: who requested, who approved; filters; no secret anywhere.
    let (_, a) = http(port, "GET", "/api/v1/audit?user=otto", Some(&viewer), None);
    let recs = a["audit"].as_array().unwrap();
    assert!(
        recs.iter()
            .any(|r| r["action"] == "approval: approve" && r["detail"]["requested_by"] == "oscar"),
        "{a:#}"
    );
    assert!(recs.iter().all(|r| r["user"] == "otto"));
    let (_, a) = http(port, "GET", "/api/v1/audit", Some(&viewer), None);
    let all = a["audit"].as_array().unwrap();
    assert!(all
        .iter()
        .any(|r| r["action"] == "login" && r["outcome"] == "refused"));
    assert!(all
        .iter()
        .any(|r| r["action"] == "approval: self" && r["user"] == "oscar"));
    // The server's own series: jobs by state, requests by route and status.
    let (code, m) = http(port, "GET", "/metrics", Some(&viewer), None);
    assert_eq!(code, 200);
    let m = m.as_str().unwrap_or_default().to_string();
    let value = |prefix: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
    };
    assert!(
        value("rcops_server_jobs{state=\"succeeded\"} ") >= 3.0,
        "{m}"
    );
    assert!(
        value("rcops_server_jobs{state=\"cancelled\"} ") >= 2.0,
        "{m}"
    );
    assert!(
        value("rcops_server_requests_total{route=\"/api/v1/clusters/{name}/check\",code=\"200\"} ")
            >= 4.0,
        "{m}"
    );
    assert!(
        value("rcops_server_requests_total{route=\"/api/v1/clusters\",code=\"401\"} ") >= 2.0,
        "{m}"
    );
    drop(server);
    for f in db.files().iter().chain([&log]) {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            !hay.contains(&password),
            "the password is in {}",
            f.display()
        );
        assert!(
            !hay.contains("s3cret-new"),
            "a refused secret is in {}",
            f.display()
        );
        for t in [&admin, &op, &op2, &viewer] {
            assert!(!hay.contains(t.as_str()), "a token is in {}", f.display());
        }
    }

    // An edited record, then a deleted one: `audit verify` names it (exit 2).
    let verify = || run(&mut rcops(&["audit", "verify", "--config", &cfg]));
    let r = verify();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let sql = |q: &str| db.sql(q);
    sql("UPDATE audit SET outcome = 'approved' WHERE seq = 10");
    let r = verify();
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("record 10 was changed"), "{}", r.stderr);
    sql("DELETE FROM audit WHERE seq = 10");
    let r = verify();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("record 10 is missing"), "{}", r.stderr);
}

#[test]
fn a_job_running_when_the_server_dies_is_interrupted_after_a_restart() {
    let lab = Lab::start(LabSpec {
        replicas: 0,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rcops.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[clusters.lab]\nseeds = [\"{}\"]\n",
            dir.path().join("state").display(),
            lab.seed()
        ),
    )
    .unwrap();
    let cfg = config.display().to_string();
    let op = token(&cfg, "oscar", "operator");
    let log = dir.path().join("serve.log");
    let port = free_port_block();
    let mut server = start_server(&cfg, port, "", &log);
    // Cancelled while it runs (one node at a time, 3 s apart): it stops before the rest.
    let slow = json!({ "set": { "maxmemory-policy": "allkeys-random" }, "rolling": true, "settle": "3s", "confirm": true });
    let (code, v) = http(
        port,
        "POST",
        "/api/v1/clusters/lab/config",
        Some(&op),
        Some(&slow),
    );
    assert_eq!(code, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !policies(&lab).iter().any(|p| p == "allkeys-random") {
        assert!(Instant::now() < deadline, "no node changed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, v) = http(
        port,
        "DELETE",
        &format!("/api/v1/jobs/{id}"),
        Some(&op),
        None,
    );
    assert_eq!(
        (code, v["state"].as_str()),
        (200, Some("cancelling")),
        "{v}"
    );
    let j = wait_job(port, &op, &id);
    assert_eq!(j["state"], "cancelled", "{j:#}");
    let changed = policies(&lab)
        .iter()
        .filter(|p| *p == "allkeys-random")
        .count();
    assert!(
        changed < 3,
        "a cancelled rolling change went on: {changed} nodes"
    );
    // One node at a time, 3 s apart: killed after the first node changed.
    let body = json!({ "set": { "maxmemory-policy": "allkeys-lfu" }, "rolling": true, "settle": "3s", "confirm": true });
    let (code, v) = http(
        port,
        "POST",
        "/api/v1/clusters/lab/config",
        Some(&op),
        Some(&body),
    );
    assert_eq!(code, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !policies(&lab).iter().any(|p| p == "allkeys-lfu") {
        assert!(Instant::now() < deadline, "no node changed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, j) = http(port, "GET", &format!("/api/v1/jobs/{id}"), Some(&op), None);
    assert_eq!(j["state"], "running", "{j:#}");
    assert_eq!(j["request"]["rolling"], true);
    server.child.kill().unwrap();
    let _ = server.child.wait();
    let changed = policies(&lab)
        .iter()
        .filter(|p| *p == "allkeys-lfu")
        .count();
    assert!(changed < 3, "the kill came too late to test anything");

    // Restarted: the job says it was interrupted, with no report claiming an outcome.
    let server = start_server(&cfg, port, "", &log);
    let (_, j) = http(
        server.port,
        "GET",
        &format!("/api/v1/jobs/{id}"),
        Some(&op),
        None,
    );
    assert_eq!(j["state"], "interrupted", "{j:#}");
    assert!(j["report"].is_null(), "{j:#}");
    assert!(j["log"].to_string().contains("server stopped"), "{j:#}");
    let r = run(&mut rcops(&["audit", "verify", "--config", &cfg]));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// `GET path` over HTTPS, verifying the server with `ca` (Python's ssl: an independent
/// client): the status, or the error.
fn https_get(port: u16, path: &str, token: &str, ca: &std::path::Path) -> Result<u16, String> {
    let script = format!(
        "import ssl, http.client\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         c = http.client.HTTPSConnection('127.0.0.1', {port}, context=ctx, timeout=20)\n\
         c.request('GET', {path:?}, headers={{'Authorization': 'Bearer {token}'}})\n\
         print(c.getresponse().status)\n",
        ca = ca.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn serve_over_tls_to_a_tls_cluster() {
    let lab = Lab::start(LabSpec {
        masters: 3,
        replicas: 0,
        tls: true,
        ..Default::default()
    });
    let tls = lab.path().join("tls");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rcops.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[clusters.lab]\nseeds = [\"{}\"]\ncacert = {:?}\n",
            dir.path().join("state").display(),
            lab.seed(),
            tls.join("ca.crt").display()
        ),
    )
    .unwrap();
    let cfg = config.display().to_string();
    let viewer = token(&cfg, "vera", "viewer");
    let port = free_port_block();
    let (cert, key) = (tls.join("server.crt"), tls.join("server.key"));
    let child = rcops(&[
        "serve",
        "--config",
        &cfg,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let _server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ca = tls.join("ca.crt");
    assert_eq!(https_get(port, "/health", "", &ca), Ok(200));
    assert_eq!(
        https_get(port, "/api/v1/clusters/lab/check", &viewer, &ca),
        Ok(200)
    );
    assert_eq!(
        https_get(port, "/api/v1/clusters/lab/check", "bad", &ca),
        Ok(401)
    );
    // Plain HTTP gets no answer; nor does a client that does not trust the certificate.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), std::fs::read(tls.join("client.crt")).unwrap()).unwrap();
    assert!(https_get(port, "/health", "", other.path()).is_err());
    // The CLI reaches the TLS cluster by name with the file's CA.
    let r = run(&mut rcops(&[
        "check", "-c", "lab", "--config", &cfg, "--json",
    ]));
    assert!(r.code <= 1, "{}", r.stderr);
}
