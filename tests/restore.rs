//! Restore under faults: interruptions (SIGINT, `kill -9`) with `skip` and `--resume`, an
//! unhealthy target, a target master lost after its replica fell behind (failover, then
//! `--resume`), corrupt and multi-database sources, big keys. Every test asserts the
//! target's actual keys: values compared, pre-existing keys untouched.

use crate::backup::{assert_same, conn, snapshot};
use crate::common::*;
use rcops_formats::slot::{even_split, key_slot};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The port of the master owning `key` in a lab of `n` masters (slots split evenly).
fn owner(lab: &Lab, n: usize, key: &[u8]) -> u16 {
    let s = key_slot(key);
    lab.port
        + even_split(n)
            .iter()
            .position(|r| r.start <= s && s <= r.end)
            .unwrap() as u16
}

fn dbsize(ports: &[u16]) -> i64 {
    ports
        .iter()
        .map(|p| redis::cmd("DBSIZE").query::<i64>(&mut conn(*p)).unwrap())
        .sum()
}

/// A source lab with `keys` sample keys, backed up into `st`: (backup id, every key).
fn backed_up(keys: u32, st: &str) -> (String, crate::backup::Snapshot) {
    let src = Lab::start(LabSpec::default());
    assert_eq!(src.load(keys).code, 0);
    let before = snapshot(&[src.port, src.port + 1, src.port + 2]);
    let r = src.run(&["backup", "--json", "--state-dir", st]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let id = r.json()["manifest"]["id"].as_str().unwrap().to_string();
    (id, before)
}

/// A backup of sample keys and an empty 3-master target without replicas.
struct Setup {
    state: tempfile::TempDir,
    st: String,
    id: String,
    before: crate::backup::Snapshot,
    dst: Lab,
    ports: [u16; 3],
}

impl Setup {
    fn new(keys: u32) -> Setup {
        let state = tempfile::tempdir().unwrap();
        let st = state.path().display().to_string();
        let (id, before) = backed_up(keys, &st);
        let dst = Lab::start(LabSpec {
            replicas: 0,
            ..Default::default()
        });
        let ports = [dst.port, dst.port + 1, dst.port + 2];
        Setup {
            state,
            st,
            id,
            before,
            dst,
            ports,
        }
    }
}

/// Pseudo-random milliseconds in `lo..hi` (no rand crate in the tests: the clock's nanos).
fn jitter(lo: u64, hi: u64) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + n % (hi - lo)
}

