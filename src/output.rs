//! Rendering helpers shared by every command: exit codes, tables, colour (only on a TTY),
//! JSON, progress bars (stderr, hidden when not a TTY or with --json) and error lines.

use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use owo_colors::OwoColorize;
use serde::Serialize;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FINDINGS: u8 = 1;
pub const EXIT_FAILED: u8 = 2;
pub const EXIT_USAGE: u8 = 64;
/// Stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Writes one line to stdout; a closed pipe (`rcops nodes | head`) ends the process quietly
/// with success, like ripgrep, instead of panicking.
pub fn write_line(args: std::fmt::Arguments) {
    use std::io::Write;
    quiet_on_closed_pipe(writeln!(std::io::stdout().lock(), "{args}"));
}

/// Many lines to stdout (`rdb keys`, `rdb dump`): block-buffered rather than one write per
/// line; a closed pipe ends the process quietly, as in [`write_line`].
pub struct Lines(std::io::BufWriter<std::io::StdoutLock<'static>>);

impl Lines {
    pub fn new() -> Self {
        Lines(std::io::BufWriter::with_capacity(
            1 << 16,
            std::io::stdout().lock(),
        ))
    }

    pub fn line(&mut self, args: std::fmt::Arguments) {
        use std::io::Write;
        quiet_on_closed_pipe(writeln!(self.0, "{args}"));
    }

    pub fn json<T: Serialize>(&mut self, value: &T) {
        use std::io::Write;
        match serde_json::to_writer(&mut self.0, value) {
            Ok(()) => quiet_on_closed_pipe(self.0.write_all(b"\n")),
            Err(e) if e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe) => {
                std::process::exit(0)
            }
            Err(e) => eprintln!("rcops: error: cannot encode JSON: {e}"),
        }
    }

    /// Bytes already encoded, newline included.
    pub fn raw(&mut self, line: &[u8]) {
        use std::io::Write;
        quiet_on_closed_pipe(self.0.write_all(line));
    }

    pub fn finish(mut self) {
        use std::io::Write;
        quiet_on_closed_pipe(self.0.flush());
    }
}

fn quiet_on_closed_pipe(r: std::io::Result<()>) {
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// `println!` that survives a closed stdout; see [`write_line`].
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => { $crate::output::write_line(format_args!($($t)*)) };
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RCOPS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Whether stdout gets colour: a terminal, and NO_COLOR unset.
pub fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Colours a severity/status word when colour is on.
pub fn paint(word: &str) -> String {
    if !color() {
        return word.to_string();
    }
    match word {
        "critical" | "fail" | "down" | "no" => word.red().bold().to_string(),
        "warning" | "pfail" => word.yellow().to_string(),
        "ok" | "up" | "yes" => word.green().to_string(),
        "info" => word.cyan().to_string(),
        _ => word.to_string(),
    }
}

/// A borderless, aligned table like `kubectl get`.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new).collect::<Vec<_>>());
    t
}

/// Right-aligns the given columns (numbers).
pub fn align_right(t: &mut Table, columns: &[usize]) {
    for &c in columns {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Prints a table, trimming the padding the borderless style leaves at line ends.
pub fn print_table(t: &Table) {
    for line in t.to_string().lines() {
        crate::outln!("{}", line.trim_end());
    }
}

pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => crate::outln!("{s}"),
        Err(e) => eprintln!("rcops: error: cannot encode JSON: {e}"),
    }
}

/// The one-line error every failure prints: `rcops: error: <cause naming the node>`.
pub fn error(msg: impl std::fmt::Display) {
    eprintln!("rcops: error: {msg}");
}

pub fn warn(msg: impl std::fmt::Display) {
    eprintln!("rcops: warning: {msg}");
}

/// A line of news on stderr (not a warning): what a long-running command is doing.
pub fn note(msg: impl std::fmt::Display) {
    eprintln!("rcops: {msg}");
}

/// A Unix time in ms as RFC 3339 UTC with milliseconds; `-` for 0 (none).
pub fn unix_ms_text(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A progress bar on stderr, hidden when stderr is not a terminal or output is JSON.
pub fn progress(total: Option<u64>, json: bool, template: &str) -> ProgressBar {
    let pb = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if json || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    // `{rate}`: a whole number per second with thousands separators (indicatif's own
    // `{per_sec}` prints four decimals: `148,642.8947/s`).
    if let Ok(style) = ProgressStyle::with_template(&template.replace("{per_sec}", "{rate}")) {
        pb.set_style(style.with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}/s", grouped(s.per_sec().round() as u64));
            },
        ));
    }
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// `1234567` → `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1.5 MiB` style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3d4h`, `5m12s` style durations from seconds.
pub fn age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// p50, p95, p99, p99.9 and max cells, in ms with µs precision.
pub fn percentile_cells(p: &rcops_core::ops::Percentiles) -> [String; 5] {
    [p.p50_ms, p.p95_ms, p.p99_ms, p.p999_ms, p.max_ms].map(|v| format!("{v:.3}"))
}

/// `-` for missing values.
pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".to_string())
}

/// One progress line per shard on a TTY's stderr (hidden otherwise, and with `--json`),
/// for jobs that report through [`rcops_core::job::Progress`].
pub struct ShardBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl ShardBars {
    pub fn new(json: bool) -> Self {
        let multi = MultiProgress::new();
        if json || !std::io::stderr().is_terminal() {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        ShardBars {
            multi,
            bars: Mutex::new(HashMap::new()),
        }
    }

    pub fn clear(&self) {
        if let Ok(b) = self.bars.lock() {
            for bar in b.values() {
                bar.finish_and_clear();
            }
        }
    }
}

impl rcops_core::job::Progress for ShardBars {
    fn shard(&self, shard: &str, phase: &str, done: u64, total: Option<u64>) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let bar = bars.entry(shard.to_string()).or_insert_with(|| {
            let b = self.multi.add(ProgressBar::new_spinner());
            if let Ok(style) = ProgressStyle::with_template("{prefix:>14} {msg}") {
                b.set_style(style);
            }
            b.set_prefix(shard.to_string());
            b
        });
        let msg = match (phase, total) {
            ("stream", Some(t)) => format!(
                "stream: applied offset {done}, lag {}",
                bytes(t.saturating_sub(done))
            ),
            ("received", _) => format!("received {}", bytes(done)),
            (_, Some(t)) => format!("{phase}: {done}/{t}"),
            (_, None) => format!("{phase}: {done} keys"),
        };
        bar.set_message(msg);
        bar.tick();
    }

    fn message(&self, text: &str) {
        let _ = self.multi.println(format!("rcops: {text}"));
        if self.multi.is_hidden() {
            eprintln!("rcops: {text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(age(59), "59s");
        assert_eq!(age(3700), "1h1m");
        assert_eq!(age(90000), "1d1h");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(148_642), "148,642");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}
