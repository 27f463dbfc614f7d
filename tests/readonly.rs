//! Everything that only reads a cluster, against one shared lab with sample data: check,
//! nodes, slots, info, lab status/load, and output contracts (JSON schemas, exit codes).

use crate::common::*;

#[test]
fn read_only_commands_on_a_shared_lab() {
    let lab = Lab::start(LabSpec::default());

    // Sample data of every type lands on the masters that own the keys.
    let r = lab.load(3000);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let load = r.json();
    assert_eq!(load["keys"], 3000);
    assert_eq!(load["per_type"]["stream"], 500);
    assert_eq!(load["per_master"].as_object().unwrap().len(), 3);
    assert_eq!(
        lab.redis_cli(lab.port, &["-c", "TYPE", "lab:hash:00000001"]),
        "hash"
    );
    assert_eq!(
        lab.redis_cli(lab.port, &["-c", "TYPE", "lab:stream:00000005"]),
        "stream"
    );
    let ttl: i64 = lab
        .redis_cli(lab.port, &["-c", "TTL", "lab:set:00000003"])
        .parse()
        .unwrap();
    assert!(ttl > 86_000, "sample key 3 carries a TTL, got {ttl}");

    healthy_check(&lab);
    nodes_tree(&lab);
    slot_distribution(&lab);
    info_summary(&lab);
    lab_status(&lab);
    seeds_that_are_down_are_skipped(&lab);
    human_output_is_a_table(&lab);
    metrics_snapshot_and_watch(&lab);
    latency_probes_leave_no_keys(&lab);
    bigkeys_and_memkeys_find_a_planted_hash(&lab);
    bench_drives_every_master_and_cleans_up(&lab);
    // Last: it freezes a master for a moment (well under the cluster's node timeout).
    bench_fails_in_time_when_a_master_freezes(&lab);
}