#[test]
fn skip_with_resume_never_overwrites_and_interrupted_restores_finish() {
    let s = Setup::new(12_000);
    let (state, st, id, before, dst, ports) = (&s.state, &s.st, &s.id, &s.before, &s.dst, s.ports);
    // SIGINT and kill -9 at random points, twice each.
    for (round, signal) in ["-INT", "-9", "-INT", "-9"].iter().enumerate() {
        for p in ports {
            let _: () = redis::cmd("FLUSHALL").query(&mut conn(p)).unwrap();
        }
        let _ = std::fs::remove_dir_all(state.path().join("restore"));
        // Every sixth key is already there, with another value: skip must keep it.
        let pre: Vec<&Vec<u8>> = before.keys().step_by(6).collect();
        for k in &pre {
            let _: () = redis::cmd("SET")
                .arg(k.as_slice())
                .arg("PREEXISTING")
                .query(&mut conn(owner(dst, 3, k)))
                .unwrap();
        }
        // The kill -9 rounds rebuild every value piece by piece (--big-key-bytes 1): a kill
        // mid-value leaves a temporary key that the resume replaces.
        let big = if *signal == "-9" { "1" } else { "32MiB" };
        let args = [
            "restore",
            id,
            "--state-dir",
            st,
            "--yes",
            "--on-conflict",
            "skip",
            "--big-key-bytes",
            big,
        ];
        let child = dst
            .cmd(&[&args[..], &["--batch", "40", "--rate", "5000"]].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(jitter(300, 1500)));
        let _ = Command::new("kill")
            .args([*signal, &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        if *signal == "-INT" {
            assert_eq!(
                out.status.code(),
                Some(130),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut r = dst.run(&[&args[..], &["--resume", "--json"]].concat());
        if r.code == 64 {
            // Stopped before it wrote anything (still checking the files): no checkpoint.
            assert!(r.stderr.contains("no checkpoint"), "{}", r.stderr);
            assert_eq!(dbsize(&ports) as usize, pre.len(), "round {round}");
            r = dst.run(&[&args[..], &["--json"]].concat());
        }
        assert_eq!(
            r.code, 1,
            "round {round}: kept keys are findings\n{}",
            r.stderr
        );
        let v = r.json();
        assert_eq!(v["complete"], true, "{v}");
        assert_eq!(v["total"]["failed"], 0, "{v}");
        let t = &v["total"];
        let accounted = [
            "restored",
            "already_done",
            "skipped_existing",
            "skipped_expired",
        ]
        .iter()
        .map(|f| t[f].as_u64().unwrap())
        .sum::<u64>();
        assert_eq!(accounted as usize, before.len(), "{v}");
        // No temporary key of a value cut short is left behind.
        for p in ports {
            let left: Vec<String> = redis::cmd("KEYS")
                .arg("*rcops:rebuild*")
                .query(&mut conn(p))
                .unwrap();
            assert!(left.is_empty(), "round {round}: {left:?}");
        }
        // Pre-existing keys untouched, every other key identical to the source.
        let after = snapshot(&ports);
        let mut changed = 0;
        for k in &pre {
            let v: String = redis::cmd("GET")
                .arg(k.as_slice())
                .query(&mut conn(owner(dst, 3, k)))
                .unwrap_or_default();
            changed += usize::from(v != "PREEXISTING");
        }
        assert_eq!(
            changed, 0,
            "round {round}: {changed} pre-existing keys overwritten"
        );
        let mut want = before.clone();
        let mut got = after.clone();
        for k in &pre {
            want.remove(*k);
            got.remove(*k);
        }
        assert_same(&want, &got);
    }
}

#[test]
fn an_unhealthy_target_is_refused_and_failed_keys_are_retried_on_resume() {
    let s = Setup::new(6_000);
    let (st, id, before, dst, ports) = (&s.st, &s.id, &s.before, &s.dst, s.ports);
    // Slots 0-99 served by nobody: every node forgets them (the others stay writable).
    for p in ports {
        dst.redis_cli(p, &["CONFIG", "SET", "cluster-require-full-coverage", "no"]);
        dst.redis_cli(p, &["CLUSTER", "DELSLOTSRANGE", "0", "99"]);
    }
    dst.check_until(Duration::from_secs(20), |_, r| {
        finding(r, "slots_uncovered").is_some()
    });
    let args = ["restore", id, "--state-dir", st, "--yes"];
    let r = dst.run(&args);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("slots_uncovered") && r.stderr.contains("nothing was written"),
        "{}",
        r.stderr
    );
    assert_eq!(dbsize(&ports), 0, "a refused restore wrote keys");
    // Forced: the keys of those slots fail, the run says the restore is incomplete.
    let r = dst.run(&[&args[..], &["--force", "--json"]].concat());
    assert_eq!(r.code, 2, "{}", r.stderr);
    let v = r.json();
    let failed = v["total"]["failed"].as_u64().unwrap();
    let in_range = before.keys().filter(|k| key_slot(k) < 100).count() as u64;
    assert_eq!(failed, in_range, "{v}");
    assert_eq!(v["complete"], false);
    assert_eq!(dbsize(&ports) as usize, before.len() - in_range as usize);
    // The slots come back; --resume retries exactly the failed keys and covers the whole run.
    dst.redis_cli(dst.port, &["CLUSTER", "ADDSLOTSRANGE", "0", "99"]);
    dst.check_until(Duration::from_secs(30), |code, _| code < 2);
    let r = dst.run(&[&args[..], &["--resume", "--json"]].concat());
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let v = r.json();
    assert_eq!(v["total"]["restored"].as_u64(), Some(in_range), "{v}");
    assert_eq!(v["total"]["failed"], 0);
    assert_eq!(v["complete"], true);
    assert_same(before, &snapshot(&ports));
    // Nothing left to resume.
    let r = dst.run(&[&args[..], &["--resume"]].concat());
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(r.stderr.contains("no checkpoint"), "{}", r.stderr);
}

/// The ports serving as masters now (after a failover: the promoted replicas).
fn masters_now(lab: &Lab) -> Vec<u16> {
    (0..lab.nodes as u16)
        .map(|i| lab.port + i)
        .filter(|&p| lab.redis_cli(p, &["ROLE"]).starts_with("master"))
        .collect()
}

/// Waits until `replica` has replaced the dead `master`, resumes the restore `args` and
/// compares every key with the source.
fn resume_after_failover(
    dst: &Lab,
    master: u16,
    replica: u16,
    args: &[&str],
    before: &crate::backup::Snapshot,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dst.redis_cli(replica, &["ROLE"]).starts_with("master") {
        assert!(Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The dead node stays critical in `check`, but it owns no slots: no write blocker.
    dst.check_until(Duration::from_secs(30), |_, r| {
        finding(r, "node_fail").is_some() && finding(r, "cluster_state_fail").is_none()
    });
    let r = dst.run(&[args, &["--resume", "--json"]].concat());
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let v = r.json();
    assert_eq!(v["complete"], true, "{v}");
    assert_eq!(v["total"]["failed"], 0, "{v}");
    let masters = masters_now(dst);
    assert!(
        masters.contains(&replica) && !masters.contains(&master),
        "{masters:?}"
    );
    assert_same(before, &snapshot(&masters));
}

#[test]
fn keys_no_replica_acknowledged_are_resent_after_a_failover() {
    // A target master killed mid-restore, after its replica stopped reading for a while.
    // 60 MB over three masters: more than the kernel buffers a frozen replica's link holds.
    let state = tempfile::tempdir().unwrap();
    let st = state.path().display().to_string();
    let src = Lab::start(LabSpec {
        replicas: 0,
        ..Default::default()
    });
    // Incompressible values: RESTORE payloads (and the replication stream) stay 2 KB each.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut pipes: std::collections::HashMap<u16, redis::Pipeline> = Default::default();
    for i in 0..30_000 {
        let k = format!("big:{i}");
        let value: Vec<u8> = (0..250)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        pipes
            .entry(owner(&src, 3, k.as_bytes()))
            .or_default()
            .set(k, value)
            .ignore();
    }
    for (p, pipe) in pipes {
        let _: () = pipe.query(&mut conn(p)).unwrap();
    }
    let before = snapshot(&[src.port, src.port + 1, src.port + 2]);
    let r = src.run(&["backup", "--json", "--state-dir", &st]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = r.json()["manifest"]["id"].as_str().unwrap().to_string();

    let dst = Lab::start(LabSpec {
        node_timeout_ms: 1000,
        ..Default::default()
    });
    let (m0, r0) = crate::backup::pairs(&dst)[1];
    let args = [
        "restore",
        &id,
        "--state-dir",
        &st,
        "--yes",
        "--timeout",
        "1s",
    ];
    let child = dst
        .cmd(&[&args[..], &["--batch", "100", "--rate", "8000", "--json"]].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The replica stops reading while its master keeps acknowledging writes; then the master
    // dies and the replica, holding only part of them, takes over.
    std::thread::sleep(Duration::from_millis(600));
    crate::backup::signal(&dst, r0, "-STOP");
    std::thread::sleep(Duration::from_millis(2000));
    dst.kill_node(m0);
    crate::backup::signal(&dst, r0, "-CONT");
    let out = child.wait_with_output().unwrap();
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}\n{first}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(first["complete"], false, "{first}");
    // What the frozen replica did not acknowledge is not counted: without the fence, the
    // resume below finds thousands of keys gone with the old master.
    assert!(
        first["errors"]
            .to_string()
            .contains(&format!("127.0.0.1:{m0}: "))
            && first["errors"]
                .to_string()
                .contains("not confirmed by a replica"),
        "{first}"
    );
    resume_after_failover(&dst, m0, r0, &args, &before);
}

#[test]
fn corrupt_and_multi_database_sources_write_nothing() {
    let state = tempfile::tempdir().unwrap();
    let st = state.path().display().to_string();
    let (id, _) = backed_up(3_000, &st);
    let dst = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let ports = [dst.port, dst.port + 1];
    // Flags: a bogus type and a resume without a checkpoint are usage errors; a folder that
    // is not a backup set says so; --dry-run --json prints the plan.
    let r = dst.run(&[
        "restore",
        &id,
        "--state-dir",
        &st,
        "--type",
        "bogus",
        "--yes",
    ]);
    assert_eq!(r.code, 64, "{}", r.stderr);
    let r = dst.run(&["restore", &id, "--state-dir", &st, "--resume", "--yes"]);
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(r.stderr.contains("no checkpoint"), "{}", r.stderr);
    let empty = tempfile::tempdir().unwrap();
    let r = dst.run(&["restore", empty.path().to_str().unwrap(), "--yes"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a backup set"), "{}", r.stderr);
    let r = dst.run(&["restore", &id, "--state-dir", &st, "--dry-run", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["plan"]["source_keys"].as_u64(), Some(3_000), "{v}");
    assert_eq!(
        v["plan"]["preflight"]["files"][0]["verified"], "sha256",
        "{v}"
    );
    assert_eq!(v["refused"], serde_json::Value::Null);
    assert_eq!(dbsize(&ports), 0);

    // A shard whose SHA-256 does not match: refused before the first write.
    let folder = state.path().join("backups");
    let set = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&id[..8]))
        .unwrap()
        .path();
    let shard = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "zst"))
        .unwrap();
    let good = std::fs::read(&shard).unwrap();
    let raw = zstd::decode_all(good.as_slice()).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n * 3 / 4] ^= 0x01;
    std::fs::write(&shard, &bad).unwrap();
    let r = dst.run(&["restore", &id, "--state-dir", &st, "--yes"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("SHA-256 mismatch"), "{}", r.stderr);
    assert!(r.stderr.contains("nothing was written"), "{}", r.stderr);
    assert_eq!(dbsize(&ports), 0, "a corrupt shard was written");
    std::fs::write(&shard, &good).unwrap();

    // Plain RDBs: a flipped byte near the end (after most keys) and a truncation.
    let tmp = tempfile::tempdir().unwrap();
    let mut flipped = raw.clone();
    let n = flipped.len();
    flipped[n - 200] ^= 0x20;
    let cut = &raw[..raw.len() * 9 / 10];
    for (name, bytes) in [("flipped.rdb", &flipped[..]), ("cut.rdb", cut)] {
        let f = tmp.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        let r = dst.run(&["restore", f.to_str().unwrap(), "--yes"]);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("nothing was written"),
            "{name}: {}",
            r.stderr
        );
        assert_eq!(dbsize(&ports), 0, "{name} was written");
    }

    // A standalone RDB with two databases holding the same name.
    let s = Standalone::start();
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{}/", s.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("k1")
        .arg("zero")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("only0")
        .arg("a")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(1).query(&mut c).unwrap();
    let _: () = redis::cmd("SET")
        .arg("k1")
        .arg("one")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    let rdb = s.dir.path().join("dump.rdb");
    let file = rdb.to_str().unwrap();
    let r = dst.run(&["restore", file, "--yes"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("db 0: 2 keys") && r.stderr.contains("db 1: 1 keys"),
        "{}",
        r.stderr
    );
    assert_eq!(dbsize(&ports), 0);
    let r = dst.run(&["restore", file, "--db", "7", "--yes"]);
    assert_eq!(r.code, 64, "{}", r.stderr);
    let r = dst.run(&["restore", file, "--db", "1", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let get = |k: &str| -> Option<String> {
        redis::cmd("GET")
            .arg(k)
            .query(&mut conn(owner(&dst, 2, k.as_bytes())))
            .unwrap()
    };
    assert_eq!(get("k1").as_deref(), Some("one"));
    assert_eq!(get("only0"), None);
    for p in ports {
        let _: () = redis::cmd("FLUSHALL").query(&mut conn(p)).unwrap();
    }
    let r = dst.run(&[
        "restore",
        file,
        "--merge-dbs",
        "--on-conflict",
        "replace",
        "--yes",
        "--json",
    ]);
    assert_eq!(r.code, 1, "collisions are findings: {}", r.stderr);
    assert_eq!(r.json()["db_collisions"], 1);
    assert_eq!(get("only0").as_deref(), Some("a"));
}

/// Peak resident memory of a running child, polled until it exits (VmHWM is the peak).
fn run_measuring(mut cmd: Command) -> (Run, u64) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (r, peak_kb * 1024)
}

#[test]
fn big_keys_restore_in_bounded_memory_within_the_default_timeout() {
    let src = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    // A 96 MB string of incompressible bytes, and a hash of 300,000 fields.
    let key = b"big:string".as_slice();
    let mut c = conn(owner(&src, 2, key));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..96 {
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let _: () = redis::cmd("APPEND")
            .arg(key)
            .arg(&chunk)
            .query(&mut c)
            .unwrap();
    }
    let hkey = b"big:hash".as_slice();
    let mut c = conn(owner(&src, 2, hkey));
    for i in 0..30 {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(hkey);
        for j in 0..10_000 {
            cmd.arg(format!("field:{i}:{j}"))
                .arg(format!("value-{:040}", i * 10_000 + j));
        }
        let _: () = cmd.query(&mut c).unwrap();
    }
    let before = snapshot(&[src.port, src.port + 1]);
    let state = tempfile::tempdir().unwrap();
    let st = state.path().display().to_string();
    let r = src.run(&["backup", "--json", "--state-dir", &st]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let id = r.json()["manifest"]["id"].as_str().unwrap().to_string();
    drop(src);

    let dst = Lab::start(LabSpec {
        masters: 3,
        replicas: 0,
        ..Default::default()
    });
    let (r, peak) =
        run_measuring(dst.cmd(&["restore", &id, "--state-dir", &st, "--yes", "--json"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    eprintln!("restore of a 96 MB key: peak RSS {} MB", peak >> 20);
    assert_eq!(r.json()["total"]["restored"], 2);
    assert!(
        peak < 120 << 20,
        "peak RSS {} MB restoring a 96 MB key",
        peak >> 20
    );
    assert_same(&before, &snapshot(&[dst.port, dst.port + 1, dst.port + 2]));
}
