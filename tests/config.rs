//! Configuration management on labs of their own (every test here changes configuration).

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

/// A lab plus a private history directory for every rcops call.
struct ConfigLab {
    lab: Lab,
    state: tempfile::TempDir,
}

impl ConfigLab {
    fn start(spec: LabSpec) -> Self {
        ConfigLab {
            lab: Lab::start(spec),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut c = self.lab.cmd(args);
        c.env("RCOPS_STATE_DIR", self.state.path());
        run(&mut c)
    }

    fn ports(&self) -> Vec<u16> {
        (self.lab.port..self.lab.port + self.lab.nodes as u16).collect()
    }

    fn get(&self, port: u16, param: &str) -> String {
        let out = self.lab.redis_cli(port, &["CONFIG", "GET", param]);
        out.lines().nth(1).unwrap_or_default().to_string()
    }

    /// Every node's full `CONFIG GET *`, for before/after comparisons.
    fn all_config(&self) -> BTreeMap<String, Value> {
        let r = self.run(&["config", "get", "*", "--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json()["nodes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Everything the history repository holds, as text (`git log -p` of every commit).
    fn history_text(&self) -> String {
        let mut text = String::new();
        for e in walk(self.state.path()) {
            if e.extension().is_some_and(|x| x == "conf") {
                text.push_str(&std::fs::read_to_string(&e).unwrap());
            }
        }
        for dir in walk(self.state.path()) {
            if dir.ends_with(".git") {
                let out = Command::new("git")
                    .arg("-C")
                    .arg(dir.parent().unwrap())
                    .args(["log", "-p", "--all"])
                    .output();
                if let Ok(o) = out {
                    text.push_str(&String::from_utf8_lossy(&o.stdout));
                }
            }
        }
        text
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}

fn status_of(report: &Value, port: u16) -> &str {
    report["result"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["addr"] == format!("127.0.0.1:{port}").as_str())
        .and_then(|n| n["status"].as_str())
        .unwrap_or("missing")
}

#[test]
fn set_verifies_rewrites_records_refusals_roll_back_and_rollback_restores() {
    let c = ConfigLab::start(LabSpec::default());
    let ports = c.ports();

    let r = c.run(&["config", "snapshot", "-m", "baseline", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let base = r.json()["revision"]["short"].as_str().unwrap().to_string();
    let before = c.all_config();

    // Without --yes: a plan and nothing else.
    let r = c.run(&["config", "set", "maxmemory", "64mb"]);
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(r.stdout.contains("maxmemory") && r.stdout.contains("64mb"));
    assert!(r.stderr.contains("--yes"));
    assert_eq!(c.get(ports[0], "maxmemory"), "0");

    // Applied everywhere, read back, persisted to each node's file.
    let r = c.run(&[
        "config",
        "set",
        "maxmemory",
        "64mb",
        "maxmemory-policy",
        "allkeys-lru",
        "--yes",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let v = r.json();
    assert_eq!(v["result"]["outcome"], "applied");
    for &p in &ports {
        assert_eq!(status_of(&v, p), "applied");
        assert_eq!(c.get(p, "maxmemory"), "67108864");
        assert_eq!(c.get(p, "maxmemory-policy"), "allkeys-lru");
        let file =
            std::fs::read_to_string(c.lab.path().join(p.to_string()).join("redis.conf")).unwrap();
        assert!(
            file.lines().any(|l| l == "maxmemory 64mb"),
            "CONFIG REWRITE did not persist on {p}:\n{file}"
        );
    }

    // The same again: nothing to do.
    let r = c.run(&["config", "set", "maxmemory", "67108864", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("nothing to change"));

    // One node refuses (its default user may not CONFIG SET): every node stays as it was.
    let refusing = ports[1];
    c.lab
        .redis_cli(refusing, &["ACL", "SETUSER", "default", "-config|set"]);
    let mid = c.all_config();
    let r = c.run(&["config", "set", "hz", "25", "--yes", "--json"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stderr, r.stdout);
    let v = r.json();
    assert_eq!(v["result"]["outcome"], "rolled_back");
    assert_eq!(status_of(&v, refusing), "refused");
    assert_eq!(status_of(&v, ports[0]), "rolled_back");
    assert_eq!(c.all_config(), mid, "a node was left half-changed");
    c.lab
        .redis_cli(refusing, &["ACL", "SETUSER", "default", "+config|set"]);

    // A value every node refuses, an unknown parameter: clear errors, nothing changed.
    let r = c.run(&["config", "set", "maxmemory-policy", "bogus", "--yes"]);
    assert_eq!(r.code, 2);
    assert!(r.stdout.contains("refused"), "{}", r.stdout);
    let r = c.run(&["config", "set", "maxmemroy", "1", "--yes"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("unknown configuration parameter \"maxmemroy\""),
        "{}",
        r.stderr
    );
    assert_eq!(c.all_config(), mid);

    // Secrets: set one, and it shows up nowhere — output, history files, git history.
    let r = c.run(&["config", "set", "masterauth", "s3cr3t-pa55", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("s3cr3t") && !r.stderr.contains("s3cr3t"));
    let r = c.run(&[
        "config",
        "set",
        "masterauth",
        "s3cr3t-two",
        "--yes",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !r.stdout.contains("s3cr3t"),
        "secret in JSON output:\n{}",
        r.stdout
    );
    let r = c.run(&["config", "get", "masterauth"]);
    assert!(!r.stdout.contains("s3cr3t"));
    let r = c.run(&["config", "history", "--json"]);
    assert!(!r.stdout.contains("s3cr3t"));
    let hist = c.history_text();
    assert!(hist.contains("maxmemory"), "history is empty?");
    assert!(!hist.contains("s3cr3t"), "secret in the history repository");

    // History lists the changes; the failed attempt is recorded too.
    let r = c.run(&["config", "history", "--json"]);
    let log = r.json();
    let messages: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(messages
        .iter()
        .any(|m| m.starts_with("config set hz 25: failed")));
    assert!(messages.iter().any(|m| m.starts_with("baseline")));
    let r = c.run(&["config", "history", "--param", "maxmemory", "--json"]);
    assert!(r.json().as_array().unwrap().iter().any(|e| e["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["param"] == "maxmemory" && d["to"] == "67108864")));

    // Diff from the baseline to live names what changed.
    let r = c.run(&["config", "diff", &base, "--json"]);
    assert_eq!(r.code, 1);
    let d = r.json();
    assert!(d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["param"] == "maxmemory-policy" && x["from"] == "noeviction"));

    // Rollback to the baseline restores exact values (secrets are reported, not restored).
    let r = c.run(&["config", "rollback", &base, "--yes", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let mut after = c.all_config();
    let mut want = before.clone();
    for m in [&mut after, &mut want] {
        for v in m.values_mut() {
            v.as_object_mut().unwrap().remove("masterauth");
        }
    }
    assert_eq!(after, want, "rollback did not restore the baseline exactly");
    for &p in &ports {
        assert_eq!(c.get(p, "maxmemory"), "0");
    }
    // A secret changed after a revision (set → another value): both sides are masked, yet a
    // rollback reports it as not restored instead of "nothing to change".
    let r = c.run(&["config", "history", "--json"]);
    let with_auth = r.json()[0]["short"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", r.stdout))
        .to_string();
    let r = c.run(&["config", "set", "masterauth", "n3w-pa55", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = c.run(&["config", "rollback", &with_auth, "--yes"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    assert!(
        r.stderr
            .contains("masterauth not changed: secrets are not kept in history"),
        "{}",
        r.stderr
    );
    assert!(!format!("{}{}", r.stdout, r.stderr).contains("n3w-pa55"));

    // A revision that does not exist.
    let r = c.run(&["config", "rollback", "deadbeef", "--yes"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("no revision \"deadbeef\""),
        "{}",
        r.stderr
    );
}

#[test]
fn drift_apply_files_and_a_node_lost_mid_change() {
    let c = ConfigLab::start(LabSpec::default());
    let ports = c.ports();
    let r = c.run(&["config", "drift"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    c.run(&["config", "snapshot"]);

    // A hand-made change on one replica is drift, within its role and against the baseline.
    let odd = *ports.last().unwrap();
    c.lab.redis_cli(odd, &["CONFIG", "SET", "hz", "33"]);
    let r = c.run(&["config", "drift", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let d = r.json();
    let hz = d["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["param"] == "hz")
        .expect("hz drift");
    assert_eq!(hz["scope"], "replica");
    assert_eq!(hz["values"]["33"][0], format!("127.0.0.1:{odd}").as_str());
    assert!(d["ignored"].as_array().unwrap().iter().any(|x| x == "port"));
    let r = c.run(&["config", "drift", "--baseline", "HEAD", "--json"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.json()["drift"][0]["param"], "hz");

    // A desired-state file with a per-role section, as TOML and as redis.conf.
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("want.toml");
    std::fs::write(&toml, "hz = 10\n[replica]\nreplica-priority = 50\n").unwrap();
    let r = c.run(&["config", "apply", toml.to_str().unwrap(), "--yes"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    assert_eq!(c.get(odd, "hz"), "10");
    assert_eq!(c.get(odd, "replica-priority"), "50");
    assert_eq!(c.get(ports[0], "replica-priority"), "100");
    let r = c.run(&["config", "drift", "--baseline", toml.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let conf = dir.path().join("want.conf");
    std::fs::write(&conf, "# desired\nslowlog-max-len 256\n[master]\nhz 12\n").unwrap();
    let r = c.run(&["config", "apply", conf.to_str().unwrap(), "--yes"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    assert_eq!(c.get(ports[0], "hz"), "12");
    assert_eq!(c.get(odd, "hz"), "10");
    assert_eq!(c.get(odd, "slowlog-max-len"), "256");

    // Bad files: unreadable, malformed.
    let r = c.run(&["config", "apply", "/nonexistent/want.conf", "--yes"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("cannot read /nonexistent/want.conf"),
        "{}",
        r.stderr
    );
    std::fs::write(&conf, "hz \"12\n").unwrap();
    let r = c.run(&["config", "apply", conf.to_str().unwrap(), "--yes"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("line 1"), "{}", r.stderr);

    // Rolling change, one node at a time: a master stops answering during the settle time
    // after the first batch; the health check sees it and everything changed goes back.
    let before = c.all_config();
    let victim = ports[2];
    let pid = c.lab.pid(victim);
    let child = {
        let mut cmd = c.lab.cmd(&[
            "config",
            "set",
            "hz",
            "40",
            "--rolling",
            "--settle",
            "3s",
            "--timeout",
            "1s",
            "--yes",
            "--json",
        ]);
        cmd.env("RCOPS_STATE_DIR", c.state.path());
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let stop = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
    };
    assert!(stop("-STOP").success());
    let out = child.wait_with_output();
    assert!(stop("-CONT").success());
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["result"]["outcome"], "rolled_back", "{v:#}");
    assert!(!v["result"]["regression"].as_array().unwrap().is_empty());
    assert_eq!(c.all_config(), before, "rolling change left nodes changed");
}

#[test]
fn advise_finds_planted_problems_and_apply_fixes_them() {
    // A lab has no maxmemory and neither AOF nor RDB: both planted by default.
    let c = ConfigLab::start(LabSpec {
        replicas: 0,
        ..Default::default()
    });
    c.lab
        .redis_cli(c.lab.port, &["CONFIG", "SET", "tcp-keepalive", "0"]);
    let r = c.run(&["advise", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = r.json();
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    for want in ["maxmemory_unset", "no_persistence", "tcp_keepalive_off"] {
        assert!(codes.contains(&want), "{want} missing from {codes:?}");
    }
    let keepalive: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "tcp_keepalive_off")
        .collect();
    assert_eq!(keepalive.len(), 1, "only the planted node");
    assert!(v["findings"][0]["evidence"].as_str().unwrap().len() > 5);

    let r = c.run(&["advise", "--apply"]);
    assert_eq!(r.code, 64, "plan only without --yes");
    let r = c.run(&["advise", "--apply", "--yes"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    for p in c.ports() {
        assert_ne!(c.get(p, "maxmemory"), "0");
        assert_eq!(c.get(p, "appendonly"), "yes");
        assert_eq!(c.get(p, "tcp-keepalive"), "300");
    }
    let r = c.run(&["advise", "--json"]);
    let codes: Vec<String> = r.json()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !codes.iter().any(
            |c| ["maxmemory_unset", "no_persistence", "tcp_keepalive_off"].contains(&c.as_str())
        ),
        "{codes:?}"
    );
}

#[test]
fn a_node_without_a_config_file_is_reported_not_failed() {
    let c = ConfigLab::start(LabSpec {
        replicas: 0,
        ..Default::default()
    });
    // Restart the last master with its settings on the command line and no file.
    let port = c.lab.port + 2;
    let dir = c.lab.path().join(port.to_string());
    let conf = std::fs::read_to_string(dir.join("redis.conf")).unwrap();
    let mut args: Vec<String> = Vec::new();
    for line in conf.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        args.push(format!("--{k}"));
        args.extend(
            v.split_whitespace()
                .map(|w| w.trim_matches('"').to_string()),
        );
    }
    c.lab.kill_node(port);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Killed on drop, also when an assertion fails: `lab down` no longer knows its pid.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Reaped(
        Command::new("redis-server")
            .args(&args)
            .current_dir(&dir)
            .spawn()
            .unwrap(),
    );
    c.lab
        .check_until(std::time::Duration::from_secs(30), |_, r| {
            r["findings"]
                .as_array()
                .is_some_and(|f| f.iter().all(|f| f["code"] != "node_unreachable"))
                && r["slots_covered"] == 16384
        });
    let r = c.run(&["config", "set", "hz", "13", "--yes", "--json"]);
    assert_eq!(
        r.code, 0,
        "reported, not a failure: {}\n{}",
        r.stderr, r.stdout
    );
    assert_eq!(c.get(port, "hz"), "13", "applied in memory");
    let nodes = r.json()["result"]["nodes"].clone();
    for n in nodes.as_array().unwrap() {
        let want = if n["addr"] == format!("127.0.0.1:{port}").as_str() {
            "no_config_file"
        } else {
            "rewritten"
        };
        assert_eq!(n["status"], "applied", "{n}");
        assert_eq!(n["rewrite"]["status"], want, "{n}");
    }
}

#[test]
fn ctrl_c_during_a_rolling_change_puts_back_what_changed() {
    let c = ConfigLab::start(LabSpec::default());
    let ports = c.ports();
    let before = c.get(ports[0], "maxmemory-samples");
    let mut cmd = c.lab.cmd(&[
        "config",
        "set",
        "maxmemory-samples",
        "9",
        "--rolling",
        "--settle",
        "2s",
        "--yes",
        "--json",
    ]);
    cmd.env("RCOPS_STATE_DIR", c.state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Two nodes changed by now (one per batch, 2 s apart), four still to go.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let r = finish(child.wait_with_output().unwrap());
    assert_eq!(r.code, 130, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["result"]["interrupted"], true, "{v}");
    assert_eq!(v["result"]["outcome"], "rolled_back", "{v}");
    let statuses: Vec<&str> = ports.iter().map(|&p| status_of(&v, p)).collect();
    assert!(statuses.contains(&"rolled_back"), "{statuses:?}");
    assert!(statuses.contains(&"not_attempted"), "{statuses:?}");
    for &p in &ports {
        assert_eq!(c.get(p, "maxmemory-samples"), before, "port {p}");
    }
}
