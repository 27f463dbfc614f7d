//! Backup and restore round trips on labs of their own: every key compared by its DUMP
//! payload (same server version on both sides, so equal bytes mean equal type, encoding and
//! value; sets and hashes by sorted contents) and its absolute expiry.

use crate::common::*;
use rcops_formats::slot::{even_split, key_slot};
use std::collections::BTreeMap;
use std::process::Command;

pub(crate) fn conn(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Key name → (DUMP payload, absolute expiry in ms or -1).
pub(crate) type Snapshot = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

/// Every key of a lab's masters: name → (DUMP payload, absolute expiry in ms or -1).
pub(crate) fn snapshot(ports: &[u16]) -> Snapshot {
    snapshot_with(ports, false)
}

/// With `semantic`, values are compared by content only (no DUMP), for different servers.
pub(crate) fn snapshot_with(ports: &[u16], semantic: bool) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    let mut out = BTreeMap::new();
    for &p in ports {
        let mut c = conn(p);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query(&mut c)
                .unwrap();
            for k in keys {
                // Hashtable-encoded sets and hashes serialize in iteration order, which depends
                // on insertion history: compare their contents sorted; everything else by DUMP.
                let kind: String = redis::cmd("TYPE").arg(&k).query(&mut c).unwrap();
                let dump: Vec<u8> = match kind.as_str() {
                    "set" => {
                        let mut m: Vec<Vec<u8>> =
                            redis::cmd("SMEMBERS").arg(&k).query(&mut c).unwrap();
                        m.sort();
                        m.concat()
                    }
                    "hash" => {
                        let mut m: Vec<(Vec<u8>, Vec<u8>)> =
                            redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
                        m.sort();
                        m.into_iter()
                            .flat_map(|(a, b)| [a, b])
                            .collect::<Vec<_>>()
                            .concat()
                    }
                    // A replica's stream groups carry its own entries-read and consumer times
                    // (replication does not copy them), so streams from a replica backup are
                    // compared by entries and group state.
                    "stream" => {
                        let entries: redis::Value = redis::cmd("XRANGE")
                            .arg(&k)
                            .arg("-")
                            .arg("+")
                            .query(&mut c)
                            .unwrap();
                        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
                            redis::cmd("XINFO")
                                .arg("GROUPS")
                                .arg(&k)
                                .query(&mut c)
                                .unwrap();
                        let groups: Vec<String> = groups
                            .iter()
                            .map(|g| {
                                format!(
                                    "{:?} {:?} {:?} {:?}",
                                    g.get("name"),
                                    g.get("consumers"),
                                    g.get("pending"),
                                    g.get("last-delivered-id")
                                )
                            })
                            .collect();
                        format!("{entries:?} {groups:?}").into_bytes()
                    }
                    "string" if semantic => {
                        redis::cmd("GET").arg(&k).query::<Vec<u8>>(&mut c).unwrap()
                    }
                    "list" if semantic => redis::cmd("LRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .query::<Vec<Vec<u8>>>(&mut c)
                        .unwrap()
                        .concat(),
                    "zset" if semantic => redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query::<Vec<Vec<u8>>>(&mut c)
                        .unwrap()
                        .concat(),
                    _ => redis::cmd("DUMP").arg(&k).query(&mut c).unwrap(),
                };
                let dump = [kind.as_bytes(), b":", &dump].concat();
                let ttl: i64 = redis::cmd("PEXPIRETIME").arg(&k).query(&mut c).unwrap();
                out.insert(k, (dump, ttl));
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    out
}

/// Compares two snapshots: same keys, same payloads, TTLs within a second.
pub(crate) fn assert_same(
    a: &BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
    b: &BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
) {
    let missing: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} vs {} keys; missing {missing:?}, extra {extra:?}",
        a.len(),
        b.len()
    );
    let mut diffs = Vec::new();
    for (k, (pa, ta)) in a {
        let (pb, tb) = &b[k];
        if pa != pb {
            diffs.push(format!("{:?}: value differs", String::from_utf8_lossy(k)));
        }
        let ttl_ok =
            (*ta < 0 && *tb < 0 && ta == tb) || (*ta >= 0 && *tb >= 0 && (ta - tb).abs() <= 1000);
        if !ttl_ok {
            diffs.push(format!(
                "{:?}: ttl {ta} vs {tb}",
                String::from_utf8_lossy(k)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences, e.g. {:?}",
        diffs.len(),
        &diffs[..diffs.len().min(5)]
    );
}

/// Extra data the sample load does not cover: stream groups with pending entries, empty and
/// binary strings, integers, big collections in their non-compact encodings.
pub(crate) fn plant_extras(lab: &Lab) {
    let m = |key: &[u8]| {
        lab.port
            + (even_split(3)
                .iter()
                .position(|r| {
                    let s = key_slot(key);
                    r.start <= s && s <= r.end
                })
                .unwrap() as u16)
    };
    let mut c = conn(m(b"x:stream"));
    let _: () = redis::cmd("XADD")
        .arg("x:stream")
        .arg("*")
        .arg("f")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("XADD")
        .arg("x:stream")
        .arg("*")
        .arg("f")
        .arg("2")
        .arg("g")
        .arg("3")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("x:stream")
        .arg("grp")
        .arg("0")
        .query(&mut c)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("grp")
        .arg("alice")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("x:stream")
        .arg(">")
        .query(&mut c)
        .unwrap();
    let mut c = conn(m(b"x:empty"));
    let _: () = redis::cmd("SET")
        .arg("x:empty")
        .arg("")
        .query(&mut c)
        .unwrap();
    let mut c = conn(m(b"x:int"));
    let _: () = redis::cmd("SET")
        .arg("x:int")
        .arg("-12345")
        .query(&mut c)
        .unwrap();
    let bin: Vec<u8> = (0..=255u8).collect();
    let mut c = conn(m(&bin));
    let _: () = redis::cmd("SET")
        .arg(&bin)
        .arg(&bin)
        .arg("EX")
        .arg(500)
        .query(&mut c)
        .unwrap();
    let mut c = conn(m(b"x:bigzset"));
    for i in 0..300 {
        let _: () = redis::cmd("ZADD")
            .arg("x:bigzset")
            .arg(i as f64 / 7.0)
            .arg(format!("m{i}"))
            .query(&mut c)
            .unwrap();
    }
    let mut c = conn(m(b"x:intset"));
    for i in -5..200 {
        let _: () = redis::cmd("SADD")
            .arg("x:intset")
            .arg(i * 1000)
            .query(&mut c)
            .unwrap();
    }
}

#[test]
fn backup_restores_into_a_cluster_of_another_shape_and_resumes() {
    let src = Lab::start(LabSpec::default());
    let state = tempfile::tempdir().unwrap();
    let st = state.path().display().to_string();
    let r = src.load(4000);
    assert_eq!(r.code, 0, "{}", r.stderr);
    plant_extras(&src);
    let src_ports: Vec<u16> = (src.port..src.port + 3).collect();
    let before = snapshot(&src_ports);
    assert!(before.len() >= 4006);

    let r = src.run(&["backup", "--json", "--state-dir", &st]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let v = r.json();
    let m = &v["manifest"];
    assert_eq!(m["status"], "complete");
    assert_eq!(m["shards"].as_array().unwrap().len(), 3);
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(manifest_keys(m) as usize, before.len());
    for s in m["shards"].as_array().unwrap() {
        assert_eq!(s["role"], "replica", "read from replicas by default");
        assert_eq!(s["rdb_version"], 10);
        assert!(s["compressed_bytes"].as_u64().unwrap() * 2 <= s["raw_bytes"].as_u64().unwrap());
        assert_eq!(s["sha256"].as_str().unwrap().len(), 64);
    }
    let r = run(&mut rcops(&["backup", "verify", &id, "--state-dir", &st]));
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let r = list(&st);
    assert_eq!(r.json()["sets"][0]["verified"]["ok"], true);

    // Into two masters: every key at its new owner, identical.
    let dst = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let dst_ports: Vec<u16> = vec![dst.port, dst.port + 1];
    let r = dst.run(&["restore", &id, "--state-dir", &st]);
    assert_eq!(r.code, 64, "plan only without --yes: {}", r.stderr);
    assert!(snapshot(&dst_ports).is_empty());
    let r = dst.run(&["restore", &id, "--state-dir", &st, "--yes", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    assert_eq!(
        r.json()["total"]["restored"].as_u64().unwrap() as usize,
        before.len()
    );
    assert_same(&before, &snapshot(&dst_ports));

    // Again, default policy: refused before writing anything.
    let mut c = conn(dst.port);
    let victim: Vec<u8> = snapshot(&[dst.port]).keys().next().unwrap().clone();
    let _: () = redis::cmd("DEL").arg(&victim).query(&mut c).unwrap();
    let r = dst.run(&["restore", &id, "--state-dir", &st, "--yes"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("already holds") && r.stderr.contains("nothing was written"),
        "{}",
        r.stderr
    );
    let exists: i64 = redis::cmd("EXISTS").arg(&victim).query(&mut c).unwrap();
    assert_eq!(exists, 0, "a refused restore wrote a key");
    // Skip: only the missing key is written, the rest reported as existing.
    let r = dst.run(&[
        "restore",
        &id,
        "--state-dir",
        &st,
        "--yes",
        "--on-conflict",
        "skip",
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["total"]["restored"], 1);
    assert_eq!(
        v["total"]["skipped_existing"].as_u64().unwrap() as usize,
        before.len() - 1
    );
    assert_same(&before, &snapshot(&dst_ports));

    // Interrupted (Ctrl-C) then resumed into an empty cluster: nothing lost, nothing extra.
    let dst2 = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let dst2_ports = vec![dst2.port, dst2.port + 1];
    // A slow restore in the background, to be interrupted.
    let slow_restore = || {
        dst2.cmd(&[
            "restore",
            &id,
            "--state-dir",
            &st,
            "--yes",
            "--batch",
            "20",
            "--rate",
            "2000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let resume = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            &id,
            "--state-dir",
            &st,
            "--yes",
            "--resume",
            "--json",
        ];
        args.extend_from_slice(extra);
        let r = dst2.run(&args);
        assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
        let v = r.json();
        assert!(v["total"]["already_done"].as_u64().unwrap() > 0, "{v}");
        v
    };
    let child = slow_restore();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let partial = snapshot(&dst2_ports).len();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        partial > 0 && partial < before.len(),
        "interrupted after {partial} keys"
    );
    resume(&[]);
    assert_same(&before, &snapshot(&dst2_ports));

    // Killed outright (no chance to save a checkpoint): the batches written after the last
    // checkpoint are replaced on resume, not reported as conflicts, and nothing is lost.
    for port in &dst2_ports {
        let _: () = redis::cmd("FLUSHALL").query(&mut conn(*port)).unwrap();
    }
    let _ = std::fs::remove_dir_all(std::path::Path::new(&st).join("restore"));
    let mut child = slow_restore();
    std::thread::sleep(std::time::Duration::from_millis(900));
    let _ = child.kill();
    let _ = child.wait();
    let partial = snapshot(&dst2_ports).len();
    assert!(
        partial > 0 && partial < before.len(),
        "killed after {partial} keys"
    );
    // Resumed with smaller batches than the killed run: the window counts keys, not batches.
    let v = resume(&["--batch", "7"]);
    assert_eq!(
        (
            v["total"]["skipped_existing"].as_u64(),
            v["total"]["failed"].as_u64()
        ),
        (Some(0), Some(0)),
        "{v}"
    );
    assert_same(&before, &snapshot(&dst2_ports));
}

#[test]
fn partial_backups_and_corrupt_files_are_refused_loudly() {
    let src = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let state = tempfile::tempdir().unwrap();
    let st = state.path().display().to_string();
    assert_eq!(src.load(2000).code, 0);

    // A full disk (here: a 1 KiB file-size limit, SIGXFSZ ignored so writes fail with
    // EFBIG): the command fails naming the cause and leaves nothing that looks complete.
    let full = tempfile::tempdir().unwrap();
    let fd = full.path().display().to_string();
    let mut c = Command::new("bash");
    c.args(["-c", "trap '' XFSZ; ulimit -f 1; exec \"$@\"", "rcops"])
        .arg(bin())
        .args(["backup", "--dir", &fd, "-c", &src.seed()]);
    let r = run(&mut c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("File too large"), "{}", r.stderr);
    let r = run(&mut rcops(&["backup", "list", "--json", "--dir", &fd]));
    let sets = r.json()["sets"].clone();
    assert_eq!(sets.as_array().unwrap().len(), 1, "{sets}");
    assert_ne!(sets[0]["status"], "complete", "{sets}");
    let unfinished = sets[0]["id"].as_str().unwrap();
    let r = src.run(&["restore", unfinished, "--dir", &fd, "--yes"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no backup"), "{}", r.stderr);

    // A master that dies while its snapshot streams: that shard fails, the set is partial.
    let victim = src.port + 1;
    let mut c = conn(victim);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("rdb-key-save-delay")
        .arg(2000)
        .query(&mut c)
        .unwrap();
    let child = src
        .cmd(&["backup", "--state-dir", &st, "--from-masters", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let pid = src.pid(victim).to_string();
    let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
    let _ = Command::new("kill").args(["-9", &pid]).status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifest"]["status"], "partial");
    let failed: Vec<&serde_json::Value> = v["manifest"]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["error"]
        .as_str()
        .unwrap()
        .contains(&victim.to_string()));
    let id = v["manifest"]["id"].as_str().unwrap();
    let r = run(&mut rcops(&["backup", "verify", id, "--state-dir", &st]));
    assert_eq!(r.code, 2);
    let r = src.run(&["restore", id, "--state-dir", &st, "--yes"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("partial"), "{}", r.stderr);

    // A good shard file: flipped byte and truncation are errors naming an offset.
    let folder = v["path"].as_str().unwrap();
    let good = v["manifest"]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["ok"] == true)
        .unwrap();
    let zst = std::path::Path::new(folder).join(good["file"].as_str().unwrap());
    let raw = zstd::decode_all(std::fs::File::open(&zst).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("ok.rdb");
    std::fs::write(&plain, &raw).unwrap();
    let r = run(&mut rcops(&[
        "rdb",
        "info",
        plain.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["keys"], good["keys"]);
    let nkeys = good["keys"].as_u64().unwrap() as usize;
    // keys, dump and memory over the same file: one line / one JSON document per key; the
    // zstd shard reads the same as the plain file.
    let p = plain.to_str().unwrap();
    let keys = run(&mut rcops(&["rdb", "keys", p]));
    assert_eq!(keys.code, 0, "{}", keys.stderr);
    assert_eq!(keys.stdout.lines().count(), nkeys);
    let hashes = run(&mut rcops(&["rdb", "keys", p, "--match", "lab:hash:*"]));
    assert!(hashes.stdout.lines().all(|k| k.starts_with("lab:hash:")));
    assert!(hashes.stdout.lines().count() > 0);
    let dump = run(&mut rcops(&["rdb", "dump", zst.to_str().unwrap()]));
    assert_eq!(dump.code, 0, "{}", dump.stderr);
    let docs: Vec<serde_json::Value> = dump
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), nkeys);
    assert!(docs.iter().any(|d| d["value"]["type"] == "stream"));
    // Decoding on other threads writes the same lines in the same order.
    let threaded = run(&mut rcops(&[
        "rdb",
        "dump",
        "--threads",
        "3",
        zst.to_str().unwrap(),
    ]));
    assert_eq!(threaded.code, 0, "{}", threaded.stderr);
    assert!(threaded.stdout == dump.stdout, "threaded dump differs");
    let mem = run(&mut rcops(&["rdb", "memory", p, "--top", "3", "--json"]));
    assert_eq!(mem.code, 0, "{}", mem.stderr);
    let m = mem.json();
    assert_eq!(m["top"].as_array().unwrap().len(), 3);
    let counted: u64 = m["by_type"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t["keys"].as_u64().unwrap())
        .sum();
    assert_eq!(counted as usize, nkeys);
    let mut flipped = raw.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x5a;
    let bad = dir.path().join("flipped.rdb");
    std::fs::write(&bad, &flipped).unwrap();
    let r = run(&mut rcops(&["rdb", "info", bad.to_str().unwrap()]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("byte ") || r.stderr.contains("checksum mismatch"),
        "{}",
        r.stderr
    );
    let cut = dir.path().join("cut.rdb");
    std::fs::write(&cut, &raw[..raw.len() * 2 / 3]).unwrap();
    let r = run(&mut rcops(&["rdb", "info", cut.to_str().unwrap()]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("truncated") && r.stderr.contains("byte "),
        "{}",
        r.stderr
    );
    // The backup's own file, damaged on disk: verify names the checksum.
    let mut bytes = std::fs::read(&zst).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&zst, &bytes).unwrap();
    let r = run(&mut rcops(&[
        "backup",
        "verify",
        folder,
        "--state-dir",
        &st,
    ]));
    assert_eq!(r.code, 2);
    assert!(r.stdout.contains("SHA-256 mismatch"), "{}", r.stdout);
    // Prune: a plan without --yes (exit 64, nothing deleted), then the deletion.
    let r = run(&mut rcops(&[
        "backup",
        "prune",
        "--keep-last",
        "0",
        "--state-dir",
        &st,
    ]));
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(std::path::Path::new(folder).is_dir());
    let r = run(&mut rcops(&[
        "backup",
        "prune",
        "--keep-last",
        "0",
        "--yes",
        "--state-dir",
        &st,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!std::path::Path::new(folder).exists());
    let r = list(&st);
    assert_eq!(r.json()["sets"].as_array().unwrap().len(), 0);
    // Not an RDB at all.
    let r = run(&mut rcops(&["rdb", "info", "Cargo.toml"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not an RDB file"), "{}", r.stderr);
}

/// A key tag whose slot lies in the first of `n` masters' ranges.
fn tag_on_first_master(n: usize) -> String {
    let r = even_split(n)[0];
    (0..)
        .map(|i| format!("t{i}"))
        .find(|t| {
            let s = key_slot(format!("{{{t}}}").as_bytes());
            r.start <= s && s <= r.end
        })
        .unwrap()
}

/// GET from the owner of the key in a 2-master lab whose first port is `port`.
fn get(port: u16, key: &str) -> Option<String> {
    let s = key_slot(key.as_bytes());
    let owner = port
        + even_split(2)
            .iter()
            .position(|r| r.start <= s && s <= r.end)
            .unwrap() as u16;
    redis::cmd("GET").arg(key).query(&mut conn(owner)).unwrap()
}

/// Turns on `appendonly` (with `extra` settings first) and waits for the initial rewrite
/// that writes the base file.
fn enable_aof(c: &mut redis::Connection, extra: &[(&str, &str)]) {
    for (k, v) in extra.iter().chain(&[("appendonly", "yes")]) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query(c)
            .unwrap();
    }
    for _ in 0..100 {
        let info: String = redis::cmd("INFO").arg("persistence").query(c).unwrap();
        if info.contains("aof_rewrite_in_progress:0")
            && info.contains("aof_rewrite_scheduled:0")
            && info.contains("aof_enabled:1")
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the AOF rewrite did not finish in 10 s");
}

#[test]
fn aof_directories_replay_with_transactions_and_point_in_time() {
    let src = Lab::start(LabSpec {
        replicas: 0,
        ..Default::default()
    });
    let mut c = conn(src.port);
    let t = tag_on_first_master(3);
    let k = |s: &str| format!("{{{t}}}:{s}");
    // In the base (the rewrite's RDB preamble): a value above 16 MiB, spilled to a file
    // while the preamble is read, then streamed into one RESTORE.
    let big: String = (0..17u32 << 20)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let _: () = redis::cmd("SET")
        .arg(k("big"))
        .arg(&big)
        .query(&mut c)
        .unwrap();
    enable_aof(&mut c, &[("aof-timestamp-enabled", "yes")]);
    let q = |c: &mut redis::Connection, args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::Value = cmd.query(c).unwrap();
    };
    q(&mut c, &["SET", &k("s"), "v1"]);
    q(&mut c, &["HSET", &k("h"), "f", "x"]);
    for _ in 0..3 {
        q(&mut c, &["INCR", &k("n")]);
    }
    q(&mut c, &["RPUSH", &k("l"), "a", "b", "c"]);
    q(&mut c, &["SET", &k("gone"), "1"]);
    q(&mut c, &["DEL", &k("gone")]);
    q(&mut c, &["EXPIRE", &k("s"), "5000"]);
    let mut p = redis::pipe();
    p.cmd("MULTI")
        .cmd("SET")
        .arg(k("a"))
        .arg("1")
        .cmd("SET")
        .arg(k("b"))
        .arg("2")
        .cmd("EXEC");
    let _: redis::Value = p.query(&mut c).unwrap();
    // A later write, in a later second: --until before it leaves it out.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    q(&mut c, &["SET", &k("late"), "yes"]);
    std::thread::sleep(std::time::Duration::from_millis(1200)); // appendfsync everysec
    let aofdir = src.path().join(src.port.to_string()).join("appendonlydir");
    assert!(aofdir.is_dir());

    let dst = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let dir = aofdir.display().to_string();
    let r = dst.run(&[
        "restore",
        "--aof",
        &dir,
        "--until",
        &cut.to_string(),
        "--yes",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let v = r.json();
    assert_eq!(v["transactions"], 1);
    assert!(v["stopped_at_ts"].as_u64().unwrap() > cut);
    assert_eq!(get(dst.port, &k("late")), None);
    assert_eq!(get(dst.port, &k("n")).as_deref(), Some("3"));
    assert!(
        get(dst.port, &k("big")) == Some(big),
        "the big base value differs"
    );
    // Into a cluster that holds keys: refused (replay is not idempotent), nothing written.
    let r = dst.run(&["restore", "--aof", &dir, "--yes"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stderr, r.stdout);
    assert!(r.stderr.contains("not idempotent"), "{}", r.stderr);
    assert!(r.stdout.contains("keys there now"), "{}", r.stdout);
    assert_eq!(get(dst.port, &k("n")).as_deref(), Some("3"));
    assert_eq!(get(dst.port, &k("late")), None);
    // --into-non-empty must say what happens to base keys.
    let r = dst.run(&["restore", "--aof", &dir, "--into-non-empty", "--yes"]);
    assert_eq!(r.code, 64, "{}\n{}", r.stderr, r.stdout);
    let r = dst.run(&[
        "restore",
        "--aof",
        &dir,
        "--into-non-empty",
        "--on-conflict",
        "replace",
        "--yes",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    assert_eq!(get(dst.port, &k("late")).as_deref(), Some("yes"));
    assert_eq!(get(dst.port, &k("a")).as_deref(), Some("1"));
    assert_eq!(get(dst.port, &k("gone")), None);
    // Replayed twice: INCR ran twice as often — replay is not idempotent, as with redis itself.
    assert_eq!(get(dst.port, &k("n")).as_deref(), Some("6"));

    // A hand-written AOF: a transaction across slots is split and reported, FLUSHALL is not
    // replayed, commands for db 1 are skipped.
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("x.aof");
    let resp = |args: &[&str]| {
        let mut s = format!("*{}\r\n", args.len());
        for a in args {
            s.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s
    };
    let text = [
        resp(&["MULTI"]),
        resp(&["SET", "x1", "a"]),
        resp(&["SET", "x2", "b"]),
        resp(&["EXEC"]),
        resp(&["FLUSHALL"]),
        resp(&["SELECT", "1"]),
        resp(&["SET", "elsewhere", "z"]),
        resp(&["SELECT", "0"]),
        resp(&["MSET", "m1", "1", "m2", "2"]),
    ]
    .concat();
    std::fs::write(&f, text).unwrap();
    let into = ["--into-non-empty", "--on-conflict", "skip", "--yes"];
    let r = dst.run(
        &[
            &["restore", "--aof", f.to_str().unwrap(), "--json"][..],
            &into,
        ]
        .concat(),
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stderr, r.stdout);
    let v = r.json();
    assert_eq!(v["transactions_split"], 1);
    assert_eq!(v["keyless_skipped"]["FLUSHALL"], 1);
    assert_eq!(v["other_db_skipped"], 1);
    assert_eq!(v["failed"], 0);
    assert_eq!(get(dst.port, "x2").as_deref(), Some("b"));
    assert_eq!(get(dst.port, "m2").as_deref(), Some("2"));
    assert_eq!(
        get(dst.port, &k("a")).as_deref(),
        Some("1"),
        "FLUSHALL was replayed"
    );
    // Truncated: an error with an offset, exit 2.
    let bad = tmp.path().join("cut.aof");
    std::fs::write(&bad, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nab").unwrap();
    let r = dst.run(&[&["restore", "--aof", bad.to_str().unwrap()][..], &into].concat());
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("byte "), "{}", r.stderr);
}

#[test]
fn valkey_9_backs_up_restores_and_migrates_into_redis_7() {
    let Ok(valkey) = std::env::var("RCOPS_VALKEY_SERVER") else {
        eprintln!("SKIPPED: RCOPS_VALKEY_SERVER is not set (scripts/test fetches valkey-server)");
        return;
    };
    // The Valkey lab, by hand: the fixture starts Debian's redis-server.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_block();
    let d = dir.path().display().to_string();
    let r = run(&mut rcops(&[
        "lab",
        "up",
        "--port",
        &port.to_string(),
        "--dir",
        &d,
        "--masters",
        "3",
        "--replicas",
        "0",
        "--server-bin",
        &valkey,
    ]));
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = rcops(&["lab", "down", "--dir", &self.0]).output();
        }
    }
    let _down = Down(d.clone());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(&mut rcops(&["lab", "load", "--keys", "3000", "--dir", &d]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ports: Vec<u16> = (port..port + 3).collect();
    let before = snapshot_with(&ports, true);
    let state = tempfile::tempdir().unwrap();
    let st = state.path().display().to_string();
    let seed = format!("127.0.0.1:{port}");
    // A complete backup of the Valkey lab: its manifest.
    let backup = || {
        let r = run(&mut rcops(&[
            "backup",
            "-c",
            &seed,
            "--state-dir",
            &st,
            "--json",
        ]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json()["manifest"].clone()
    };
    let m = backup();
    assert!(m["shards"][0]["server_version"]
        .as_str()
        .unwrap()
        .starts_with('9'));
    // Its own format (VALKEY080), not the RDB 11 it falls back to for replicas that do not
    // announce a version.
    assert_eq!(m["shards"][0]["rdb_version"], 80);
    let id = m["id"].as_str().unwrap().to_string();
    let dst = Lab::start(LabSpec {
        masters: 2,
        replicas: 0,
        ..Default::default()
    });
    let r = dst.run(&["restore", &id, "--state-dir", &st, "--yes", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    assert_eq!(r.json()["target_rdb_version"], 10);
    assert_same(&before, &snapshot_with(&[dst.port, dst.port + 1], true));

    // Valkey's AOF: its base file carries a VALKEY080 preamble. Turned on for one master,
    // replayed into the emptied Redis 7 target: that master's keys, all of them.
    let mut c = conn(port);
    enable_aof(&mut c, &[]);
    let base_keys: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    let aofdir = dir.path().join(port.to_string()).join("appendonlydir");
    let base = std::fs::read_dir(&aofdir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".base.rdb"))
        .expect("a base file");
    assert!(std::fs::read(base.path()).unwrap().starts_with(b"VALKEY"));
    for p in [dst.port, dst.port + 1] {
        dst.redis_cli(p, &["FLUSHALL"]);
    }
    let aof = aofdir.display().to_string();
    // Every base value rebuilt piece by piece (--big-key-bytes 1): the master's keys, all of
    // them, the same.
    let r = dst.run(&[
        "restore",
        "--aof",
        &aof,
        "--big-key-bytes",
        "1",
        "--yes",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    assert_eq!(r.json()["preamble_keys"], base_keys);
    let restored: u64 = [dst.port, dst.port + 1]
        .iter()
        .map(|&p| dst.redis_cli(p, &["DBSIZE"]).parse::<u64>().unwrap())
        .sum();
    assert_eq!(restored, base_keys);
    assert_same(
        &snapshot_with(&[port], true),
        &snapshot_with(&[dst.port, dst.port + 1], true),
    );

    // A hash with a field expiration, which only Valkey 9 has: before rcops announced a
    // version, Valkey's sync child died on it ("Can't store key in RDB version 11") and the
    // shard failed. Redis 7 must be refused before anything is written; Valkey gets it back.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-c", "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    cli(&["HSET", "{hx}fields", "a", "1", "b", "2"]);
    assert_eq!(
        cli(&[
            "HPEXPIREAT",
            "{hx}fields",
            "4102444800000",
            "FIELDS",
            "1",
            "a"
        ]),
        "1"
    );
    let id = backup()["id"].as_str().unwrap().to_string();
    let only = ["--match", "{hx}*", "--state-dir", &st, "--yes"];
    let r = dst.run(&[&["restore", &id][..], &only[..]].concat());
    assert_eq!(r.code, 2, "{}\n{}", r.stderr, r.stdout);
    assert!(
        r.stderr.contains("{hx}fields") && r.stderr.contains("RDB version 80"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("nothing was written"), "{}", r.stderr);
    assert_eq!(
        dst.redis_cli(dst.port, &["-c", "EXISTS", "{hx}fields"]),
        "0"
    );
    cli(&["DEL", "{hx}fields"]);
    let r = run(&mut rcops(
        &[&["restore", &id, "-c", &seed][..], &only[..]].concat(),
    ));
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    assert_eq!(
        cli(&["HPEXPIRETIME", "{hx}fields", "FIELDS", "2", "a", "b"]),
        "4102444800000\n-1"
    );
    assert_eq!(cli(&["HGET", "{hx}fields", "b"]), "2");

    // Migrate Valkey 9 → Redis 7 into another shape: by RESTORE of re-encoded payloads, then
    // with every value rebuilt piece by piece (--big-key-bytes 1), which needs no re-encoding.
    // The field-expiring hash, which Redis 7 cannot hold, is left out. --method scan does
    // the same from Valkey's DUMP payloads (version 80: re-encoded or rebuilt likewise).
    cli(&["DEL", "{hx}fields"]);
    for (big, method) in [
        ("32MiB", "sync"),
        ("1", "sync"),
        ("32MiB", "scan"),
        ("1", "scan"),
    ] {
        for p in [dst.port, dst.port + 1] {
            dst.redis_cli(p, &["FLUSHALL"]);
        }
        let r = run(&mut rcops(&[
            "migrate",
            "--from",
            &seed,
            "--to",
            &dst.seed(),
            "--big-key-bytes",
            big,
            "--method",
            method,
            "--state-dir",
            &st,
            "--yes",
            "--json",
        ]));
        assert_eq!(r.code, 0, "{method} {big}: {}\n{}", r.stderr, r.stdout);
        assert_same(
            &snapshot_with(&ports, true),
            &snapshot_with(&[dst.port, dst.port + 1], true),
        );
    }
}

/// `(master port, replica port)` pairs of a lab, from `ROLE`.
/// `backup list --json` of the state directory `st`.
fn list(st: &str) -> Run {
    run(&mut rcops(&["backup", "list", "--json", "--state-dir", st]))
}

pub(crate) fn pairs(lab: &Lab) -> Vec<(u16, u16)> {
    let ports: Vec<u16> = (0..lab.nodes as u16).map(|i| lab.port + i).collect();
    let mut out = Vec::new();
    for &p in &ports {
        let role = lab.redis_cli(p, &["ROLE"]);
        let mut lines = role.lines();
        if lines.next() == Some("slave") {
            let master: u16 = lines.nth(1).unwrap().trim().parse().unwrap();
            out.push((master, p));
        }
    }
    out.sort();
    out
}

pub(crate) fn signal(lab: &Lab, port: u16, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &lab.pid(port).to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn partial_dirs(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".partial"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn backups_skip_frozen_replicas_and_failed_masters_and_stop_cleanly() {
    let lab = Lab::start(LabSpec {
        node_timeout_ms: 1000,
        ..Default::default()
    });
    assert_eq!(lab.load(3000).code, 0);
    let state = tempfile::tempdir().unwrap();
    let st = state.path().display().to_string();
    let dir = state.path().join("backups");
    let pairs = pairs(&lab);
    assert_eq!(pairs.len(), 3, "{pairs:?}");

    // A frozen replica: not chosen (discovery saw it time out); its master is read instead,
    // well within the timeouts, and the set is complete.
    let (m0, r0) = pairs[0];
    signal(&lab, r0, "-STOP");
    let started = std::time::Instant::now();
    let r = lab.run(&["backup", "--state-dir", &st, "--timeout", "1s", "--json"]);
    let took = started.elapsed();
    signal(&lab, r0, "-CONT");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    let v = r.json();
    assert_eq!(v["manifest"]["status"], "complete");
    let shards = v["manifest"]["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3);
    let s0 = shards
        .iter()
        .find(|s| s["node"] == format!("127.0.0.1:{m0}"))
        .unwrap_or_else(|| panic!("shard of {m0} not read from its master: {v:#}"));
    assert_eq!(s0["role"], "master");
    for (_, r) in &pairs[1..] {
        assert!(
            shards
                .iter()
                .any(|s| s["node"] == format!("127.0.0.1:{r}") && s["role"] == "replica"),
            "healthy replicas are the sources: {v:#}"
        );
    }
    let warnings = v["manifest"]["warnings"].to_string();
    assert!(
        warnings.contains(&format!(
            "127.0.0.1:{r0}: replica of 127.0.0.1:{m0} not used"
        )),
        "{warnings}"
    );
    assert_eq!(manifest_keys(&v["manifest"]), 3000);

    // A failover (old master frozen, its replica promoted): the old master is in CLUSTER
    // NODES but no shard, so the backup is complete, with a warning naming it.
    let (m1, r1) = pairs[1];
    signal(&lab, m1, "-STOP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let promoted = lab.redis_cli(r1, &["ROLE"]).starts_with("master");
        let nodes = lab.redis_cli(m0, &["CLUSTER", "NODES"]);
        let failed = nodes
            .lines()
            .any(|l| l.contains(&format!(":{m1}@")) && l.contains("master,fail "));
        // The view rcops reads must show the promotion too (the new owner of the slots),
        // not only the failure: gossip brings the two at different moments.
        let owns = nodes.lines().any(|l| {
            l.contains(&format!(":{r1}@")) && l.contains(" master ") && l.contains("5461-10922")
        });
        if promoted && failed && owns {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failover:\n{nodes}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let started = std::time::Instant::now();
    let r = lab.run(&["backup", "--state-dir", &st, "--timeout", "1s"]);
    let took = started.elapsed();
    signal(&lab, m1, "-CONT");
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    assert!(r.stdout.contains("complete"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains(&format!("127.0.0.1:{m1}: failed master without slots")),
        "{}",
        r.stderr
    );

    // Ctrl-C mid-stream: exit 130, said so, and no unfinished folder left behind.
    for p in [r1, m0, pairs[2].0] {
        lab.redis_cli(p, &["CONFIG", "SET", "rdb-key-save-delay", "3000"]);
    }
    // A backup of the slowed masters, left running for 1.5 s.
    let slow_backup = || {
        let child = lab
            .cmd(&["backup", "--state-dir", &st, "--from-masters"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        child
    };
    let child = slow_backup();
    assert_eq!(partial_dirs(&dir).len(), 1, "a backup is being written");
    let listed = run(&mut rcops(&["backup", "list", "--state-dir", &st]));
    assert!(listed.stdout.contains("in progress"), "{}", listed.stdout);
    let pid = child.id();
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("nothing was kept"),
        "{stderr}"
    );
    assert!(partial_dirs(&dir).is_empty(), "{:?}", partial_dirs(&dir));

    // kill -9 leaves an unfinished folder; prune removes it at once (its writer is gone)
    // and keeps the complete sets.
    let mut child = slow_backup();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(partial_dirs(&dir).len(), 1);
    let r = run(&mut rcops(&[
        "backup",
        "prune",
        "--keep-last",
        "10",
        "--yes",
        "--state-dir",
        &st,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(partial_dirs(&dir).is_empty(), "{}", r.stdout);
    let r = list(&st);
    assert_eq!(
        r.json()["sets"].as_array().unwrap().len(),
        2,
        "both complete sets kept"
    );

    // Streams' consumer-group state as the master keeps it (a replica has no entries-read):
    // --from-masters restores XINFO GROUPS' entries-read and lag.
    for p in [r1, m0, pairs[2].0] {
        lab.redis_cli(p, &["CONFIG", "SET", "rdb-key-save-delay", "0"]);
    }
    let cli = |args: &[&str]| lab.redis_cli(m0, &[&["-c"][..], args].concat());
    for i in 0..200 {
        cli(&["XADD", "events", "*", "n", &i.to_string()]);
    }
    assert_eq!(cli(&["XGROUP", "CREATE", "events", "g", "0"]), "OK");
    cli(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "COUNT",
        "50",
        "STREAMS",
        "events",
        ">",
    ]);
    let groups = || cli(&["XINFO", "GROUPS", "events"]);
    let before = groups();
    assert!(before.contains("entries-read\n50\nlag\n150"), "{before}");
    let r = lab.run(&["backup", "--state-dir", &st, "--from-masters", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = r.json()["manifest"]["id"].as_str().unwrap().to_string();
    for p in [r1, m0, pairs[2].0] {
        lab.redis_cli(p, &["FLUSHALL"]);
    }
    let r = lab.run(&["restore", &id, "--state-dir", &st, "--yes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(groups(), before);
}
