//! AUTH and TLS: a lab started with `--tls --requirepass`, reached with a CA, a client
//! certificate, a password from the environment or a file, and an ACL user; every mismatch
//! ends in a one-line error naming the node, exit 2, within the timeout.

use crate::common::*;

#[test]
fn tls_and_passwords_and_acl_users() {
    let lab = Lab::start(LabSpec {
        replicas: 0,
        tls: true,
        requirepass: true,
        ..Default::default()
    });
    let seed = lab.seed();
    let ca = lab.conn_args[2].clone();
    let tls_dir = std::path::Path::new(&ca).parent().unwrap().to_path_buf();
    let password = lab.env[0].1.clone();

    // Right CA and password: works; no replicas is a warning per master.
    let (code, report) = lab.check();
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["slots_covered"], 16384);
    assert_eq!(
        codes(&report)
            .iter()
            .filter(|c| *c == "master_without_replica")
            .count(),
        3
    );

    // Mutual TLS and the password from a file.
    let pwfile = lab.path().join("password");
    let r = run(&mut rcops(&[
        "check",
        "--json",
        "-c",
        &seed,
        "--cacert",
        &ca,
        "--cert",
        &tls_dir.join("client.crt").display().to_string(),
        "--key",
        &tls_dir.join("client.key").display().to_string(),
        "--password-file",
        &pwfile.display().to_string(),
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);

    // An ACL user with its own password.
    for port in lab.port..lab.port + 3 {
        assert_eq!(
            lab.redis_cli(
                port,
                &[
                    "ACL",
                    "SETUSER",
                    "auditor",
                    "on",
                    ">audit-pw",
                    "~*",
                    "&*",
                    "+@all"
                ]
            ),
            "OK"
        );
    }
    let r = run(rcops(&[
        "nodes", "--json", "-c", &seed, "--tls", "--cacert", &ca, "--user", "auditor",
    ])
    .env("RCOPS_PASSWORD", "audit-pw"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["shards"].as_array().unwrap().len(), 3);

    // Users missing a permission: the error names the node, the user and the command, in
    // one line; a missing INFO degrades what can work without it, a missing CONFIG fails
    // the commands that need it (exit 2), never "no drift across 0 nodes".
    for port in lab.port..lab.port + 3 {
        for (user, deny) in [("noinfo", "-info"), ("noconf", "-config")] {
            let args = [
                "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", deny,
            ];
            assert_eq!(lab.redis_cli(port, &args), "OK");
        }
    }
    let as_user = |user: &str, args: &[&str]| {
        let mut all = vec!["-c", &seed, "--tls", "--cacert", &ca, "--user", user];
        all.extend_from_slice(args);
        run(rcops(&all).env("RCOPS_PASSWORD", "pw"))
    };
    let r = as_user("noinfo", &["nodes", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["shards"].as_array().unwrap().len(), 3);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("user noinfo may not run INFO (NOPERM)") && r.stderr.contains(&seed),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("Pipeline"), "{}", r.stderr);
    let r = as_user("noinfo", &["check", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(finding(&r.json(), "info_denied").is_some(), "{}", r.stdout);
    for args in [&["config", "drift"][..], &["advise"]] {
        let r = as_user("noconf", args);
        assert_eq!(r.code, 2, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr
                .contains("user noconf may not run CONFIG GET (NOPERM)"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("INCOMPLETE"), "{args:?}: {}", r.stderr);
        assert!(!r.stdout.contains("no drift across 0"), "{}", r.stdout);
    }
    let r = as_user("noconf", &["advise", "--json"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.json()["failed"].as_object().unwrap().len(), 3);
    // --insecure skips verification (no CA needed).
    let r = run(
        rcops(&["check", "--json", "-c", &seed, "--tls", "--insecure"])
            .env("RCOPS_PASSWORD", &password),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    // REDISCLI_AUTH works like with redis-cli.
    let r = run(
        rcops(&["slots", "--json", "-c", &seed, "--tls", "--cacert", &ca])
            .env("REDISCLI_AUTH", &password),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Mismatches: one line naming the node, exit 2.
    let failures: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (
            vec!["--tls", "--cacert", &ca],
            Some("wrong"),
            "authentication failed",
        ),
        (vec!["--tls", "--cacert", &ca], None, "NOAUTH"),
        (vec![], Some(&password), "unreachable"),
        (vec!["--tls"], Some(&password), "UnknownIssuer"),
        (
            vec!["--tls", "--cacert", &ca, "--user", "auditor"],
            Some("nope"),
            "authentication failed",
        ),
    ];
    for (extra, pw, expect) in failures {
        let mut args = vec!["check", "-c", &seed, "--timeout", "1s"];
        args.extend(extra.iter().copied());
        let mut c = rcops(&args);
        if let Some(pw) = pw {
            c.env("RCOPS_PASSWORD", pw);
        }
        let started = std::time::Instant::now();
        let r = run(&mut c);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(
            r.stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&seed) && r.stderr.contains(expect),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            started.elapsed().as_secs_f64() < 5.0,
            "{args:?} took {:?}",
            started.elapsed()
        );
    }

    // bench over TLS with a password (the raw RESP transport on rustls).
    // (Few clients: 50 TLS handshakes at once in a debug build can outlast --timeout.)
    let r = lab.run(&[
        "bench",
        "--json",
        "-n",
        "300",
        "--keyspace",
        "30",
        "--clients",
        "4",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        (r.json()["total"].as_u64(), r.json()["errors"].as_u64()),
        (Some(300), Some(0))
    );

    // Backup and restore over TLS with a password: the replication stream on rustls.
    // Enough keys (big ones among them) that a pipeline outgrows the socket buffers.
    let r = lab.load(3000);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dbsize = |port: u16| -> u64 { lab.redis_cli(port, &["DBSIZE"]).trim().parse().unwrap() };
    let sizes: Vec<u64> = (lab.port..lab.port + 3).map(dbsize).collect();
    let total: u64 = sizes.iter().sum();
    assert!(total >= 3000, "{sizes:?}");
    let st = lab.path().join("state").display().to_string();
    let r = lab.run(&["backup", "--json", "--state-dir", &st]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let m = &r.json()["manifest"];
    assert_eq!(m["status"], "complete");
    assert_eq!(manifest_keys(m), total);
    let id = m["id"].as_str().unwrap().to_string();
    let manifest = std::fs::read_to_string(
        std::path::Path::new(&st)
            .join("backups")
            .join(&id)
            .join("manifest.json"),
    )
    .unwrap();
    assert!(!manifest.contains(&password));
    // --insecure reaches the stream too; without a CA the handshake fails on one line.
    let r = run(rcops(&[
        "backup",
        "--json",
        "-c",
        &seed,
        "--tls",
        "--insecure",
        "--state-dir",
        &st,
    ])
    .env("RCOPS_PASSWORD", &password));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(rcops(&["backup", "-c", &seed, "--tls", "--state-dir", &st])
        .env("RCOPS_PASSWORD", &password));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("UnknownIssuer"), "{}", r.stderr);
    for port in lab.port..lab.port + 3 {
        assert_eq!(lab.redis_cli(port, &["FLUSHALL"]), "OK");
    }
    let r = lab.run(&["restore", &id, "--state-dir", &st, "--yes", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    assert_eq!(r.json()["total"]["restored"].as_u64(), Some(total));
    let after: Vec<u64> = (lab.port..lab.port + 3).map(dbsize).collect();
    assert_eq!(after, sizes);

    // The password never shows up in output or in the lab state.
    let r = lab.run(&["info", "--json", "--raw"]);
    assert!(!r.stdout.contains(&password) && !r.stderr.contains(&password));
    let state = std::fs::read_to_string(lab.path().join("lab.json")).unwrap();
    assert!(!state.contains(&password));

    // `-a` works but warns like redis-cli.
    let r = run(&mut rcops(&[
        "check", "-c", &seed, "--tls", "--cacert", &ca, "-a", &password,
    ]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("may not be safe"), "{}", r.stderr);
}