fn master_commands(lab: &Lab) -> u64 {
    let m = lab.run(&["metrics", "--json"]).json();
    m["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["role"] == "master")
        .map(|n| n["total_commands"].as_u64().unwrap())
        .sum()
}

fn bench_keys_left(lab: &Lab) -> usize {
    (lab.port..lab.port + 3)
        .map(|p| {
            lab.redis_cli(p, &["--scan", "--pattern", "__rcops:bench:*"])
                .lines()
                .count()
        })
        .sum()
}

fn bench_drives_every_master_and_cleans_up(lab: &Lab) {
    let before = master_commands(lab);
    let r = lab.run(&[
        "bench",
        "--json",
        "-n",
        "20000",
        "--clients",
        "8",
        "-P",
        "16",
        "--keyspace",
        "1000",
        // Two client threads (each its own event loop) share the clients and the count.
        "--threads",
        "2",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["total"], 20000);
    assert_eq!(v["threads"], 2);
    assert_eq!(v["errors"], 0);
    let (sets, gets) = (
        v["commands"]["SET"]["count"].as_u64().unwrap(),
        v["commands"]["GET"]["count"].as_u64().unwrap(),
    );
    assert_eq!(sets + gets, 20000);
    // Whole batches of one command each: at most one batch per client off the mix.
    assert!(
        sets.abs_diff(gets) <= 16 * 8,
        "1:1 ratio: {sets} SET vs {gets} GET"
    );
    // Each command's latency is its own batches' (a mixed pipeline made them equal).
    let stat = |c: &str| {
        ["mean_ms", "p50_ms", "p99_ms", "max_ms"].map(|q| v["commands"][c][q].as_f64().unwrap())
    };
    assert_ne!(stat("SET"), stat("GET"), "{v:#}");
    let per_node = v["per_node"].as_object().unwrap();
    assert_eq!(per_node.len(), 3, "every master gets clients");
    assert_eq!(
        per_node.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        20000
    );
    let p = &v["commands"]["GET"];
    assert!(p["p50_ms"].as_f64().unwrap() <= p["p99_ms"].as_f64().unwrap());
    assert!(p["mean_ms"].as_f64().unwrap() > 0.0);
    assert!(p.get("service").is_none(), "unpaced: one latency only");
    assert!(v["keys_deleted"].as_u64().unwrap() > 500);
    assert_eq!(bench_keys_left(lab), 0);
    // The servers saw at least every request.
    assert!(master_commands(lab) >= before + 20000);

    // --keep leaves the keys; a later run over the same keyspace removes them.
    let r = lab.run(&[
        "bench",
        "--json",
        "-n",
        "2000",
        "--keyspace",
        "100",
        "--ratio",
        "1:0",
        "--keep",
        "--threads",
        "1",
    ]);
    assert_eq!(r.json()["keys_deleted"], 0);
    assert_eq!(bench_keys_left(lab), 100);
    let r = lab.run(&[
        "bench",
        "--json",
        "-n",
        "10",
        "--keyspace",
        "100",
        "--ratio",
        "1:0",
    ]);
    assert_eq!(r.json()["keys_deleted"], 100);
    assert_eq!(bench_keys_left(lab), 0);

    // A rate so low that the clients' next slots lie beyond --duration: the run ends on
    // time instead of waiting for them. The rate is spread evenly over the clients (4 at
    // 1/s take turns, one batch a second between them), so a 1 s run sends exactly one.
    let started = std::time::Instant::now();
    let r = lab.run(&[
        "bench",
        "--json",
        "--duration",
        "1s",
        "--rate",
        "1",
        "--clients",
        "4",
        "--keyspace",
        "100",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "a 1 s run took {:?}",
        started.elapsed()
    );
    assert_eq!(r.json()["total"], 1, "one slot a second, cluster-wide");

    // Ctrl-C while every client waits for a slot 40 s away: stops at once, cleans up, 130.
    let child = lab
        .cmd(&[
            "bench",
            "--duration",
            "60s",
            "--rate",
            "1",
            "--clients",
            "40",
            "--keyspace",
            "100",
            "--ratio",
            "1:0",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, took) = interrupt(child);
    assert_eq!(code, Some(130));
    assert!(
        took < std::time::Duration::from_secs(3),
        "Ctrl-C took {took:?}"
    );
    assert_eq!(bench_keys_left(lab), 0);

    // A rate cap holds: with the clients on three threads of their own, and when the rate
    // comes in ten 100 ms ticks of 200 requests each.
    for extra in [
        &["--threads", "3"][..],
        &["--tick", "100ms", "--ratio", "0:1"][..],
    ] {
        let mut args = vec![
            "bench",
            "--json",
            "--duration",
            "1s",
            "--rate",
            "2000",
            "--clients",
            "4",
        ];
        args.extend_from_slice(extra);
        let r = lab.run(&args);
        assert_eq!(r.code, 0, "{extra:?}: {}", r.stderr);
        let total = r.json()["total"].as_u64().unwrap();
        assert!(
            (1000..=2600).contains(&total),
            "2000/s for 1s {extra:?} gave {total}"
        );
        // Paced, each command also reports latency from the real send, which cannot exceed
        // the latency from the intended send of the same requests.
        for (cmd, c) in r.json()["commands"].as_object().unwrap() {
            let service = &c["service"];
            for q in ["mean_ms", "p50_ms", "p99_ms", "max_ms"] {
                let (sent, intended) = (service[q].as_f64().unwrap(), c[q].as_f64().unwrap());
                assert!(
                    sent > 0.0 && sent <= intended,
                    "{extra:?} {cmd} {q}: {sent} vs {intended}"
                );
            }
        }
        // In 100 ms ticks each tick's 200 requests queue on four connections, 50 round trips
        // each: the median request waited for ~25 others, so its latency from the tick's start
        // (intended) is well above that from its real send.
        if extra.contains(&"--tick") {
            let get = &r.json()["commands"]["GET"];
            let (intended, sent) = (
                get["p50_ms"].as_f64().unwrap(),
                get["service"]["p50_ms"].as_f64().unwrap(),
            );
            assert!(
                intended > 3.0 * sent,
                "intended p50 {intended} vs sent {sent}"
            );
        }
    }

    for bad in [
        &["bench", "--tick", "1ms"][..],
        &["bench", "--rate", "10", "--tick", "0ms"][..],
        &["bench", "--clients", "0"][..],
        &["bench", "--ratio", "1:x"][..],
        &["bench", "--rate", "-5"][..],
        &["bench", "--threads", "0"][..],
        &["bench", "--duration", "0s"][..],
        &["bench", "--duration", "1s", "-n", "5"][..],
    ] {
        assert_eq!(lab.run(bad).code, 64, "{bad:?}");
    }
}

/// A master that stops answering mid-run (SIGSTOP): its clients fail within --timeout
/// instead of hanging, the others run on, every key is removed once it answers again, and
/// the errors name the node.
fn bench_fails_in_time_when_a_master_freezes(lab: &Lab) {
    let victim = lab.port + 1;
    let pid = lab.pid(victim).to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    let child = lab
        .cmd(&[
            "bench",
            "--json",
            "--duration",
            "3s",
            "--rate",
            "600",
            "--clients",
            "6",
            "--timeout",
            "500ms",
            "--ratio",
            "1:0",
            "--keyspace",
            "300",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    signal("-STOP");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    signal("-CONT");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The frozen node's requests are errors of the run (1: findings), not a hang.
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["errors"].as_u64().unwrap() > 0, "{v}");
    let want = format!("127.0.0.1:{victim}: no answer within");
    assert!(
        v["error_samples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().starts_with(&want)),
        "{v}"
    );
    assert!(
        v["total"].as_u64().unwrap() > 600,
        "the other masters' clients ran on: {v}"
    );
    assert_eq!(bench_keys_left(lab), 0);
}

fn bigkeys_and_memkeys_find_a_planted_hash(lab: &Lab) {
    let planted = "planted:big:hash";
    let script = "for i=1,5000 do redis.call('HSET', KEYS[1], 'field'..i, i) end return 1";
    assert_eq!(
        lab.redis_cli(lab.port, &["-c", "EVAL", script, "1", planted]),
        "1"
    );
    let r = lab.run(&["bigkeys", "--json", "--top", "3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["shards"], 3);
    assert_eq!(v["keys_scanned"], 3001);
    assert_eq!(v["biggest"]["hash"][0]["key"], planted);
    assert_eq!(v["biggest"]["hash"][0]["elements"], 5000);
    assert_eq!(
        v["biggest"]["list"][0]["elements"], 500,
        "sample data has big lists"
    );
    assert_eq!(v["by_type"]["stream"]["keys"], 500);
    let prefix = v["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["prefix"] == "planted:big")
        .unwrap()
        .clone();
    assert_eq!(prefix["keys"], 1);

    // memkeys ranks by MEMORY USAGE, read from replicas, paced by --rate.
    let started = std::time::Instant::now();
    let r = lab.run(&[
        "memkeys",
        "--json",
        "--from-replicas",
        "--rate",
        "2000",
        "--count",
        "100",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    let top = &v["biggest"]["hash"][0];
    assert_eq!(top["key"], planted);
    assert!(top["memory_bytes"].as_u64().unwrap() > 50_000, "{top}");
    let replicas: Vec<String> = (3..6)
        .map(|i| format!("127.0.0.1:{}", lab.port + i))
        .collect();
    assert!(
        replicas.contains(&top["node"].as_str().unwrap().to_string()),
        "read from a replica: {top}"
    );
    // ~1000 keys per shard at 2000 keys/s cannot finish in much under half a second.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    let r = lab.run(&["bigkeys", "--json", "--match", "planted:*"]);
    assert_eq!(r.json()["keys_scanned"], 1);
    lab.redis_cli(lab.port, &["-c", "DEL", planted]);

    // A binary key name reaches the terminal escaped, as redis-cli shows it.
    let binary: &[u8] = b"planted:bin\x00\xff\n";
    let slot = rcops_formats::slot::key_slot(binary);
    let owner = rcops_formats::slot::even_split(3)
        .iter()
        .position(|r| r.start <= slot && slot <= r.end)
        .unwrap() as u16;
    let mut c = crate::backup::conn(lab.port + owner);
    let _: () = redis::cmd("SADD")
        .arg(binary)
        .arg("a")
        .query(&mut c)
        .unwrap();
    let r = lab.run(&["bigkeys", "--match", "planted:bin*"]);
    let _: () = redis::cmd("DEL").arg(binary).query(&mut c).unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(r#""planted:bin\x00\xff\n""#),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains('\0'), "{}", r.stdout);
}

fn probe_keys_left(lab: &Lab) -> usize {
    (lab.port..lab.port + 6)
        .map(|p| {
            lab.redis_cli(p, &["--scan", "--pattern", "__rcops*"])
                .lines()
                .count()
        })
        .sum()
}

fn latency_probes_leave_no_keys(lab: &Lab) {
    let r = lab.run(&["latency", "--json", "--duration", "1s"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    for n in nodes {
        assert!(n["samples"].as_u64().unwrap() > 50, "{n}");
        assert_eq!(n["errors"], 0, "{n}");
        let (p50, p99, max) = (
            n["p50_ms"].as_f64().unwrap(),
            n["p99_ms"].as_f64().unwrap(),
            n["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{n}");
    }
    assert_eq!(v["keys_left"], 0);
    assert_eq!(probe_keys_left(lab), 0);
    // One node only.
    let node = format!("127.0.0.1:{}", lab.port + 4);
    let r = lab.run(&["latency", "--json", "--duration", "300ms", "--node", &node]);
    assert_eq!(r.json()["nodes"].as_array().unwrap().len(), 1);

    // Ctrl-C: stops early, still cleans up, exits 130.
    let child = lab
        .cmd(&["latency", "--duration", "60s"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    // One probe key per master, plus its copy on the replica.
    assert_eq!(probe_keys_left(lab), 6, "probe keys exist while measuring");
    let (code, took) = interrupt(child);
    assert_eq!(code, Some(130));
    assert!(took < std::time::Duration::from_secs(5));
    assert_eq!(probe_keys_left(lab), 0);

    for bad in [
        &["latency", "--duration", "0s"][..],
        &["latency", "--node", "10.9.9.9:1"][..],
    ] {
        assert_eq!(lab.run(bad).code, 64, "{bad:?}");
    }
}

fn metrics_snapshot_and_watch(lab: &Lab) {
    let r = lab.run(&["metrics", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = r.json();
    assert_eq!(m["nodes"].as_array().unwrap().len(), 6);
    let c = &m["cluster"];
    assert_eq!((c["nodes"].as_u64(), c["up"].as_u64()), (Some(6), Some(6)));
    // Keys are counted once (masters), not once per copy.
    assert_eq!(c["keys"], 3000);
    assert_eq!(c["expires"], 300);
    let per_node: u64 = m["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["used_memory"].as_u64().unwrap())
        .sum();
    assert_eq!(c["used_memory"].as_u64().unwrap(), per_node);
    // Reads between two refreshes show up as a measured rate and as hits.
    let hits_before = c["hits"].as_u64().unwrap();
    for i in 0..50 {
        lab.redis_cli(
            lab.port,
            &["-c", "GET", &format!("lab:string:{:08}", (2 * i + 1) * 6)],
        );
    }
    let r = lab.run(&["metrics", "--json", "--watch", "500ms", "--count", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one JSON document per refresh");
    assert!(lines[0]["cluster"]["ops_per_sec_measured"].is_null());
    assert!(
        lines[1]["cluster"]["ops_per_sec_measured"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(lines[1]["cluster"]["hits"].as_u64().unwrap() >= hits_before + 50);
}

fn healthy_check(lab: &Lab) {
    let (code, report) = lab.check();
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["status"], "ok");
    assert_eq!(report["nodes"], 6);
    assert_eq!(report["masters"], 3);
    assert_eq!(report["slots_covered"], 16384);
    assert!(report["elapsed_ms"].is_u64());
    // On one host the anti-affinity rule reports a single note, not a warning per replica.
    assert_eq!(codes(&report), vec!["replica_same_host_as_master"]);
    assert_eq!(report["findings"][0]["severity"], "info");
}

fn nodes_tree(lab: &Lab) {
    let r = lab.run(&["nodes", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    let shards = v["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3);
    let mut total = 0;
    for s in shards {
        assert_eq!(s["master"]["role"], "master");
        assert!(s["master"]["reachable"].as_bool().unwrap());
        total += s["master"]["slots"].as_u64().unwrap();
        let replicas = s["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0]["role"], "replica");
        assert_eq!(replicas[0]["master_link"], "up");
        assert!(replicas[0]["repl_offset"].as_u64().unwrap() > 0);
        assert!(replicas[0]["lag_bytes"].is_u64());
    }
    assert_eq!(total, 16384);
    // First shard starts at slot 0, as redis-cli would assign it.
    assert_eq!(shards[0]["master"]["ranges"], "0-5460");
    assert_eq!(shards[0]["master"]["addr"], lab.seed());
}

fn slot_distribution(lab: &Lab) {
    let r = lab.run(&["slots", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["covered"], 16384);
    assert_eq!(v["uncovered"], "-");
    assert_eq!(v["total_keys"], 3000);
    let counts: Vec<u64> = v["masters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slots"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![5461, 5462, 5461]);
    for m in v["masters"].as_array().unwrap() {
        assert!(m["deviation_pct"].as_f64().unwrap().abs() < 0.1);
        assert!(
            m["keys"].as_u64().unwrap() > 800,
            "keys spread over masters: {m}"
        );
    }
}

fn info_summary(lab: &Lab) {
    let r = lab.run(&["info", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = r.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let master_keys: u64 = rows
        .iter()
        .filter(|n| n["role"] == "master")
        .map(|n| n["keys"].as_u64().unwrap())
        .sum();
    assert_eq!(master_keys, 3000);
    for n in rows {
        assert!(n["version"].as_str().unwrap().starts_with(char::is_numeric));
        assert!(n["used_memory"].as_u64().unwrap() > 0);
        assert!(n["error"].is_null());
        assert!(n.get("raw").is_none());
    }
    // One node, raw fields included.
    let node = format!("127.0.0.1:{}", lab.port + 1);
    let r = lab.run(&["info", "--json", "--raw", "--node", &node]);
    let rows = r.json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(
        rows[0]["raw"]["server"]["tcp_port"],
        (lab.port + 1).to_string()
    );
    // A raw section from every node.
    let r = lab.run(&["info", "--json", "--section", "memory"]);
    assert_eq!(r.code, 0);
    let v = r.json();
    assert_eq!(v["nodes"].as_object().unwrap().len(), 6);
    assert!(v["nodes"][&node]["used_memory_human"].is_string());
    // Unknown node filter is a usage error.
    let r = lab.run(&["info", "--node", "10.1.1.1:1"]);
    assert_eq!(r.code, 64, "{}", r.stderr);
}

fn lab_status(lab: &Lab) {
    let r = run(&mut rcops(&[
        "lab",
        "status",
        "--json",
        "--dir",
        &lab.path().display().to_string(),
    ]));
    assert_eq!(r.code, 0);
    let v = r.json();
    assert_eq!(v["running"], 6);
    assert_eq!(v["answering"], 6);
    let roles: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "master").count(), 3);
}

fn seeds_that_are_down_are_skipped(lab: &Lab) {
    let dead = free_port_block();
    let seeds = format!("127.0.0.1:{dead},{}", lab.seed());
    let r = run(rcops(&["check", "--json", "-c", &seeds]).env("NO_COLOR", "1"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The dead seed is not part of the cluster, so it is not a finding either.
    assert_eq!(r.json()["nodes"], 6);
}

fn human_output_is_a_table(lab: &Lab) {
    let r = lab.run(&["check"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout
            .starts_with("ok: 6 nodes, 3 masters, 16384/16384 slots covered"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains('\u{1b}'),
        "no colour when stdout is not a terminal"
    );
    let r = lab.run(&["nodes"]);
    assert!(r
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .starts_with(&["NODE", "ID", "ROLE"]));
    assert_eq!(r.stdout.matches("└─").count(), 3);
    let r = lab.run(&["slots"]);
    assert!(r.stdout.contains("covered: 16384/16384"));
    let r = lab.run(&["info"]);
    assert_eq!(r.stdout.lines().count(), 7, "{}", r.stdout);
}
