//! Bad input never panics or hangs: malformed addresses, unreachable seeds, a node that is not
//! in cluster mode, a node that accepts but never answers, bad flags, missing files.

use crate::common::*;
use std::time::{Duration, Instant};

fn fails_with(args: &[&str], code: i32, needle: &str) -> Run {
    let started = Instant::now();
    let r = run(&mut rcops(args));
    assert_eq!(r.code, code, "{args:?}: {}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(needle),
        "{args:?}: expected {needle:?} in {}",
        r.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{args:?} took {:?}",
        started.elapsed()
    );
    r
}

#[test]
fn malformed_and_unreachable_seeds_fail_in_one_line() {
    fails_with(
        &["check", "-c", "localhost:notaport"],
        64,
        "invalid node address \"localhost:notaport\"",
    );
    fails_with(&["nodes", "-c", "127.0.0.1"], 64, "expected HOST:PORT");
    fails_with(&["slots", "-c", "::1:7000"], 64, "IPv6 hosts need brackets");
    let a = free_port_block();
    let seeds = format!("127.0.0.1:{a},127.0.0.1:{}", a + 1);
    let r = fails_with(&["check", "-c", &seeds], 2, "no seed node answered");
    assert!(
        r.stderr.contains(&format!("127.0.0.1:{a}: unreachable")),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1);
    // JSON mode still prints a JSON document.
    let r = run(&mut rcops(&["check", "--json", "-c", &seeds]));
    assert_eq!(r.code, 2);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("no seed node answered"));
}

#[test]
fn a_silent_node_times_out_instead_of_hanging() {
    // Accepts connections (the kernel completes the handshake) but never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let r = fails_with(
        &["check", "-c", &addr, "--timeout", "500ms"],
        2,
        "no answer within 500ms",
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(r.stderr.contains(&addr));
    drop(listener);
}

#[test]
fn a_standalone_server_is_not_a_cluster() {
    let port = free_port_block();
    let dir = tempfile::tempdir().unwrap();
    let mut server = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seed = format!("127.0.0.1:{port}");
    for cmd in ["check", "nodes", "slots", "info"] {
        fails_with(
            &[cmd, "-c", &seed],
            2,
            &format!("{seed}: not a cluster node"),
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn usage_errors_exit_64() {
    fails_with(&["check"], 64, "no cluster given");
    fails_with(&["check", "--bogus"], 64, "unexpected argument");
    fails_with(
        &["check", "-c", "127.0.0.1:1", "--timeout", "0s"],
        64,
        "must be positive",
    );
    fails_with(
        &["check", "-c", "127.0.0.1:1", "--concurrency", "0"],
        64,
        "concurrency",
    );
    fails_with(
        &["check", "-c", "127.0.0.1:1", "--balance-threshold", "-3"],
        64,
        "percentage",
    );
    fails_with(
        &[
            "check",
            "-c",
            "127.0.0.1:1",
            "--password-file",
            "/nonexistent/pw",
        ],
        64,
        "cannot read password file",
    );
    fails_with(
        &[
            "check",
            "-c",
            "127.0.0.1:1",
            "--cacert",
            "/nonexistent/ca.pem",
        ],
        64,
        "cannot read CA certificate",
    );
    fails_with(&["lab", "up", "--masters", "0"], 64, "masters");
    let r = run(&mut rcops(&["--help"]));
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("check"));
}

#[test]
fn lab_commands_explain_missing_labs_and_busy_ports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    fails_with(&["lab", "status", "--dir", &d], 2, "no lab in");
    fails_with(&["lab", "down", "--dir", &d], 2, "no lab in");
    // A port in use is named before any process starts.
    let port = free_port_block();
    let _busy = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let p = port.to_string();
    let up = [
        "lab",
        "up",
        "--dir",
        &d,
        "--masters",
        "1",
        "--replicas",
        "0",
        "--port",
    ];
    fails_with(&[&up[..], &[&p]].concat(), 2, &format!("port {port}"));
    let free = free_port_block().to_string();
    fails_with(
        &[
            &up[..],
            &[&free, "--server-bin", "/nonexistent/redis-server"],
        ]
        .concat(),
        2,
        "not found",
    );
}
