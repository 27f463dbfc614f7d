//! Slow logs on a lab of their own (the test changes configuration and clears logs).

use crate::common::*;

#[test]
fn slowlog_merges_nodes_redacts_secrets_and_resets_only_with_yes() {
    let lab = Lab::start(LabSpec {
        replicas: 0,
        ..Default::default()
    });
    let ports: Vec<u16> = (lab.port..lab.port + 3).collect();
    for &p in &ports {
        assert_eq!(
            lab.redis_cli(p, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]),
            "OK"
        );
    }
    // A secret that must not surface, and one clearly slow script on the last node.
    lab.redis_cli(ports[1], &["CONFIG", "SET", "masterauth", "hunter2-secret"]);
    lab.redis_cli(
        ports[2],
        &[
            "EVAL",
            "local i=0 while i<3000000 do i=i+1 end return i",
            "0",
        ],
    );

    let r = lab.run(&["slowlog", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !r.stdout.contains("hunter2-secret"),
        "secret leaked:\n{}",
        r.stdout
    );
    let v = r.json();
    let entries = v["entries"].as_array().unwrap();
    let nodes: std::collections::BTreeSet<&str> = entries
        .iter()
        .map(|e| e["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "entries from every node");
    let times: Vec<u64> = entries
        .iter()
        .map(|e| e["time_unix"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");

    let r = lab.run(&["slowlog", "--json", "--top", "1"]);
    let top = r.json()["entries"][0].clone();
    assert_eq!(top["command"][0], "EVAL");
    assert_eq!(top["node"], format!("127.0.0.1:{}", ports[2]).as_str());
    assert!(top["duration_us"].as_u64().unwrap() > 1000);

    // Without --yes nothing is cleared.
    let r = lab.run(&["slowlog", "--reset"]);
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(r.stderr.contains("pass --yes"));
    assert!(
        lab.redis_cli(ports[2], &["SLOWLOG", "LEN"])
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let r = lab.run(&["slowlog", "--reset", "--yes", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["reset"].as_array().unwrap().len(), 3);
    for &p in &ports {
        assert_eq!(
            lab.redis_cli(p, &["CONFIG", "SET", "slowlog-log-slower-than", "10000"]),
            "OK"
        );
    }
    let r = lab.run(&["slowlog", "--json", "--since", "1h"]);
    let left = r.json()["entries"].as_array().unwrap().len();
    // Only the CONFIG SET that restored the threshold may have been logged since the reset.
    assert!(left <= 3, "{left} entries after reset");
}

/// `GET path` over plain HTTP/1.0; returns (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect exporter");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Values of `name{…node="addr"…}` samples, by node.
fn samples(body: &str, name: &str) -> std::collections::BTreeMap<String, f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let node = l.split("node=\"").nth(1)?.split('"').next()?.to_string();
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((node, v))
        })
        .collect()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn exporter_scrapes_every_node_and_reports_a_dead_one_in_time() {
    let lab = Lab::start(LabSpec::default());
    let listen = format!("127.0.0.1:{}", free_port_block());
    let _exporter = Child(
        lab.cmd(&["exporter", "--listen", &listen, "--timeout", "1s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start exporter"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "exporter did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, body) = http_get(&listen, "/health");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body.trim(), "ok");

    let (status, body) = http_get(&listen, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text");
    let up = samples(&body, "redis_up");
    assert_eq!(up.len(), 6, "{up:?}");
    assert!(up.values().all(|&v| v == 1.0));
    assert!(body.contains("rcops_cluster_slots_covered 16384"));
    assert!(body.contains("rcops_scrape_duration_seconds "));
    for name in [
        "redis_memory_used_bytes",
        "redis_connected_clients",
        "redis_cluster_state",
        "redis_keyspace_hits_total",
    ] {
        assert_eq!(samples(&body, name).len(), 6, "{name}");
    }
    let masters = |body: &str| -> f64 {
        body.lines()
            .filter(|l| {
                l.starts_with("redis_commands_processed_total{") && l.contains("role=\"master\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = masters(&body);

    // Writes show up in the command counters: at least one command per key.
    let r = run(&mut rcops(&[
        "lab",
        "load",
        "--keys",
        "2000",
        "--dir",
        &lab.path().display().to_string(),
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (_, body) = http_get(&listen, "/metrics");
    assert!(
        masters(&body) >= before + 2000.0,
        "{} -> {}",
        before,
        masters(&body)
    );
    let keys: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("redis_db_keys{")
                && l.contains("role=\"master\"")
                && l.contains("db=\"db0\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(keys, 2000.0);

    // Every series the shipped Grafana dashboard queries exists (now that there are keys).
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/rcops-cluster.json"
    ))
    .unwrap();
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| (w.starts_with("redis_") || w.starts_with("rcops_")) && w.len() > 6)
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        assert!(
            body.lines().any(|l| l.starts_with(name)),
            "dashboard queries {name}, exporter lacks it"
        );
    }

    // A dead node is redis_up 0, and the scrape still answers well within its budget.
    let victim = lab.port + 5;
    lab.kill_node(victim);
    let started = std::time::Instant::now();
    let (status, body) = http_get(&listen, "/metrics");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "scrape took {:?}",
        started.elapsed()
    );
    assert!(status.contains("200"), "{status}");
    let up = samples(&body, "redis_up");
    assert_eq!(up.get(&format!("127.0.0.1:{victim}")), Some(&0.0), "{up:?}");
    assert_eq!(up.values().filter(|&&v| v == 1.0).count(), 5);
    assert!(body.contains("rcops_cluster_nodes_unreachable 1"));
    let errors: f64 = body
        .lines()
        .find(|l| l.starts_with("rcops_scrape_errors_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(errors >= 1.0);
}
