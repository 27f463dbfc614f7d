//! `rcops backup follow` against a real cluster: the archive is read back independently
//! (zstd + the segment record format), never through rcops.

use crate::backup::conn;
use crate::common::*;
use rcops_formats::segment::{next_record, Record};
use rcops_formats::slot::{even_split, key_slot};
use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn spawn_follow(lab: &Lab, state: &std::path::Path, age: &str) -> Child {
    spawn_follow_with(lab, state, &["--segment-age", age])
}

fn spawn_follow_with(lab: &Lab, state: &std::path::Path, args: &[&str]) -> Child {
    lab.cmd(&[&["backup", "follow", "--json"][..], args].concat())
        .env("RCOPS_STATE_DIR", state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn chain(state: &std::path::Path) -> Option<serde_json::Value> {
    let root = state.join("backups/chains");
    let dir = std::fs::read_dir(root).ok()?.flatten().next()?.path();
    serde_json::from_slice(&std::fs::read(dir.join("chain.json")).ok()?).ok()
}

/// A 3-master lab without replicas holding 300 keys, and a state folder (and its path).
fn loaded_lab() -> (Lab, tempfile::TempDir, String) {
    let src = Lab::start(LabSpec {
        replicas: 0,
        ..Default::default()
    });
    assert_eq!(src.load(300).code, 0);
    let state = tempfile::tempdir().unwrap();
    let st = state.path().display().to_string();
    (src, state, st)
}

/// Waits until the first chain's first base set is complete.
fn wait_based(state: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !chain(state).is_some_and(|c| based(&c)) {
        assert!(Instant::now() < deadline, "no base snapshots");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a chain's first base set is complete.
fn based(c: &serde_json::Value) -> bool {
    c["bases"][0]["shards"]
        .as_array()
        .is_some_and(|v| v.iter().all(|s| !s.is_null()))
}

/// Every record of a segment file.
fn records(path: &std::path::Path) -> Vec<Record> {
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::new(std::fs::File::open(path).unwrap())
        .unwrap()
        .read_to_end(&mut raw)
        .unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((r, n)) = next_record(&raw[at..]).unwrap() {
        out.push(r);
        at += n;
    }
    assert_eq!(
        at,
        raw.len(),
        "{}: bytes after the last record",
        path.display()
    );
    out
}

/// Writes `SET w:<i> <i>` for `range`, each on its master.
fn write(lab: &Lab, range: std::ops::Range<u32>) {
    write_to(&[lab.port, lab.port + 1, lab.port + 2], range);
}

/// The same, to the masters on `ports` (one per shard, in slot order).
fn write_to(ports: &[u16], range: std::ops::Range<u32>) {
    let split = even_split(3);
    let mut conns: Vec<redis::Connection> = ports.iter().map(|&p| conn(p)).collect();
    for i in range {
        let k = format!("w:{i}");
        let s = key_slot(k.as_bytes());
        let m = split
            .iter()
            .position(|r| r.start <= s && s <= r.end)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(i)
            .query(&mut conns[m])
            .unwrap();
    }
}

#[test]
fn follow_archives_every_write_once_across_a_kill_9() {
    let lab = Lab::start(LabSpec {
        replicas: 0,
        ..Default::default()
    });
    assert_eq!(lab.load(500).code, 0);
    let state = tempfile::tempdir().unwrap();
    // One segment open all along: the kill leaves it open.
    let mut child = spawn_follow(&lab, state.path(), "10m");
    wait_based(state.path());
    write(&lab, 0..300);
    std::thread::sleep(Duration::from_millis(1500));
    write(&lab, 300..400);
    // Killed: what came after its last flush is lost from the open segment, and read again
    // from the source by the next run.
    child.kill().unwrap();
    let _ = child.wait();
    let killed = now_ms();
    write(&lab, 400..600);
    std::thread::sleep(Duration::from_millis(1500));
    let child = spawn_follow(&lab, state.path(), "1s");
    std::thread::sleep(Duration::from_millis(2500));
    write(&lab, 600..900);
    std::thread::sleep(Duration::from_millis(2000));
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let r = finish(child.wait_with_output().unwrap());
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let report = r.json();
    assert_eq!(report["continued"], true, "{report:#}");
    // What the killed run had flushed (each second) was closed as a segment and kept.
    let recovered: u64 = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["recovered_commands"].as_u64().unwrap())
        .sum();
    assert!(recovered >= 300, "{report:#}");

    assert_eq!(
        archived_writes(state.path()),
        (0..900).collect::<Vec<u32>>()
    );
    // No gap: every write is there. But the writes of the downtime came in the catch-up,
    // dated then: that window is undated, and a cut inside it is refused.
    let c = chain(state.path()).unwrap();
    assert_eq!(c["gaps"].as_array().unwrap().len(), 0, "{c:#}");
    let undated = c["undated"].as_array().unwrap();
    assert_eq!(undated.len(), 3, "{c:#}");
    for w in undated {
        let (from, to) = (
            w["from_unix_ms"].as_u64().unwrap(),
            w["to_unix_ms"].as_u64().unwrap(),
        );
        assert!(from <= killed && to >= killed + 1500, "{w:#}");
    }
    let st = state.path().display().to_string();
    let r = lab.run(&[
        "restore",
        "latest",
        "--until",
        &at(killed + 700),
        "--state-dir",
        &st,
        "--dry-run",
    ]);
    assert_eq!(r.code, 64, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("without times"), "{}", r.stderr);
}

#[test]
fn follow_continues_through_a_source_failover_without_a_gap() {
    let lab = Lab::start(LabSpec {
        node_timeout_ms: 2000,
        ..Default::default()
    });
    let state = tempfile::tempdir().unwrap();
    // From the replicas (the default): the one of the first shard is promoted mid-run.
    let child = spawn_follow(&lab, state.path(), "1s");
    wait_based(state.path());
    write(&lab, 0..300);
    let (master, replica) = crate::backup::pairs(&lab)
        .into_iter()
        .find(|&(m, _)| m == lab.port)
        .unwrap();
    let _ = lab.redis_cli(replica, &["CLUSTER", "FAILOVER"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.redis_cli(replica, &["ROLE"]).starts_with("master") {
        assert!(Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    write_to(&[replica, master + 1, master + 2], 300..600);
    std::thread::sleep(Duration::from_millis(3000));
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let r = finish(child.wait_with_output().unwrap());
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let report = r.json();
    let reconnects: u64 = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reconnects"].as_u64().unwrap())
        .sum();
    assert!(reconnects >= 1, "the failover went unnoticed: {report:#}");
    assert_eq!(
        archived_writes(state.path()),
        (0..600).collect::<Vec<u32>>()
    );
}

/// Mixed writes (strings, counters, hashes, lists, deletions, expiries, a transaction in
/// one slot) into the lab, tagged `round`.
fn mixed(lab: &Lab, round: u32, n: u32) {
    let split = even_split(3);
    let mut conns: Vec<redis::Connection> = (0..3).map(|i| conn(lab.port + i)).collect();
    let on = |k: &str| {
        let s = key_slot(k.as_bytes());
        split
            .iter()
            .position(|r| r.start <= s && s <= r.end)
            .unwrap()
    };
    for i in 0..n {
        let k = format!("s:{}", i % 50);
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(format!("{round}-{i}"))
            .query(&mut conns[on(&k)])
            .unwrap();
        let c = format!("n:{}", i % 7);
        let _: i64 = redis::cmd("INCR")
            .arg(&c)
            .query(&mut conns[on(&c)])
            .unwrap();
        let h = format!("h:{}", i % 5);
        let _: i64 = redis::cmd("HSET")
            .arg(&h)
            .arg(format!("f{i}"))
            .arg(round)
            .query(&mut conns[on(&h)])
            .unwrap();
        let l = format!("l:{}", i % 3);
        let _: i64 = redis::cmd("RPUSH")
            .arg(&l)
            .arg(i)
            .query(&mut conns[on(&l)])
            .unwrap();
        if i % 10 == 0 {
            let d = format!("s:{}", (i + 25) % 50);
            let _: i64 = redis::cmd("DEL").arg(&d).query(&mut conns[on(&d)]).unwrap();
            let _: i64 = redis::cmd("EXPIRE")
                .arg(&h)
                .arg(3600 + round)
                .query(&mut conns[on(&h)])
                .unwrap();
        }
        if i % 25 == 0 {
            let (a, b) = ("{t}:a", "{t}:b");
            let mut p = redis::pipe();
            p.atomic().cmd("INCR").arg(a).cmd("SET").arg(b).arg(round);
            let _: redis::Value = p.query(&mut conns[on(a)]).unwrap();
        }
    }
}

fn masters(lab: &Lab, n: u16) -> Vec<u16> {
    (lab.port..lab.port + n).collect()
}

fn at(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn restore_until_a_time_gives_the_cluster_as_it_was_then() {
    let (src, state, st) = loaded_lab();
    let child = spawn_follow(&src, state.path(), "1s");
    wait_based(state.path());
    // Instants with the writes paused around them (the archive stamps every 100 ms): the
    // state each had, read from the source.
    let mut instants = Vec::new();
    for round in 0..3 {
        mixed(&src, round, 400);
        std::thread::sleep(Duration::from_millis(400));
        instants.push((now_ms(), crate::backup::snapshot(&masters(&src, 3))));
        std::thread::sleep(Duration::from_millis(700));
    }
    mixed(&src, 9, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let r = finish(child.wait_with_output().unwrap());
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);

    // Into two masters: each instant, key by key.
    let dst = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let restore = |until: &str, yes: bool| {
        let mut args = vec![
            "restore",
            "latest",
            "--until",
            until,
            "--state-dir",
            &st,
            "--json",
        ];
        if yes {
            args.push("--yes");
        }
        dst.run(&args)
    };
    for (i, (t, want)) in instants.iter().enumerate() {
        for p in masters(&dst, 2) {
            dst.redis_cli(p, &["FLUSHALL"]);
        }
        let r = restore(&at(*t), false);
        assert_eq!(r.code, 64, "{}\n{}", r.stdout, r.stderr);
        let r = restore(&at(*t), true);
        assert_eq!(r.code, 0, "instant {i}: {}\n{}", r.stdout, r.stderr);
        let v = r.json();
        assert!(v["plan"]["skew_ms"].as_u64().unwrap() < 1000, "{v:#}");
        crate::backup::assert_same(want, &crate::backup::snapshot(&masters(&dst, 2)));
    }
    // Interrupted mid-replay (paced by --rate) and resumed: exact, the INCR counters too
    // (nothing sent twice). A killed replay is not resumed: what it wrote is unknown.
    let (t, want) = &instants[2];
    let replay_started = || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ck = std::fs::read_dir(state.path().join("restore"))
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with("pitr-"));
            if let Some(e) = ck {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap_or_default();
                if v["base_done"] == true {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the replay never began");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for (signal, code) in [("-INT", 130), ("-KILL", -1)] {
        for p in masters(&dst, 2) {
            dst.redis_cli(p, &["FLUSHALL"]);
        }
        let _ = std::fs::remove_dir_all(state.path().join("restore"));
        let until = at(*t);
        let child = dst
            .cmd(&[
                "restore",
                "latest",
                "--until",
                &until,
                "--state-dir",
                &st,
                "--yes",
                "--rate",
                "1500",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        replay_started();
        std::thread::sleep(Duration::from_millis(800));
        let _ = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code().unwrap_or(-1), code, "{signal}: {out:?}");
        let r = dst.run(&[
            "restore",
            "latest",
            "--until",
            &until,
            "--state-dir",
            &st,
            "--yes",
            "--resume",
        ]);
        if code == 130 {
            assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
            assert!(
                r.stderr.contains("restored by the run resumed"),
                "{}",
                r.stderr
            );
            crate::backup::assert_same(want, &crate::backup::snapshot(&masters(&dst, 2)));
        } else {
            assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
            assert!(r.stderr.contains("did not stop cleanly"), "{}", r.stderr);
        }
    }

    // Times the chain does not cover, and times that are no times: refused, nothing written.
    for p in masters(&dst, 2) {
        dst.redis_cli(p, &["FLUSHALL"]);
    }
    let first = instants[0].0;
    for (until, says) in [
        (at(first - 60_000), "before chain"),
        (at(now_ms() + 60_000), "after the last stamp"),
        ("2026-12-02 09:59:30".to_string(), "expected RFC 3339"),
    ] {
        let r = restore(&until, true);
        assert_eq!(r.code, 64, "{until}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(says), "{until}: {}", r.stderr);
    }
    let keys: u64 = masters(&dst, 2)
        .iter()
        .map(|&p| redis::cmd("DBSIZE").query::<u64>(&mut conn(p)).unwrap())
        .sum();
    assert_eq!(keys, 0);

    // The chain verifies; then one flipped byte in a segment: verify names it, and a
    // restore stops that shard before it (exit 2), never past it.
    let c = chain(state.path()).unwrap();
    let id = c["id"].as_str().unwrap();
    let r = run(&mut rcops(&[
        "backup",
        "verify",
        id,
        "--state-dir",
        &st,
        "--json",
    ]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let seg = c["shards"][0]["segments"][1]["file"].as_str().unwrap();
    let dir = state.path().join("backups/chains").join(id);
    let mut bytes = std::fs::read(dir.join(seg)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(dir.join(seg), bytes).unwrap();
    let r = run(&mut rcops(&["backup", "verify", id, "--state-dir", &st]));
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(seg) && r.stdout.contains("checksum"),
        "{}",
        r.stdout
    );
    let r = restore(&at(instants[2].0), true);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(seg) && r.stderr.contains("damaged"),
        "{}",
        r.stderr
    );
    let keys: u64 = masters(&dst, 2)
        .iter()
        .map(|&p| redis::cmd("DBSIZE").query::<u64>(&mut conn(p)).unwrap())
        .sum();
    assert_eq!(keys, 0, "refused before writing");
}

/// The `w:<i>` values the archive holds, checked on the way: per shard the base, then
/// segments end to end (each starting where the one before ended), offsets going forward,
/// every write once and in order; no gap recorded.
fn archived_writes(state: &std::path::Path) -> Vec<u32> {
    let c = chain(state).unwrap();
    let dir = std::fs::read_dir(state.join("backups/chains"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mut seen = Vec::new();
    for (i, s) in c["shards"].as_array().unwrap().iter().enumerate() {
        let mut at = c["bases"][0]["shards"][i]["manifest"]["offset"]
            .as_u64()
            .unwrap();
        let mut last_stamp = 0;
        let mut mine = Vec::new();
        for seg in s["segments"].as_array().unwrap() {
            assert_eq!(seg["start_offset"].as_u64().unwrap(), at, "{seg}");
            let mut end = at;
            for r in records(&dir.join(seg["file"].as_str().unwrap())) {
                match r {
                    Record::Command { end: e, args } => {
                        assert!(e > end, "offsets go forward: {e} after {end}");
                        end = e;
                        if args[0].eq_ignore_ascii_case(b"SET") && args[1].starts_with(b"w:") {
                            let i: u32 = String::from_utf8_lossy(&args[2]).parse().unwrap();
                            mine.push(i);
                        }
                    }
                    Record::Stamp { offset, unix_ms } => {
                        assert!(offset >= end && unix_ms >= last_stamp);
                        end = offset;
                        last_stamp = unix_ms;
                    }
                }
            }
            assert_eq!(seg["end_offset"].as_u64().unwrap(), end, "{seg}");
            at = end;
        }
        let mut sorted = mine.clone();
        sorted.sort_unstable();
        assert_eq!(mine, sorted, "{}: writes out of order", s["slots"]);
        seen.extend(mine);
    }
    seen.sort_unstable();
    let dups = seen.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dups, 0, "writes archived twice");
    assert!(c["gaps"].as_array().unwrap().is_empty(), "{c:#}");
    seen
}

#[test]
fn a_backlog_that_moved_on_starts_a_new_chain_and_the_gap_is_refused() {
    let src = Lab::start(LabSpec {
        replicas: 0,
        ..Default::default()
    });
    for p in masters(&src, 3) {
        src.redis_cli(p, &["CONFIG", "SET", "repl-backlog-size", "16384"]);
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path().display().to_string();
    let based = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all: Vec<serde_json::Value> =
                std::fs::read_dir(state.path().join("backups/chains"))
                    .map(|d| {
                        d.flatten()
                            .filter_map(|e| std::fs::read(e.path().join("chain.json")).ok())
                            .filter_map(|t| serde_json::from_slice(&t).ok())
                            .collect()
                    })
                    .unwrap_or_default();
            let done = all.iter().filter(|c: &&serde_json::Value| based(c)).count();
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} chain(s) with bases never appeared"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let child = spawn_follow(&src, state.path(), "1s");
    based(1);
    write(&src, 0..100);
    std::thread::sleep(Duration::from_millis(1500));
    let stop = |child: Child| {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        finish(child.wait_with_output().unwrap())
    };
    let r = stop(child);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // While no follower runs, far more than the backlog holds.
    std::thread::sleep(Duration::from_millis(500));
    let inside = now_ms();
    let big = "x".repeat(200);
    let split = even_split(3);
    let mut conns: Vec<redis::Connection> = masters(&src, 3).iter().map(|&p| conn(p)).collect();
    for i in 0..1500u32 {
        let k = format!("g:{i}");
        let s = key_slot(k.as_bytes());
        let m = split
            .iter()
            .position(|r| r.start <= s && s <= r.end)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(&big)
            .query(&mut conns[m])
            .unwrap();
    }
    let child = spawn_follow(&src, state.path(), "1s");
    based(2);
    write(&src, 100..200);
    std::thread::sleep(Duration::from_millis(1500));
    let after = now_ms();
    std::thread::sleep(Duration::from_millis(500));
    let r = stop(child);
    // Exit 1: something to read (a closed chain, a gap).
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let report = r.json();
    assert_eq!(report["closed"].as_array().unwrap().len(), 1, "{report:#}");
    let listed = run(&mut rcops(&[
        "backup",
        "list",
        "--json",
        "--state-dir",
        &st,
    ]));
    let chains = listed.json()["chains"].clone();
    assert_eq!(chains.as_array().unwrap().len(), 2, "{chains:#}");
    assert_eq!(chains[1]["status"], "closed", "{chains:#}");
    let gaps = chains[0]["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 3, "every shard has the gap: {chains:#}");
    assert!(gaps
        .iter()
        .all(|g| g["to_unix_ms"].as_u64().unwrap() > inside));

    // A time inside the gap is refused, naming it; one after it restores the state then.
    let dst = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let r = dst.run(&[
        "restore",
        "latest",
        "--until",
        &at(inside),
        "--state-dir",
        &st,
        "--yes",
    ]);
    assert_eq!(r.code, 64, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("gap"), "{}", r.stderr);
    let r = dst.run(&[
        "restore",
        "latest",
        "--until",
        &at(after),
        "--state-dir",
        &st,
        "--yes",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    crate::backup::assert_same(
        &crate::backup::snapshot(&masters(&src, 3)),
        &crate::backup::snapshot(&masters(&dst, 2)),
    );
}

/// `GET /metrics` of a follower, by hand (HTTP/1.0: the server closes when done).
fn scrape(port: u16) -> std::io::Result<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The value of `name{shard="<slots>"}` in a scrape.
fn series(text: &str, name: &str, slots: &str) -> Option<f64> {
    let head = format!("{name}{{shard=\"{slots}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn fresh_bases_a_kept_window_offsets_and_the_followers_metrics() {
    let (src, state, st) = loaded_lab();
    // Below the ephemeral range, where a client socket could take a port just let go.
    let port = free_port_block();
    let listen = format!("127.0.0.1:{port}");
    let child = spawn_follow_with(
        &src,
        state.path(),
        &[
            "--segment-age",
            "1s",
            "--base-every",
            "3s",
            "--keep",
            "6s",
            "--metrics",
            &listen,
        ],
    );
    wait_based(state.path());
    let first_instant = {
        std::thread::sleep(Duration::from_millis(300));
        now_ms()
    };
    // Writes for ~14 s, with instants (writes paused around them) along the way.
    let mut instants = Vec::new();
    let mut scraped = Vec::new();
    let mut child = child;
    let scrape_or_fail = |child: &mut Child| match scrape(port) {
        Ok(text) => text,
        Err(e) => {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("GET /metrics: {e}; the follower said:\n{err}");
        }
    };
    for round in 0..10 {
        mixed(&src, round, 150);
        std::thread::sleep(Duration::from_millis(400));
        instants.push((now_ms(), crate::backup::snapshot(&masters(&src, 3))));
        scraped.push(scrape_or_fail(&mut child));
        std::thread::sleep(Duration::from_millis(600));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let m = scrape_or_fail(&mut child);
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let r = finish(child.wait_with_output().unwrap());
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.json()["shards"][0]["rebases"].as_u64().unwrap() >= 2,
        "{}",
        r.stdout
    );

    // The metrics: every shard's recovery point (the source polled while idle), segments,
    // fresh bases; while writes ran, the recovery point stayed about a flush.
    let c = chain(state.path()).unwrap();
    for s in c["shards"].as_array().unwrap() {
        let slots = s["slots"].as_str().unwrap();
        let rp = series(&m, "rcops_follow_recovery_point_seconds", slots);
        assert!(rp.is_some_and(|v| v < 1.0), "{slots}: {rp:?}\n{m}");
        assert!(
            series(&m, "rcops_follow_lag_bytes", slots).is_some_and(|b| b < 1000.0),
            "{m}"
        );
        assert!(
            series(&m, "rcops_follow_segments_total", slots).unwrap() >= 5.0,
            "{m}"
        );
        assert!(
            series(&m, "rcops_follow_rebases_total", slots).unwrap() >= 2.0,
            "{m}"
        );
        assert!(
            series(&m, "rcops_follow_base_age_seconds", slots).unwrap() < 6.0,
            "{m}"
        );
        assert_eq!(series(&m, "rcops_follow_gaps", slots), Some(0.0));
        for text in &scraped {
            let rp = series(text, "rcops_follow_recovery_point_seconds", slots);
            assert!(rp.is_some_and(|v| v < 2.0), "{slots}: {rp:?}");
        }
    }

    // --keep 6s: the first base set and the segments before the kept one are gone, from the
    // chain and from the disk; what the chain lists is there.
    let id = c["id"].as_str().unwrap();
    let dir = state.path().join("backups/chains").join(id);
    let bases = c["bases"].as_array().unwrap();
    assert!(bases.len() >= 2, "{c:#}");
    assert_ne!(
        bases[0]["dir"], "base",
        "the first base set was kept: {c:#}"
    );
    assert!(!dir.join("base").exists());
    for s in c["shards"].as_array().unwrap() {
        for seg in s["segments"].as_array().unwrap() {
            assert!(dir.join(seg["file"].as_str().unwrap()).is_file());
        }
    }
    let files = std::fs::read_dir(dir.join("shard-000")).unwrap().count();
    assert_eq!(files, c["shards"][0]["segments"].as_array().unwrap().len());
    let r = run(&mut rcops(&[
        "backup",
        "verify",
        id,
        "--state-dir",
        &st,
        "--json",
    ]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let r = run(&mut rcops(&[
        "backup",
        "list",
        "--state-dir",
        &st,
        "--json",
    ]));
    assert!(
        r.json()["chains"][0]["bases"].as_u64().unwrap() >= 2,
        "{}",
        r.stdout
    );

    let dst = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let restore = |extra: &[&str]| {
        for p in masters(&dst, 2) {
            dst.redis_cli(p, &["FLUSHALL"]);
        }
        let mut args = vec!["restore", id, "--state-dir", &st, "--json", "--yes"];
        args.extend_from_slice(extra);
        dst.run(&args)
    };
    // Before the window: refused, naming where the chain starts now.
    let r = restore(&["--until", &at(first_instant)]);
    assert_eq!(r.code, 64, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("oldest base set"), "{}", r.stderr);
    // The last instant, from a fresh base set: key by key.
    let (t, want) = instants.last().unwrap();
    let r = restore(&["--until", &at(*t)]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert!(
        v["plan"]["base"].as_str().unwrap().starts_with("base-"),
        "{v:#}"
    );
    crate::backup::assert_same(want, &crate::backup::snapshot(&masters(&dst, 2)));
    // The same cut given as offsets (by index, folder and slot ranges).
    let stops: Vec<u64> = v["plan"]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stop_offset"].as_u64().unwrap())
        .collect();
    let slots2 = c["shards"][2]["slots"].as_str().unwrap();
    let offsets = format!(
        "0={},shard-001={},{slots2}={}",
        stops[0], stops[1], stops[2]
    );
    let r = restore(&["--until-offset", &offsets]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    crate::backup::assert_same(want, &crate::backup::snapshot(&masters(&dst, 2)));
    // Offsets that are no cut: a shard left out, a shard that is not there, past the end,
    // inside a command. Refused before anything is written.
    let past = format!(
        "0={},1={},2={}",
        stops[0],
        stops[1],
        stops[2] + 1_000_000_000
    );
    let inside = format!("0={},1={},2={}", stops[0], stops[1], stops[2] - 3);
    for (offsets, says) in [
        (format!("0={}", stops[0]), "names no offset for shard 1"),
        (format!("{offsets},7=5"), "names no shards"),
        (past, "after its archive's end"),
        (inside, "not between two commands"),
    ] {
        let r = restore(&["--until-offset", &offsets]);
        assert_eq!(r.code, 64, "{offsets}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(says), "{offsets}: {}", r.stderr);
        let keys: u64 = masters(&dst, 2)
            .iter()
            .map(|&p| redis::cmd("DBSIZE").query::<u64>(&mut conn(p)).unwrap())
            .sum();
        assert_eq!(keys, 0, "{offsets}: refused before writing");
    }

    // Another cluster's follower into this archive: refused, the chain untouched.
    let r = dst.run(&["backup", "follow", "--state-dir", &st]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("another cluster"), "{}", r.stderr);
}

#[test]
fn a_reshard_ends_the_chain_and_its_window_is_a_gap() {
    let (src, state, st) = loaded_lab();
    let child = spawn_follow(&src, state.path(), "1s");
    let chains = || -> Vec<serde_json::Value> {
        let mut v: Vec<serde_json::Value> = std::fs::read_dir(state.path().join("backups/chains"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("chain.json")).ok())
            .filter_map(|t| serde_json::from_slice(&t).ok())
            .collect();
        v.sort_by_key(|c| c["id"].as_str().unwrap_or_default().to_string());
        v
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !chains().first().is_some_and(based) {
        assert!(Instant::now() < deadline, "no base snapshots");
        std::thread::sleep(Duration::from_millis(100));
    }
    mixed(&src, 0, 300);
    std::thread::sleep(Duration::from_millis(400));
    let before = (now_ms(), crate::backup::snapshot(&masters(&src, 3)));
    std::thread::sleep(Duration::from_millis(1200));

    // 300 slots (and their keys) from the first master to the second.
    let id = |p: u16| src.redis_cli(p, &["CLUSTER", "MYID"]).trim().to_string();
    let out = std::process::Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", src.port),
            "--cluster-from",
            &id(src.port),
            "--cluster-to",
            &id(src.port + 1),
            "--cluster-slots",
            "300",
            "--cluster-yes",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(chains().len() == 2 && based(&chains()[1])) {
        assert!(
            Instant::now() < deadline,
            "no new chain after the reshard: {:#?}",
            chains()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Writes routed by the new layout (`mixed` assumes the even split): redis-cli -c follows
    // the redirections.
    let mut cli = std::process::Command::new("redis-cli")
        .args(["-c", "-p", &src.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut w = cli.stdin.take().unwrap();
        for i in 0..300 {
            writeln!(w, "SET after:{i} {i}\nINCR n:{}", i % 7).unwrap();
        }
    }
    assert!(cli.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(400));
    let after = (now_ms(), crate::backup::snapshot(&masters(&src, 3)));
    std::thread::sleep(Duration::from_millis(1500));
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let r = finish(child.wait_with_output().unwrap());
    assert_eq!(r.code, 1, "a chain was closed: {}\n{}", r.stdout, r.stderr);
    assert_eq!(
        r.json()["closed"].as_array().unwrap().len(),
        1,
        "{}",
        r.stdout
    );

    // Both chains record the reshard's window as a gap; the new chain's ends at its bases.
    let all = chains();
    let (old, new) = (&all[0], &all[1]);
    assert_eq!(old["status"], "closed");
    let og = old["gaps"].as_array().unwrap();
    assert_eq!(og.len(), 3, "{old:#}");
    assert!(
        og[0]["why"].as_str().unwrap().contains("reshard"),
        "{old:#}"
    );
    let ng = new["gaps"].as_array().unwrap();
    assert_eq!(ng.len(), 3, "{new:#}");
    assert!(
        ng.iter().all(|g| g["to_unix_ms"].as_u64().unwrap() > 0),
        "{new:#}"
    );
    let from = ng[0]["from_unix_ms"].as_u64().unwrap();
    let to = ng
        .iter()
        .map(|g| g["to_unix_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(before.0 <= from && from < to && to <= after.0, "{new:#}");

    let dst = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let restore = |t: u64| {
        for p in masters(&dst, 2) {
            dst.redis_cli(p, &["FLUSHALL"]);
        }
        dst.run(&[
            "restore",
            "latest",
            "--until",
            &at(t),
            "--state-dir",
            &st,
            "--yes",
        ])
    };
    for (t, want) in [&before, &after] {
        let r = restore(*t);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        crate::backup::assert_same(want, &crate::backup::snapshot(&masters(&dst, 2)));
    }
    let r = restore((from + to) / 2);
    assert_eq!(r.code, 64, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("falls in a gap") && r.stderr.contains("reshard"),
        "{}",
        r.stderr
    );
}
