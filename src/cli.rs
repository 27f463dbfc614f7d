//! Command-line definitions (clap derive). `///` comments are the help text.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Operate Redis Cluster and Valkey from one binary.
#[derive(Debug, Parser)]
#[command(name = "rcops", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every cluster command takes, listed under their own heading in every `--help`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// Seed nodes, HOST:PORT[,HOST:PORT…]; a seed that is down is skipped if another answers
    #[arg(
        short = 'c',
        long = "cluster",
        env = "RCOPS_CLUSTER",
        global = true,
        value_name = "HOST:PORT,…"
    )]
    pub cluster: Option<String>,
    /// ACL user name (password from RCOPS_PASSWORD, REDISCLI_AUTH or --password-file)
    #[arg(long, env = "RCOPS_USER", global = true)]
    pub user: Option<String>,
    /// Read the password from this file (first line)
    #[arg(long, global = true, value_name = "PATH")]
    pub password_file: Option<PathBuf>,
    /// Password on the command line: unsafe, it lands in shell history (prefer RCOPS_PASSWORD)
    #[arg(
        short = 'a',
        long = "pass",
        global = true,
        hide_short_help = true,
        value_name = "PASSWORD"
    )]
    pub pass: Option<String>,
    /// Connect with TLS (with `lab up`: start a TLS-only lab with a generated CA)
    #[arg(long, global = true)]
    pub tls: bool,
    /// CA certificate (PEM) to verify servers with (implies --tls)
    #[arg(long, global = true, value_name = "PATH")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (implies --tls)
    #[arg(long, global = true, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS
    #[arg(long, global = true, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// Skip TLS certificate verification
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Per-node timeout for connecting and each reply (e.g. 2s, 500ms)
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Most nodes talked to at once
    #[arg(long, global = true, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Where rcops keeps state: config history (one git repository per cluster under
    /// config/) [default: $XDG_DATA_HOME/rcops or ~/.local/share/rcops]
    #[arg(long, env = "RCOPS_STATE_DIR", global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// More logging on stderr (-v info, -vv debug); RCOPS_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// rcops.toml: named clusters (`-c NAME`), the server's users, approvals and state
    /// [default: $XDG_CONFIG_HOME/rcops/rcops.toml or ~/.config/rcops/rcops.toml]
    #[arg(long, env = "RCOPS_CONFIG", global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start, inspect, fill and stop local lab clusters of real redis-server processes
    #[command(subcommand)]
    Lab(LabCommand),
    /// Check cluster health: coverage, agreement, failures, replication, placement, balance
    Check(CheckArgs),
    /// Show the topology: masters with their replicas
    Nodes,
    /// Show slot distribution over masters, uncovered and open slots
    Slots,
    /// Per-node health summary from INFO
    Info(InfoArgs),
    /// One metrics snapshot of every node plus cluster totals; --watch refreshes in place
    Metrics(MetricsArgs),
    /// Slow logs of every node, merged and sorted (secrets redacted)
    Slowlog(SlowlogArgs),
    /// Prometheus exporter: /metrics scrapes every node of the cluster in one pass
    Exporter(ExporterArgs),
    /// Per-node round-trip latency (p50/p95/p99/p99.9/max) from SET/GET probes
    Latency(LatencyArgs),
    /// Biggest keys per type by element count, and totals per type and prefix (SCAN of every shard)
    Bigkeys(ScanArgs),
    /// Biggest keys per type by MEMORY USAGE, and totals per type and prefix
    Memkeys(ScanArgs),
    /// Cluster-aware load generator: throughput and latency per command and per node
    Bench(BenchArgs),
    /// Configuration of every node: get, set, apply a file, drift, history, diff, rollback
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Tuning advisor: rules over INFO and CONFIG of every node; --apply makes one config plan
    Advise(AdviseArgs),
    /// Read RDB files (plain or zstd): info, keys, memory, dump
    #[command(subcommand)]
    Rdb(RdbCommand),
    /// Back up every shard at once over the replication protocol; list, verify, prune
    Backup(BackupArgs),
    /// Restore a backup (or RDB files) into any cluster, routing every key by its slot
    Restore(RestoreArgs),
    /// Copy a live cluster or server into another over the replication protocol and keep it
    /// in step (--follow); resumable
    Migrate(MigrateArgs),
    /// Compare two clusters or servers key by key (type, TTL, length or value); differences
    /// that persist through every round are reported
    Verify(VerifyArgs),
    /// The ops server: HTTP API with jobs, roles, two-person approvals and an audit log, over
    /// the clusters of rcops.toml
    Serve(ServeArgs),
    /// API tokens for `rcops serve`
    #[command(subcommand)]
    Token(TokenCommand),
    /// The server's audit log
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve the API on
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub listen: String,
    /// Serve HTTPS with this certificate chain (PEM)
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a user (created if new, its role set); the token is printed once,
    /// as the last line of stdout, and stored only as a hash
    Create {
        #[arg(long)]
        user: String,
        /// viewer < operator < admin
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's chain of hashes: an edited or deleted record is found
    Verify,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// Where backup sets live [default: STATE_DIR/backups]
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Read every shard from its master, even when it has a healthy replica
    #[arg(long)]
    pub from_masters: bool,
    /// Read each shard from a healthy replica when it has one (the default)
    #[arg(long, conflicts_with = "from_masters")]
    pub from_replicas: bool,
    /// Longest silence allowed once a shard's snapshot has started (forking and generating a
    /// big dataset can be quiet); the handshake before it is bounded by --timeout
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Backup sets, newest first: id, age, shards, size, status, verified
    List,
    /// Checksums and a full parse of every file against the manifest
    Verify {
        /// Backup id, unique id prefix, `latest`, or a backup folder
        id: String,
    },
    /// Archive every shard's replication stream continuously (a base snapshot, then
    /// segments), until Ctrl-C or SIGTERM; continues the open chain in --dir
    Follow {
        /// Close a segment once it holds this much (bytes before compression; K/M/G)
        #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
        segment_size: u64,
        /// Close a segment once it is this old
        #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
        segment_age: Duration,
        /// Take fresh base snapshots of every shard this often, so a restore replays at most
        /// this much stream ("off": only the chain's first)
        #[arg(long, default_value = "24h", value_parser = parse_duration_or_off, value_name = "DURATION")]
        base_every: Duration,
        /// Remove what only restores to times older than this (base sets, segments, closed
        /// chains; never the newest chain that can restore) [default: keep everything]
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        keep: Option<Duration>,
        /// Serve the follower's own Prometheus metrics (lag, recovery point, segments,
        /// reconnects, resyncs, gaps) on this address
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// Delete old backup sets (plan; --yes to delete)
    Prune {
        /// Keep sets younger than this many days
        #[arg(long)]
        keep_days: Option<u64>,
        /// Keep the N newest sets
        #[arg(long)]
        keep_last: Option<usize>,
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup id (a unique prefix, or `latest`), a backup folder, or an RDB file
    #[arg(required_unless_present = "aof")]
    pub source: Option<String>,
    /// Replay an append-only file or a Redis 7 appendonlydir instead
    #[arg(long, value_name = "FILE|DIR", conflicts_with_all = ["source", "files", "resume", "merge_dbs", "no_verify"])]
    pub aof: Option<PathBuf>,
    /// With --aof: replay into a cluster that already holds keys (its commands run on top of
    /// them: replay is not idempotent, an INCR counts twice); needs --on-conflict replace|skip
    /// for the base keys
    #[arg(long, requires = "aof")]
    pub into_non_empty: bool,
    /// With a chain of `backup follow`: restore the cluster as it was at this time (its
    /// base, then its archived stream up to the last stamp at or before it). With --aof:
    /// stop at the first #TS annotation after it. RFC 3339 (2026-12-02T09:59:30Z, offsets
    /// such as +01:00 and fractions allowed) or Unix seconds
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// With a chain: cut these shards at exact stream offsets instead (SHARD: index, folder
    /// shard-000, slot ranges or master id prefix; every shard unless --until is given too)
    #[arg(long, value_name = "SHARD=OFFSET", value_delimiter = ',')]
    pub until_offset: Vec<String>,
    /// More RDB files
    pub files: Vec<PathBuf>,
    /// Where backup sets live [default: STATE_DIR/backups]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// When the target already holds a key: fail before writing anything, skip it, or replace it
    #[arg(long, value_parser = ["fail", "skip", "replace"])]
    pub on_conflict: Option<String>,
    /// Only keys matching this glob
    #[arg(long = "match", value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Only these types; repeatable
    #[arg(long = "type", value_name = "TYPE",
          value_parser = ["string", "list", "set", "zset", "hash", "stream", "module"])]
    pub types: Vec<String>,
    /// Only this database of a standalone server's RDB
    #[arg(long, conflicts_with = "merge_dbs")]
    pub db: Option<u64>,
    /// Write every database of a standalone server's RDB into the cluster's one (key names
    /// found in several are reported)
    #[arg(long)]
    pub merge_dbs: bool,
    /// Write into a cluster that `check` finds unsafe (uncovered slots, cluster_state:fail,
    /// failed or unreachable masters)
    #[arg(long)]
    pub force: bool,
    /// Skip verifying the files before writing (SHA-256 against the manifest; a plain RDB is
    /// read to its checksum): only when `backup verify` just passed
    #[arg(long)]
    pub no_verify: bool,
    /// Continue an interrupted restore from its checkpoint
    #[arg(long)]
    pub resume: bool,
    /// At most this many keys per second (all files together)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Keys per pipeline per node
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Values serialized larger than this are written piece by piece (HSET/RPUSH/SADD/ZADD/
    /// XADD/APPEND batches into a temporary key in the same slot, then renamed, TTL last),
    /// not as one RESTORE that blocks the target while it loads (bytes; K/M/G suffixes)
    #[arg(long, default_value = "32MiB", value_parser = parse_bytes)]
    pub big_key_bytes: u64,
    /// Write (without it, the plan is shown and nothing changes)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Only show the plan
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// Each replica against its master (-c CLUSTER), key by key, both ways; every batch
    /// compared once the replica has caught up with the master's offset
    Replicas {
        /// Keys compared per replica at most (default: all)
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        sample: Option<u64>,
        /// Keys per second per replica at most
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate: Option<u64>,
    },
}

/// Which keys, by name.
#[derive(Debug, Args)]
pub struct KeyNameArgs {
    /// Only keys matching this glob
    #[arg(long = "match", value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Only keys starting with this prefix; repeatable
    #[arg(long = "prefix", value_name = "PREFIX")]
    pub prefixes: Vec<String>,
    /// Leave out keys starting with this prefix; repeatable
    #[arg(long = "exclude-prefix", value_name = "PREFIX")]
    pub exclude_prefixes: Vec<String>,
}

/// The two sides of a migration or a comparison, each with its own credentials and TLS.
#[derive(Debug, Args)]
pub struct EndsArgs {
    /// Source: a cluster's seed nodes or a standalone server, HOST:PORT[,HOST:PORT…]
    #[arg(long, value_name = "HOST:PORT,…", required = true)]
    pub from: Option<String>,
    /// Target: a cluster's seed nodes or a standalone server
    #[arg(long, value_name = "HOST:PORT,…", required = true)]
    pub to: Option<String>,
    /// ACL user on the source (password from RCOPS_FROM_PASSWORD or --from-password-file;
    /// without them the global credentials)
    #[arg(long, env = "RCOPS_FROM_USER")]
    pub from_user: Option<String>,
    #[arg(long, value_name = "PATH")]
    pub from_password_file: Option<PathBuf>,
    /// ACL user on the target (password from RCOPS_TO_PASSWORD or --to-password-file)
    #[arg(long, env = "RCOPS_TO_USER")]
    pub to_user: Option<String>,
    #[arg(long, value_name = "PATH")]
    pub to_password_file: Option<PathBuf>,
    /// TLS to the source (certificates from --cacert/--cert/--key)
    #[arg(long)]
    pub from_tls: bool,
    /// TLS to the target
    #[arg(long)]
    pub to_tls: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct VerifyArgs {
    #[command(subcommand)]
    pub sub: Option<VerifyCommand>,
    #[command(flatten)]
    pub ends: EndsArgs,
    /// keys: existence, type, TTL; length: also cardinalities and string lengths; full:
    /// also the values (DUMP, then a type-aware comparison where the payloads differ)
    #[arg(long, default_value = "full", value_parser = ["full", "length", "keys"])]
    pub mode: String,
    /// Rounds: later ones re-check only what differed, so writes in flight settle
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Pause between rounds
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Also scan the target for keys the source lacks
    #[arg(long)]
    pub both_directions: bool,
    /// Largest difference between the two absolute expiry times that counts as equal
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub ttl_tolerance: Duration,
    #[command(flatten)]
    pub keys: KeyNameArgs,
    /// Keys per second per shard at most
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Read the source's masters, not its replicas
    #[arg(long)]
    pub from_masters: bool,
    /// Keys per SCAN and per pipeline
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Write every difference as a JSON line to this file
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub ends: EndsArgs,
    /// sync: snapshot and command stream over PSYNC (the source must allow replication)
    #[arg(long, default_value = "sync", value_parser = ["sync", "scan"])]
    pub method: String,
    /// Read each shard from its master, not from an in-sync replica
    #[arg(long)]
    pub from_masters: bool,
    /// Keep applying the source's writes until Ctrl-C (without it: stop once caught up)
    #[arg(long)]
    pub follow: bool,
    /// Switch over: once every shard lags less than --max-lag, pause the source's writes
    /// (CLIENT PAUSE … WRITE), drain, check counts and a sample, report the switch point and
    /// unpause (unless --keep-paused); any failure unpauses
    #[arg(long)]
    pub cutover: bool,
    /// With --cutover: the lag every shard must be under before the pause (bytes; K/M/G
    /// suffixes)
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes, requires = "cutover")]
    pub max_lag: u64,
    /// With --cutover: how long the source stays paused at most (it resumes by itself after)
    #[arg(long, default_value = "30s", value_parser = parse_duration, requires = "cutover")]
    pub pause_timeout: Duration,
    /// With --cutover: leave the source's writes paused after a successful switch
    #[arg(long, requires = "cutover")]
    pub keep_paused: bool,
    #[command(flatten)]
    pub keys: KeyNameArgs,
    /// Only these types (in the snapshot); repeatable
    #[arg(long = "type", value_name = "TYPE",
          value_parser = ["string", "list", "set", "zset", "hash", "stream", "module"])]
    pub types: Vec<String>,
    /// The source database to copy (a cluster has only 0)
    #[arg(long, default_value_t = 0)]
    pub db: u64,
    /// When the target already holds keys: fail before writing anything (an empty target),
    /// skip existing keys, or replace them
    #[arg(long, default_value = "fail", value_parser = ["fail", "skip", "replace"])]
    pub on_conflict: String,
    /// A FLUSHALL/FLUSHDB on the source: stop the stream before it, apply it to the target,
    /// or ignore it
    #[arg(long, default_value = "stop", value_parser = ["stop", "apply", "ignore"])]
    pub on_flush: String,
    /// At most this many writes per second (all shards together)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Keys or commands per pipeline per node
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Values serialized larger than this are written piece by piece (HSET/RPUSH/SADD/ZADD/
    /// XADD/APPEND batches into a temporary key in the same slot, then renamed, TTL last),
    /// not as one RESTORE that blocks the target while it loads (bytes; K/M/G suffixes)
    #[arg(long, default_value = "32MiB", value_parser = parse_bytes)]
    pub big_key_bytes: u64,
    /// Continue a stopped migration from its checkpoint: by id, or the newest without one
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "ID")]
    pub resume: Option<String>,
    /// Longest silence allowed while a source builds and sends its snapshot
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Write (without it, the plan is shown and nothing changes)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Only show the plan
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum RdbCommand {
    /// Version, aux fields, keys per db and type, expiries; verifies the checksum
    Info { file: PathBuf },
    /// Key names (one per line; with --json: db, key, type, expire_ms)
    Keys {
        file: PathBuf,
        /// Only keys matching this glob
        #[arg(long = "match", value_name = "PATTERN")]
        pattern: Option<String>,
    },
    /// Biggest keys by serialized size, totals per type and per key prefix
    Memory {
        file: PathBuf,
        #[arg(long, default_value_t = 20)]
        top: usize,
        #[arg(long, default_value = ":")]
        delimiter: String,
    },
    /// Every key with its decoded value, as JSON Lines
    Dump {
        file: PathBuf,
        #[arg(long = "match", value_name = "PATTERN")]
        pattern: Option<String>,
        /// Threads decoding values beside the one reading the file (default: one per other
        /// core, at most 4, on 4+ cores; else 0: decoding in the reading thread)
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..=64))]
        threads: Option<u16>,
    },
}

