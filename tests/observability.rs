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
