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
    lab.cmd(&["backup", "follow", "--segment-age", age, "--json"])
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
    let split = even_split(3);
    let mut conns: Vec<redis::Connection> = (0..3).map(|i| conn(lab.port + i)).collect();
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !chain(state.path()).is_some_and(|c| {
        c["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !s["base"].is_null())
    }) {
        assert!(Instant::now() < deadline, "no base snapshots");
        std::thread::sleep(Duration::from_millis(100));
    }
    write(&lab, 0..300);
    std::thread::sleep(Duration::from_millis(1500));
    write(&lab, 300..400);
    // Killed: what came after its last flush is lost from the open segment, and read again
    // from the source by the next run.
    child.kill().unwrap();
    let _ = child.wait();
    write(&lab, 400..600);
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

    // Per shard: the base, then segments end to end (each starts where the one before it
    // ended); every write exactly once, in order, none missing.
    let c = chain(state.path()).unwrap();
    let dir = std::fs::read_dir(state.path().join("backups/chains"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mut seen = Vec::new();
    for s in c["shards"].as_array().unwrap() {
        let mut at = s["base"]["offset"].as_u64().unwrap();
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
    let want: Vec<u32> = (0..900).collect();
    let dups = seen.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dups, 0, "writes archived twice");
    assert_eq!(seen, want, "writes missing from the archive");
    assert!(c["gaps"].as_array().unwrap().is_empty(), "{c:#}");
}