/// Which nodes a configuration command acts on.
#[derive(Debug, Args, Clone)]
pub struct SelectArgs {
    /// Only masters or only replicas
    #[arg(long, value_parser = ["master", "replica"])]
    pub role: Option<String>,
    /// Only these nodes (HOST:PORT or node id prefix); repeatable
    #[arg(long = "node", value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// How a change is carried out.
#[derive(Debug, Args, Clone)]
pub struct ChangeArgs {
    /// Apply the plan (without it, the plan is shown and nothing changes)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Only show the plan
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
    /// Do not persist with CONFIG REWRITE
    #[arg(long)]
    pub no_rewrite: bool,
    /// When a node refuses, keep the nodes that did change (default: restore them)
    #[arg(long)]
    pub keep_going: bool,
    /// Apply one node at a time (or --batch N) and stop if `check` finds new criticals
    #[arg(long)]
    pub rolling: bool,
    /// Nodes per rolling batch (implies --rolling)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch: Option<u64>,
    /// Wait after each rolling batch before checking health
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show parameters (globs like maxmemory*) on every node; identical values share a row
    Get {
        #[arg(required = true, value_name = "PARAM")]
        params: Vec<String>,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Set PARAM VALUE [PARAM VALUE…] on every node: plan, --yes, verified, all-or-nothing
    Set {
        #[arg(required = true, value_name = "PARAM VALUE", num_args = 2..)]
        pairs: Vec<String>,
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Apply a desired state: redis.conf syntax or .toml, optional [master]/[replica] sections
    Apply {
        file: PathBuf,
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Parameters that differ between nodes of one role, or from a baseline (file or revision)
    Drift {
        /// A desired-state file, or a history revision (HEAD, HEAD~1, a hash)
        #[arg(long, value_name = "FILE|REV")]
        baseline: Option<String>,
        /// Also compare per-node parameters (port, dir, announce addresses, …)
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Record every node's configuration in the history now
    Snapshot {
        /// Commit message
        #[arg(short, long)]
        message: Option<String>,
    },
    /// Recorded snapshots, newest first, with what each changed
    History {
        /// Only changes of this node (HOST:PORT)
        #[arg(long)]
        node: Option<String>,
        /// Only changes of this parameter (glob)
        #[arg(long)]
        param: Option<String>,
        /// At most this many entries
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The configuration recorded at a revision
    Show {
        rev: String,
        /// Only these parameters (globs)
        #[arg(value_name = "PARAM")]
        params: Vec<String>,
        /// Only this node (HOST:PORT)
        #[arg(long)]
        node: Option<String>,
    },
    /// Differences: REV vs live, REV REV, or [default] the last snapshot vs live
    Diff {
        #[arg(num_args = 0..=2, value_name = "REV")]
        revs: Vec<String>,
    },
    /// Restore every node's values from a revision (plan, --yes), verified and all-or-nothing
    Rollback {
        rev: String,
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(Debug, Args)]
pub struct AdviseArgs {
    /// Turn the recommended changes into one config plan (then --yes applies it)
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent connections (spread evenly over masters)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub clients: u64,
    /// Commands per round trip
    #[arg(long, short = 'P', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub pipeline: u64,
    /// Run this long (instead of --requests)
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Total requests [default: 100000 unless --duration]
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Distinct keys
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub keyspace: u64,
    /// Bytes per SET value
    #[arg(long, short = 'd', default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=512 * 1024 * 1024))]
    pub value_size: u64,
    /// SET:GET proportion, e.g. 1:1, 1:0 (only SET), 1:9
    #[arg(long, default_value = "1:1", value_parser = parse_ratio)]
    pub ratio: (u32, u32),
    /// Cap on requests per second, cluster-wide (latency then counts from the intended send time)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// With --rate: send the requests due within each tick together at its start, like a
    /// timer-driven client (e.g. 1ms) [default: each request at its own time, evenly spaced]
    #[arg(long, value_parser = parse_duration, requires = "rate")]
    pub tick: Option<Duration>,
    /// Leave the benchmark keys in place
    #[arg(long)]
    pub keep: bool,
    /// Client threads, each with its own event loop, at most 256 [default: one per master, at
    /// most the cores; redis-benchmark --cluster runs one per master]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
}

fn parse_ratio(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("invalid ratio {s:?}: expected SET:GET such as 1:1 or 1:9");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let (a, b): (u32, u32) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 && b == 0 || a > 1000 || b > 1000 {
        return Err(bad());
    }
    Ok((a, b))
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Keys per SCAN call
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub count: u64,
    /// At most this many keys per second per shard (0: unlimited)
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Scan a healthy replica of each shard instead of its master
    #[arg(long)]
    pub from_replicas: bool,
    /// Biggest keys shown per type
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub top: u64,
    /// Key prefix delimiter (the prefix is the key up to its last delimiter)
    #[arg(long, default_value = ":")]
    pub delimiter: String,
    /// Only keys matching this SCAN pattern
    #[arg(long = "match", value_name = "PATTERN")]
    pub pattern: Option<String>,
}

#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Only these nodes (HOST:PORT or node id prefix); repeatable; default all
    #[arg(long = "node", value_name = "NODE")]
    pub nodes: Vec<String>,
    /// How long to measure
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
}

#[derive(Debug, Args)]
pub struct ExporterArgs {
    /// Address to serve /metrics and /health on
    #[arg(long, default_value = "127.0.0.1:9121", value_name = "HOST:PORT")]
    pub listen: String,
}

#[derive(Debug, Args)]
pub struct SlowlogArgs {
    /// Entries fetched per node
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub count: u64,
    /// Only entries newer than this (e.g. 10m, 1h)
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Show the N slowest instead of the newest first
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub top: Option<u64>,
    /// Clear the slow log on every node (needs --yes)
    #[arg(long)]
    pub reset: bool,
    /// Confirm a destructive step
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Refresh every SECONDS, with ops/s measured from counter deltas
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration)]
    pub watch: Option<Duration>,
    /// With --watch: stop after this many refreshes (default: until Ctrl-C)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Replication offset gap (bytes) above which a replica is lagging
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    pub lag_threshold: u64,
    /// Slot count deviation from even (percent) above which masters are unbalanced
    #[arg(long, default_value_t = 2.0, value_name = "PCT", value_parser = parse_pct, allow_negative_numbers = true)]
    pub balance_threshold: f64,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Show one raw INFO section (e.g. memory, commandstats, all) instead of the summary
    #[arg(long)]
    pub section: Option<String>,
    /// Only these nodes (HOST:PORT or node id prefix); repeatable
    #[arg(long = "node", value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Include every parsed INFO field in --json output
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct LabLocation {
    /// First port of the lab (nodes use consecutive ports)
    #[arg(long, default_value_t = 7000)]
    pub port: u16,
    /// Lab directory [default: $TMPDIR/rcops-lab-PORT]
    #[arg(long, env = "RCOPS_LAB_DIR")]
    pub dir: Option<PathBuf>,
}

impl LabLocation {
    pub fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("rcops-lab-{}", self.port)))
    }
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start a cluster on 127.0.0.1 and wait until it is healthy
    Up(LabUpArgs),
    /// Stop every node of a lab (by pid) and delete its directory
    Down {
        #[command(flatten)]
        at: LabLocation,
        /// Keep the lab directory (logs, configs)
        #[arg(long)]
        keep: bool,
    },
    /// Show which lab nodes run and answer
    Status {
        #[command(flatten)]
        at: LabLocation,
    },
    /// Write sample data of every type (some keys with TTLs) into the lab, or into -c
    Load {
        #[command(flatten)]
        at: LabLocation,
        /// Number of keys (at least 1)
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
        keys: u64,
    },
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub at: LabLocation,
    /// Number of masters
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub masters: u32,
    /// Replicas per master
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub replicas: u32,
    /// Server binary (redis-server or valkey-server)
    #[arg(long, default_value = "redis-server", value_name = "PATH")]
    pub server_bin: PathBuf,
    /// Require a password: RCOPS_PASSWORD if set, else a random one written to DIR/password
    #[arg(long)]
    pub requirepass: bool,
    /// cluster-node-timeout in milliseconds
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub node_timeout: u64,
    /// Give up if the cluster has not converged after this long
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub wait: Duration,
}

/// `2s`, `500ms`, `1m` or a plain number of seconds; must be positive.
/// `1048576`, `512K`, `1MiB`, `2GB` → bytes (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (use e.g. 1048576, 512K, 1MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size {s:?} (use e.g. 1048576, 512K, 1MiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too big"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 2s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || secs > 86_400.0 * 365.0 {
        return Err(format!("duration {s:?} is too large (at most a year)"));
    }
    if secs <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration, or `off` (zero).
fn parse_duration_or_off(s: &str) -> Result<Duration, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

fn parse_pct(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a percentage between 0 and 100")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "0", "-1s", "abc", "5x", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let big = parse_duration("99999999999999s").unwrap_err();
        assert!(big.contains("too large"), "{big}");
        assert!(parse_duration("0s").unwrap_err().contains("positive"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
