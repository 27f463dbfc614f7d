//! `rcops migrate` against real servers: a live writer during the whole copy, `kill -9` and
//! Ctrl-C with `--resume`, standalone servers on either side, and bad input. Every result is
//! checked by an independent key-by-key comparison (`backup::snapshot`), never by rcops.

use crate::backup::{assert_same, conn, plant_extras, snapshot, snapshot_with};
use crate::common::*;
use rcops_formats::slot::{even_split, key_slot};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The master port of `key` in a lab of `n` masters starting at `port`.
fn owner(port: u16, n: usize, key: &[u8]) -> u16 {
    let s = key_slot(key);
    port + even_split(n)
        .iter()
        .position(|r| r.start <= s && s <= r.end)
        .unwrap() as u16
}

fn masters(lab: &Lab, n: u16) -> Vec<u16> {
    (lab.port..lab.port + n).collect()
}

/// `rcops migrate ARGS…` with its own state dir, as a child whose output is kept.
fn spawn_migrate(state: &std::path::Path, args: &[&str]) -> Child {
    let mut c = rcops(&["migrate"]);
    c.args(args)
        .env("RCOPS_STATE_DIR", state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().expect("spawn rcops migrate")
}

fn migrate(state: &std::path::Path, args: &[&str]) -> Run {
    let mut c = rcops(&["migrate"]);
    c.args(args).env("RCOPS_STATE_DIR", state);
    run(&mut c)
}

fn output(child: Child) -> Run {
    finish(child.wait_with_output().expect("wait"))
}

const LIBRARY: &str = "#!lua name=migtest\nredis.register_function('bump', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)";

/// Writes known operations into a 3-master lab until stopped: per tag a counter (INCR,
/// INCRBY through a function, INCR in EVAL and in MULTI/EXEC), strings with TTLs (some
/// deleted), a hash, a list, a sorted set, a stream. Returns how many rounds it did.
fn writer(port: u16, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let tags = ["{wa}", "{wb}", "{wc}", "{wd}"];
        let mut conns: Vec<(String, redis::Connection)> = tags
            .iter()
            .map(|t| (t.to_string(), conn(owner(port, 3, t.as_bytes()))))
            .collect();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (t, c) in &mut conns {
                let k = |s: &str| format!("w:{t}:{s}");
                let mut p = redis::pipe();
                p.cmd("INCR").arg(k("n"));
                p.cmd("SET")
                    .arg(k(&format!("s{i}")))
                    .arg(i)
                    .arg("EX")
                    .arg(3600);
                p.cmd("HSET").arg(k("h")).arg(format!("f{}", i % 50)).arg(i);
                p.cmd("LPUSH").arg(k("l")).arg(i);
                p.cmd("LTRIM").arg(k("l")).arg(0).arg(99);
                p.cmd("ZADD").arg(k("z")).arg(i).arg(format!("m{}", i % 70));
                p.cmd("XADD")
                    .arg(k("x"))
                    .arg("MAXLEN")
                    .arg(200)
                    .arg("*")
                    .arg("i")
                    .arg(i);
                p.cmd("EXPIRE").arg(k("h")).arg(7200);
                if i >= 5 {
                    p.cmd("DEL").arg(k(&format!("s{}", i - 5)));
                }
                p.cmd("EVAL")
                    .arg("redis.call('INCR', KEYS[1]); return redis.call('SET', KEYS[2], ARGV[1])")
                    .arg(2)
                    .arg(k("n"))
                    .arg(k("e"))
                    .arg(i);
                p.cmd("FCALL").arg("bump").arg(1).arg(k("n")).arg(2);
                p.cmd("MULTI");
                p.cmd("INCR").arg(k("n"));
                p.cmd("SET").arg(k("m")).arg(i);
                p.cmd("EXEC");
                // Through failovers and slot moves: follow the redirect, or wait and retry.
                // A round's commands share one slot, so a redirected round ran nowhere.
                let mut tries = 0;
                loop {
                    match p.query::<redis::Value>(c) {
                        Ok(_) => break,
                        Err(e) => {
                            tries += 1;
                            assert!(tries < 200, "writer: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                            // "Moved: SLOT 127.0.0.1:PORT" (also inside a pipeline's failures).
                            let text = e.to_string();
                            if let Some(at) = text.find("Moved: ") {
                                let port: String = text[at..]
                                    .split_whitespace()
                                    .nth(2)
                                    .and_then(|a| a.rsplit(':').next())
                                    .unwrap_or_default()
                                    .chars()
                                    .take_while(char::is_ascii_digit)
                                    .collect();
                                if let Ok(port) = port.parse() {
                                    *c = conn(port);
                                }
                            }
                        }
                    }
                }
            }
            i += 1;
            rounds.store(i, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

const TAGS: [&str; 4] = ["{wa}", "{wb}", "{wc}", "{wd}"];

fn get_on(lab: &Lab, n: u16, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut conn(owner(lab.port, n as usize, key.as_bytes())))
        .unwrap()
}

/// Waits until the target has the writer's last write of every tag (`m`, the last command
/// of a round; a tag's commands all go to one slot, applied in order).
fn wait_caught_up(source: &Lab, target: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in TAGS {
        let key = format!("w:{t}:m");
        let want = get_on(source, 3, &key);
        while get_on(target, 4, &key) != want {
            assert!(
                Instant::now() < deadline,
                "{key} never reached {want:?} on the target"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Per tag, the target's counter minus the source's.
fn counter_deltas(source: &Lab, target: &Lab) -> Vec<i64> {
    TAGS.iter()
        .map(|t| {
            let key = format!("w:{t}:n");
            let v = |l: &Lab, n| -> i64 {
                get_on(l, n, &key).and_then(|v| v.parse().ok()).unwrap_or(0)
            };
            v(target, 4) - v(source, 3)
        })
        .collect()
}

/// The writer's counters and lists, which commands run twice after a crash change.
fn without_counters(mut s: crate::backup::Snapshot) -> crate::backup::Snapshot {
    s.retain(|k, _| !(k.starts_with(b"w:") && (k.ends_with(b":n") || k.ends_with(b":l"))));
    s
}

fn load_library(lab: &Lab) {
    for p in masters(lab, 3) {
        let _: () = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg(LIBRARY)
            .query(&mut conn(p))
            .unwrap();
    }
}

#[test]
fn migrate_follows_a_live_writer_through_kill_9_and_ctrl_c_into_another_shape() {
    let source = Lab::start(LabSpec::default());
    let target = Lab::start(LabSpec {
        masters: 4,
        replicas: 0,
        ..Default::default()
    });
    let state = tempfile::tempdir().unwrap();
    assert_eq!(source.load(3000).code, 0);
    plant_extras(&source);
    load_library(&source);
    let (from, to) = (source.seed(), target.seed());
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let w = writer(source.port, stop.clone(), rounds.clone());

    // Plan only: exit 64, nothing written.
    let r = migrate(state.path(), &["--from", &from, "--to", &to]);
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(
        r.stdout.contains("plan: migrate 3 source shard(s)"),
        "{}",
        r.stdout
    );
    let target_keys = |t: &Lab| -> u64 {
        masters(t, 4)
            .iter()
            .map(|&p| redis::cmd("DBSIZE").query::<u64>(&mut conn(p)).unwrap())
            .sum()
    };
    assert_eq!(target_keys(&target), 0);

    // Follow with the writer running, then kill -9 in the middle.
    let mut child = spawn_migrate(
        state.path(),
        &["--from", &from, "--to", &to, "--follow", "--yes", "--json"],
    );
    std::thread::sleep(Duration::from_secs(4));
    child.kill().unwrap();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(500));

    // Resume (the newest checkpoint) and follow again; Ctrl-C once the target caught up.
    let child = spawn_migrate(
        state.path(),
        &[
            "--from", &from, "--to", &to, "--follow", "--resume", "--yes", "--json",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let n = rounds.load(Ordering::Relaxed);
    assert!(n > 50, "the writer made only {n} rounds");
    wait_caught_up(&source, &target);
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let r = output(child);
    assert_eq!(r.code, 130, "{}", r.stderr);
    let report = r.json();
    assert_eq!(report["outcome"], "interrupted", "{report:#}");

    // The functions reached every target master.
    for p in masters(&target, 4) {
        let libs: redis::Value = redis::cmd("FUNCTION")
            .arg("LIST")
            .query(&mut conn(p))
            .unwrap();
        assert!(
            format!("{libs:?}").contains("migtest"),
            "port {p}: {libs:?}"
        );
    }
    // Everything equal but what commands run twice after the kill can change: counters and
    // lists, and only when the resumed run names its crash window with those commands.
    let deltas = counter_deltas(&source, &target);
    assert!(deltas.iter().all(|&d| d >= 0), "{deltas:?}");
    if deltas.iter().any(|&d| d > 0) {
        let named: Vec<String> = report["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["crash_window"]["non_idempotent"].as_object())
            .flat_map(|m| m.keys().cloned())
            .collect();
        assert!(
            named.iter().any(|n| n.starts_with("INCR")),
            "counters off by {deltas:?} but no crash window names INCR: {report:#}"
        );
    }
    assert_same(
        &without_counters(snapshot(&masters(&source, 3))),
        &without_counters(snapshot(&masters(&target, 4))),
    );

    // More writes while stopped, then a resume without --follow: it catches up and ends;
    // the clean stop duplicated nothing (the counters' differences did not move).
    write_for(source.port, Duration::from_millis(800));
    let r = migrate(
        state.path(),
        &["--from", &from, "--to", &to, "--resume", "--yes", "--json"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["outcome"], "ok");
    wait_caught_up(&source, &target);
    assert_eq!(counter_deltas(&source, &target), deltas);
    assert_same(
        &without_counters(snapshot(&masters(&source, 3))),
        &without_counters(snapshot(&masters(&target, 4))),
    );
}

#[test]
fn migrate_between_standalone_servers_and_clusters_and_refuses_bad_input() {
    let state = tempfile::tempdir().unwrap();
    let server = Standalone::start();
    let mut c = conn(server.port);
    for i in 0..500 {
        let mut p = redis::pipe();
        p.cmd("SET").arg(format!("s:{i}")).arg(i);
        p.cmd("HSET")
            .arg(format!("h:{}", i % 20))
            .arg(format!("f{i}"))
            .arg(i);
        p.cmd("RPUSH").arg(format!("l:{}", i % 10)).arg(i);
        p.cmd("SADD").arg(format!("set:{}", i % 7)).arg(i);
        p.cmd("ZADD").arg("z").arg(i).arg(format!("m{i}"));
        p.cmd("PEXPIRE").arg(format!("s:{i}")).arg(600_000 + i);
        let _: () = p.query(&mut c).unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg(b"\x00\xffbin")
        .arg(b"\x01\x02")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("empty")
        .arg("")
        .query(&mut c)
        .unwrap();
    // A stream with a consumer group, consumers and pending entries (delivery counts).
    for i in 0..50 {
        let _: String = redis::cmd("XADD")
            .arg("st")
            .arg("*")
            .arg("n")
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "st", "g", "0"])
        .query(&mut c)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "g", "alice", "COUNT", "10", "STREAMS", "st", ">"])
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("XGROUP")
        .arg(&["CREATECONSUMER", "st", "g", "bob"])
        .query(&mut c)
        .unwrap();
    // A pending entry whose message is gone (XCLAIM alone cannot bring it back).
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&["st", "-", "+", "COUNT", "3"])
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("XDEL")
        .arg("st")
        .arg(&first[2].0)
        .query(&mut c)
        .unwrap();
    // Another database: not copied (db 0 only by default).
    let _: () = redis::cmd("SELECT").arg(1).query(&mut c).unwrap();
    let _: () = redis::cmd("SET")
        .arg("other-db")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(0).query(&mut c).unwrap();

    // Standalone → cluster.
    let cluster = Lab::start(LabSpec {
        masters: 3,
        replicas: 0,
        ..Default::default()
    });
    // The plan says when the source will wait before its snapshot (5 s by default).
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "repl-diskless-sync-delay", "5"])
        .query(&mut c)
        .unwrap();
    let r = migrate(
        state.path(),
        &["--from", &server.addr(), "--to", &cluster.seed()],
    );
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(
        r.stderr.contains("repl-diskless-sync-delay is 5 s"),
        "{}",
        r.stderr
    );
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "repl-diskless-sync-delay", "0"])
        .query(&mut c)
        .unwrap();
    // Slowed down (--rate) and killed in the middle of its snapshot; the resume copies the
    // shard again, with replace semantics for its own keys.
    let mut child = spawn_migrate(
        state.path(),
        &[
            "--from",
            &server.addr(),
            "--to",
            &cluster.seed(),
            "--rate",
            "500",
            "--yes",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let _ = child.wait();
    let copied: u64 = masters(&cluster, 3)
        .iter()
        .map(|&p| redis::cmd("DBSIZE").query::<u64>(&mut conn(p)).unwrap())
        .sum();
    assert!(copied > 0 && copied < 1500, "killed after {copied} keys");
    let r = migrate(
        state.path(),
        &[
            "--from",
            &server.addr(),
            "--to",
            &cluster.seed(),
            "--resume",
            "--yes",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(&snapshot(&[server.port]), &snapshot(&masters(&cluster, 3)));

    // Into a target that holds keys, under fail: refused, nothing written.
    let r = migrate(
        state.path(),
        &["--from", &server.addr(), "--to", &cluster.seed(), "--yes"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--on-conflict is fail"), "{}", r.stderr);

    // Cluster → standalone.
    let other = Standalone::start();
    let r = migrate(
        state.path(),
        &[
            "--from",
            &cluster.seed(),
            "--to",
            &other.addr(),
            "--yes",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(&snapshot(&masters(&cluster, 3)), &snapshot(&[other.port]));

    // Every value rebuilt piece by piece (--big-key-bytes 1: HSET/RPUSH/SADD/ZADD/XADD/APPEND
    // into a temporary key, renamed over the key, TTL last): the same contents and expiries,
    // no temporary key left.
    let rebuilt = Standalone::start();
    let mut rc = conn(rebuilt.port);
    let _: () = redis::cmd("SET")
        .arg("s:1")
        .arg("mine")
        .query(&mut rc)
        .unwrap();
    let args = [
        "--from",
        &cluster.seed(),
        "--to",
        &rebuilt.addr(),
        "--big-key-bytes",
        "1",
    ];
    let r = migrate(
        state.path(),
        &[&args[..], &["--on-conflict", "skip", "--yes", "--json"]].concat(),
    );
    // Exit 1: a key was skipped (a finding).
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let keys = &r.json()["keys"];
    assert_eq!(keys["skipped_existing"], 1, "{keys}");
    assert_eq!(keys["failed"], 0, "{keys}");
    let mine: String = redis::cmd("GET").arg("s:1").query(&mut rc).unwrap();
    assert_eq!(mine, "mine", "under skip an existing key stays as it was");
    let r = migrate(
        state.path(),
        &[&args[..], &["--on-conflict", "replace", "--yes"]].concat(),
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(
        &snapshot_with(&masters(&cluster, 3), true),
        &snapshot_with(&[rebuilt.port], true),
    );
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("*rcops:rebuild*")
        .query(&mut rc)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // --method scan with values bigger than a DUMP reply kept in memory (16 MiB): a 17 MB
    // string and a 20 MB list stream from the source into temporary files, then go as
    // pieces (--big-key-bytes 1) or as one RESTORE streamed from the file (the default).
    let big = vec![b'x'; 17 << 20];
    let mut bc = conn(owner(cluster.port, 3, b"big:s"));
    let _: () = redis::cmd("SET")
        .arg("big:s")
        .arg(&big)
        .query(&mut bc)
        .unwrap();
    let mut lc = conn(owner(cluster.port, 3, b"big:l"));
    let _: () = redis::cmd("EVAL")
        .arg("for i = 1, 200000 do redis.call('RPUSH', KEYS[1], string.rep('v', 90) .. i) end")
        .arg(1)
        .arg("big:l")
        .query(&mut lc)
        .unwrap();
    let _: () = redis::cmd("PEXPIRE")
        .arg("big:l")
        .arg(3_600_000)
        .query(&mut lc)
        .unwrap();
    for (how, extra) in [
        ("in pieces", &["--big-key-bytes", "1"][..]),
        ("whole", &[][..]),
    ] {
        let scanned = Standalone::start();
        let r = migrate(
            state.path(),
            &[
                &["--from", &cluster.seed(), "--to", &scanned.addr()][..],
                &["--method", "scan", "--yes", "--json"],
                extra,
            ]
            .concat(),
        );
        assert_eq!(r.code, 0, "{how}: {}\n{}", r.stdout, r.stderr);
        assert_same(
            &snapshot_with(&masters(&cluster, 3), true),
            &snapshot_with(&[scanned.port], true),
        );
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("*rcops:rebuild*")
            .query(&mut conn(scanned.port))
            .unwrap();
        assert!(left.is_empty(), "{how}: {left:?}");
    }
    for (k, c) in [("big:s", &mut bc), ("big:l", &mut lc)] {
        let _: () = redis::cmd("DEL").arg(k).query(c).unwrap();
    }

    // Bad input: each a one-line error, nothing written.
    let dead = format!("127.0.0.1:{}", free_port_block());
    let r = migrate(
        state.path(),
        &["--from", &dead, "--to", &other.addr(), "--yes"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.starts_with("rcops: error: source:"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let r = migrate(
        state.path(),
        &["--from", &server.addr(), "--to", &dead, "--yes"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.starts_with("rcops: error: target:"),
        "{}",
        r.stderr
    );
    let mut cmd = rcops(&[
        "migrate",
        "--from",
        &server.addr(),
        "--to",
        &other.addr(),
        "--yes",
    ]);
    cmd.env("RCOPS_STATE_DIR", state.path())
        .env("RCOPS_FROM_PASSWORD", "wrong");
    let r = run(&mut cmd);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("source:") && r.stderr.contains("authentication failed"),
        "{}",
        r.stderr
    );
    let r = migrate(
        state.path(),
        &[
            "--from",
            &server.addr(),
            "--to",
            &other.addr(),
            "--resume",
            "nope",
            "--yes",
        ],
    );
    assert_eq!(r.code, 64);
    assert!(
        r.stderr.contains("no such migration checkpoint"),
        "{}",
        r.stderr
    );
    // A user that may not replicate: the message points to --method scan.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nosync")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("+@all")
        .arg("-psync")
        .arg("-sync")
        .query(&mut c)
        .unwrap();
    let empty = Standalone::start();
    let mut cmd = rcops(&[
        "migrate",
        "--from",
        &server.addr(),
        "--to",
        &empty.addr(),
        "--from-user",
        "nosync",
        "--yes",
    ]);
    cmd.env("RCOPS_STATE_DIR", state.path())
        .env("RCOPS_FROM_PASSWORD", "pw");
    let r = run(&mut cmd);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("--method scan"), "{}", r.stderr);
    let n: u64 = redis::cmd("DBSIZE").query(&mut conn(empty.port)).unwrap();
    assert_eq!(n, 0, "a refused migration wrote {n} keys");
    // --method scan needs no replication: the same user copies everything.
    let mut cmd = rcops(&[
        "migrate",
        "--from",
        &server.addr(),
        "--to",
        &empty.addr(),
        "--from-user",
        "nosync",
        "--method",
        "scan",
        "--yes",
        "--json",
    ]);
    cmd.env("RCOPS_STATE_DIR", state.path())
        .env("RCOPS_FROM_PASSWORD", "pw");
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(&snapshot(&[server.port]), &snapshot(&[empty.port]));
    let r = migrate(
        state.path(),
        &[
            "--from",
            &server.addr(),
            "--to",
            &empty.addr(),
            "--method",
            "scan",
            "--follow",
            "--yes",
        ],
    );
    assert_eq!(r.code, 64, "{}", r.stderr);

    // --type hash: the snapshot's hashes, then of the stream the commands on hashes and the
    // generic ones (EXPIRE, DEL); a SET and an RPUSH are left out.
    let hashes = Standalone::start();
    let child = spawn_migrate(
        state.path(),
        &[
            "--from",
            &server.addr(),
            "--to",
            &hashes.addr(),
            "--type",
            "hash",
            "--follow",
            "--yes",
            "--json",
        ],
    );
    let mut hc = conn(hashes.port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis::cmd("EXISTS")
        .arg("h:0")
        .query::<u64>(&mut hc)
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "the snapshot never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut p = redis::pipe();
    p.cmd("SET").arg("s:new").arg(1).ignore();
    p.cmd("RPUSH").arg("l:new").arg(1).ignore();
    p.cmd("EXPIRE").arg("h:0").arg(1000).ignore();
    p.cmd("DEL").arg("h:1").ignore();
    p.cmd("HSET").arg("h:new").arg("f").arg("v").ignore();
    let _: () = p.query(&mut c).unwrap();
    while redis::cmd("EXISTS")
        .arg("h:new")
        .query::<u64>(&mut hc)
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "the stream never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let r = output(child);
    assert_eq!(r.code, 130, "{}\n{}", r.stdout, r.stderr);
    let only_hashes: crate::backup::Snapshot = snapshot(&[server.port])
        .into_iter()
        .filter(|(_, (v, _))| v.starts_with(b"hash:"))
        .collect();
    assert_same(&only_hashes, &snapshot(&[hashes.port]));
    assert!(only_hashes.contains_key(&b"h:new"[..]) && !only_hashes.contains_key(&b"h:1"[..]));
    assert!(only_hashes[&b"h:0"[..]].1 > 0, "EXPIRE reached the target");
}

/// Runs the writer for `d`.
fn write_for(port: u16, d: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(port, stop.clone(), Arc::new(AtomicU64::new(0)));
    std::thread::sleep(d);
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
}

/// Waits until the node on `port` has the role `role` ("master" or "slave").
fn wait_role(lab: &Lab, port: u16, role: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.redis_cli(port, &["ROLE"]).starts_with(role) {
        assert!(Instant::now() < deadline, "{port} never became {role}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn migrate_survives_failovers_and_slot_moves_and_resyncs_after_the_backlog_overflowed() {
    let spec = || LabSpec {
        node_timeout_ms: 2000,
        ..Default::default()
    };
    let (source, target) = (Lab::start(spec()), Lab::start(spec()));
    let state = tempfile::tempdir().unwrap();
    assert_eq!(source.load(2000).code, 0);
    load_library(&source);
    let (from, to) = (source.seed(), target.seed());
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(source.port, stop.clone(), Arc::new(AtomicU64::new(0)));
    let child = spawn_migrate(
        state.path(),
        &["--from", &from, "--to", &to, "--follow", "--yes", "--json"],
    );
    std::thread::sleep(Duration::from_secs(2));

    // The target: its first master fails over to its replica; slots of the second master
    // move to the third while rcops writes into them.
    let _ = target.redis_cli(target.port + 3, &["CLUSTER", "FAILOVER"]);
    wait_role(&target, target.port + 3, "master");
    target.check_until(Duration::from_secs(30), |code, _| code == 0);
    let (second, third) = (
        target.node_id(target.port + 1),
        target.node_id(target.port + 2),
    );
    let out = Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &to,
            "--cluster-from",
            &second,
            "--cluster-to",
            &third,
        ])
        .args(["--cluster-slots", "300", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The source: the second master fails over to the replica rcops reads that shard from.
    let _ = source.redis_cli(source.port + 4, &["CLUSTER", "FAILOVER"]);
    wait_role(&source, source.port + 4, "master");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let source_masters = || -> Vec<u16> {
        (source.port..source.port + 6)
            .filter(|&p| source.redis_cli(p, &["ROLE"]).starts_with("master"))
            .collect()
    };
    let target_masters = || -> Vec<u16> {
        (target.port..target.port + 6)
            .filter(|&p| target.redis_cli(p, &["ROLE"]).starts_with("master"))
            .collect()
    };
    let caught_up = |deadline: Instant| loop {
        let (a, b) = (snapshot(&source_masters()), snapshot(&target_masters()));
        if a == b || Instant::now() > deadline {
            return (a, b);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let (a, b) = caught_up(Instant::now() + Duration::from_secs(30));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let r = output(child);
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert_same(&a, &b);
    let report = r.json();
    let reconnects: u64 = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reconnects"].as_u64().unwrap())
        .sum();
    assert!(
        reconnects >= 1,
        "the source failover went unnoticed: {report:#}"
    );

    // Stopped, with a tiny backlog: enough writes to overflow it, and deletions.
    for p in source.port..source.port + 6 {
        let _ = source.redis_cli(p, &["CONFIG", "SET", "repl-backlog-size", "16384"]);
    }
    // Keys of the sample load (the writer does not write them again), a few per master.
    let mut gone = 0u64;
    for p in source_masters() {
        let mut c = conn(p);
        let (_, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(0)
            .arg("COUNT")
            .arg(50)
            .query(&mut c)
            .unwrap();
        for k in keys.iter().filter(|k| !k.starts_with(b"w:")).take(3) {
            let _: () = redis::cmd("DEL").arg(k).query(&mut c).unwrap();
            gone += 1;
        }
    }
    assert!(gone >= 3);
    write_for(source.port, Duration::from_secs(2));
    let r = migrate(
        state.path(),
        &["--from", &from, "--to", &to, "--resume", "--yes", "--json"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let report = r.json();
    let sum = |f: &str| -> u64 {
        report["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[f].as_u64().unwrap())
            .sum()
    };
    assert!(sum("resyncs") >= 1, "{report:#}");
    assert!(sum("removed_after_resync") >= gone, "{report:#}");
    let (a, b) = caught_up(Instant::now() + Duration::from_secs(10));
    assert_same(&a, &b);

    for p in source.port..source.port + 6 {
        let _ = source.redis_cli(p, &["CONFIG", "SET", "repl-backlog-size", "16mb"]);
    }

    // verify, with a writer and the follow running during its first round: the
    // differences of writes in flight settle, none is reported.
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(source.port, stop.clone(), Arc::new(AtomicU64::new(200_000)));
    let follow = spawn_migrate(
        state.path(),
        &[
            "--from", &from, "--to", &to, "--resume", "--follow", "--yes",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let verify = |args: &[&str]| {
        let mut c = rcops(&["verify", "--from", &from, "--to", &to]);
        c.args(args);
        c
    };
    let mut running = verify(&["--rounds", "3", "--interval", "2s", "--json"]);
    let running = running
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let r = output(running);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert!(v["keys_checked"].as_u64().unwrap() > 2000, "{v:#}");
    let _ = Command::new("kill")
        .args(["-INT", &follow.id().to_string()])
        .status();
    assert_eq!(output(follow).code, 130);

    // The cutover, with the writer running: the source pauses, the target drains, the
    // check passes; kept paused, both sides are identical key by key.
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(source.port, stop.clone(), Arc::new(AtomicU64::new(300_000)));
    std::thread::sleep(Duration::from_millis(500));
    let r = migrate(
        state.path(),
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--resume",
            "--cutover",
            "--keep-paused",
            "--yes",
            "--json",
        ],
    );
    let (a, b) = (snapshot(&source_masters()), snapshot(&target_masters()));
    for p in source_masters() {
        source.redis_cli(p, &["CLIENT", "UNPAUSE"]);
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let c = &r.json()["cutover"];
    assert!(
        c["error"].is_null() && c["sampled"].as_u64().unwrap() > 0,
        "{c:#}"
    );
    assert_eq!(c["source_keys"], c["target_keys"], "{c:#}");
    assert_same(&a, &b);
    // The writer's last round after the unpause: copied too before the planting below.
    let r = migrate(
        state.path(),
        &["--from", &from, "--to", &to, "--resume", "--yes"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // One planted difference of each kind, and only those are found.
    let cli = |args: &[&str]| {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        target.redis_cli(target.port, &all)
    };
    cli(&["DEL", "w:{wa}:z"]);
    cli(&["DEL", "w:{wb}:z"]);
    cli(&["SADD", "w:{wb}:z", "x"]);
    cli(&["PEXPIRE", "w:{wa}:h", "99999999"]);
    cli(&["RPUSH", "w:{wa}:l", "extra"]);
    let m = cli(&["GET", "w:{wa}:m"]);
    cli(&["SET", "w:{wa}:m", &"x".repeat(m.len())]);
    cli(&["SET", "x:only-on-target", "1"]);
    let diffs = tempfile::NamedTempFile::new().unwrap();
    let out = diffs.path().display().to_string();
    let r = run(&mut verify(&[
        "--rounds",
        "2",
        "--interval",
        "200ms",
        "--both-directions",
        "--out",
        &out,
    ]));
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let mut found: Vec<(String, String)> = std::fs::read_to_string(diffs.path())
        .unwrap()
        .lines()
        .map(|l| {
            let d: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                d["key"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let want: Vec<(String, String)> = [
        ("w:{wa}:h", "ttl"),
        ("w:{wa}:l", "length"),
        ("w:{wa}:m", "value"),
        ("w:{wa}:z", "missing_on_target"),
        ("w:{wb}:z", "type"),
        ("x:only-on-target", "missing_on_source"),
    ]
    .iter()
    .map(|(k, d)| (k.to_string(), d.to_string()))
    .collect();
    assert_eq!(found, want, "{}", r.stdout);
}

#[test]
fn verify_replicas_finds_what_differs_between_a_master_and_its_replica() {
    let lab = Lab::start(LabSpec::default());
    assert_eq!(lab.load(2000).code, 0);
    let r = lab.run(&["verify", "replicas", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    let checked: u64 = v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["keys_checked"].as_u64().unwrap())
        .sum();
    assert!(checked >= 2000, "{v:#}");
    // Writes the master does not replicate (a script with REPL_NONE): a changed value, a
    // key deleted on the master only, a key the replica never got.
    let scan = |pattern: &str| {
        let mut c = conn(lab.port);
        let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(&mut c)
            .unwrap();
        keys[0].clone()
    };
    let (s, h) = (scan("lab:string:*"), scan("lab:hash:*"));
    let unreplicated = |cmd: &str, key: &str, arg: &str| {
        let _: redis::Value = redis::cmd("EVAL")
            .arg("redis.set_repl(redis.REPL_NONE); return redis.call(ARGV[1], KEYS[1], ARGV[2])")
            .arg(1)
            .arg(key)
            .arg(cmd)
            .arg(arg)
            .query(&mut conn(lab.port))
            .unwrap();
    };
    let old: usize = redis::cmd("STRLEN")
        .arg(&s)
        .query(&mut conn(lab.port))
        .unwrap();
    unreplicated("SET", &s, "changed");
    let _: redis::Value = redis::cmd("EVAL")
        .arg("redis.set_repl(redis.REPL_NONE); return redis.call('DEL', KEYS[1])")
        .arg(1)
        .arg(&h)
        .query(&mut conn(lab.port))
        .unwrap();
    let new = format!("{{{s}}}:new");
    unreplicated("SET", &new, "x");
    let r = lab.run(&["verify", "replicas", "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let mut found: Vec<(String, String)> = r.json()["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|x| x["examples"].as_array().unwrap().clone())
        .map(|d| {
            (
                d["key"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let mut want = vec![
        (
            s.clone(),
            if old == "changed".len() {
                "value"
            } else {
                "length"
            }
            .to_string(),
        ),
        (h, "missing_on_source".to_string()),
        (new, "missing_on_target".to_string()),
    ];
    want.sort();
    assert_eq!(found, want);
}

#[test]
fn migrate_into_a_redis_cli_cluster_moves_off_a_frozen_source_replica() {
    // Source: an rcops lab with a replica per master (migrate reads the replicas). Target: a
    // cluster built by plain `redis-cli --cluster create`.
    let source = Lab::start(LabSpec::default());
    assert_eq!(source.load(2000).code, 0);
    let target = CliCluster::start(3);
    let state = tempfile::tempdir().unwrap();
    let child = spawn_migrate(
        state.path(),
        &[
            "--from",
            &source.seed(),
            "--to",
            &target.seed(),
            "--follow",
            // In the stream phase the limit is 30 s at least (masters PING every 10 s).
            "--idle-timeout",
            "5s",
            "--yes",
            "--json",
        ],
    );
    let on_target = |key: &str| -> bool {
        // Other masters answer MOVED.
        target.ports().iter().any(|&p| {
            redis::cmd("EXISTS")
                .arg(key)
                .query::<u64>(&mut conn(p))
                .is_ok_and(|n| n == 1)
        })
    };
    let write = |key: &str| {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .query(&mut conn(owner(source.port, 3, key.as_bytes())))
            .unwrap();
    };
    let wait_for = |key: &str, limit: Duration| -> Duration {
        let t = Instant::now();
        while !on_target(key) {
            assert!(
                t.elapsed() < limit,
                "{key} not on the target after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        t.elapsed()
    };
    write("{a}before");
    wait_for("{a}before", Duration::from_secs(30));

    // Freeze every source replica (SIGSTOP: the socket stays open, nothing comes): its
    // shard's stream goes silent, counts as broken after the idle limit and moves to the
    // master; writes made meanwhile arrive.
    let ports: Vec<u16> = (source.port..source.port + 6).collect();
    let replicas: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| source.redis_cli(p, &["ROLE"]).starts_with("slave"))
        .collect();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    let signal = |sig: &str| {
        for &p in &replicas {
            let pid = source.pid(p).to_string();
            assert!(Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success());
        }
    };
    signal("-STOP");
    let keys = ["{a}frozen", "{b}frozen", "{c}frozen"];
    for k in keys {
        write(k);
    }
    let took: Vec<Duration> = keys
        .iter()
        .map(|k| wait_for(k, Duration::from_secs(90)))
        .collect();
    signal("-CONT");
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let r = output(child);
    assert_eq!(r.code, 130, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("no data for 30s; reconnecting"),
        "{}",
        r.stderr
    );
    let report = r.json();
    for s in report["shards"].as_array().unwrap() {
        assert_eq!(s["role"], "master", "{s}");
        assert!(s["reconnects"].as_u64().unwrap() >= 1, "{s}");
    }
    // Not before the idle limit: a quiet but healthy stream is not broken.
    assert!(took[0] >= Duration::from_secs(15), "{took:?}");
    assert_same(&snapshot(&masters(&source, 3)), &snapshot(&target.ports()));
    let r = run(rcops(&[
        "verify",
        "--from",
        &source.seed(),
        "--to",
        &target.seed(),
        "--mode",
        "full",
        "--from-masters",
    ])
    .env("RCOPS_STATE_DIR", state.path()));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

#[test]
fn a_big_value_rebuilt_while_its_target_master_fails_over_arrives_whole() {
    // One hash of 600k fields, rebuilt in pieces (--big-key-bytes 1); the master of its slot
    // on the target fails over to its replica as soon as the temporary key appears there.
    let source = Standalone::start();
    let mut c = conn(source.port);
    let _: () = redis::cmd("EVAL")
        .arg("for i = 1, 600000 do redis.call('HSET', KEYS[1], 'field:' .. i, 'value-' .. i) end")
        .arg(1)
        .arg("bighash")
        .query(&mut c)
        .unwrap();
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("s:{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    let target = Lab::start(LabSpec {
        node_timeout_ms: 2000,
        ..Default::default()
    });
    let master = owner(target.port, 3, b"bighash");
    let (_, replica) = crate::backup::pairs(&target)
        .into_iter()
        .find(|&(m, _)| m == master)
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let child = spawn_migrate(
        state.path(),
        &[
            "--from",
            &source.addr(),
            "--to",
            &target.seed(),
            "--big-key-bytes",
            "1",
            "--yes",
            "--json",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut m = conn(master);
    loop {
        let tmp: Vec<String> = redis::cmd("KEYS")
            .arg("*rcops:rebuild*")
            .query(&mut m)
            .unwrap();
        if !tmp.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no rebuild seen on {master}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = target.redis_cli(replica, &["CLUSTER", "FAILOVER"]);
    wait_role(&target, replica, "master");
    let r = output(child);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["keys"]["failed"], 0, "{}", r.stdout);
    let masters: Vec<u16> = (target.port..target.port + 6)
        .filter(|&p| target.redis_cli(p, &["ROLE"]).starts_with("master"))
        .collect();
    assert!(masters.contains(&replica), "{masters:?}");
    assert_same(&snapshot(&[source.port]), &snapshot(&masters));
    for p in masters {
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("*rcops:rebuild*")
            .query(&mut conn(p))
            .unwrap();
        assert!(left.is_empty(), "{p}: {left:?}");
    }
}
