//! Reading RDB files for users: `rdb info`, `rdb keys`, `rdb memory`, `rdb dump` (plain or
//! zstd-compressed files, as backups store them). Everything streams: one key in memory at a
//! time.

pub use rcops_rdb::type_name;
use rcops_rdb::{Item, Parser, RdbError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// zstd frames start with this magic (little-endian 0xFD2FB528).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(Debug, thiserror::Error)]
pub enum RdbFileError {
    #[error("{path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Rdb {
        path: String,
        #[source]
        source: RdbError,
    },
}

/// Opens an RDB file, decompressing zstd transparently.
pub fn open(path: &Path) -> Result<Box<dyn Read + Send>, RdbFileError> {
    let err = |source| RdbFileError::Open {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(err)?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let chained = BufReader::with_capacity(256 * 1024, head.chain(f));
    if n == 4 && magic == ZSTD_MAGIC {
        let d = zstd::stream::read::Decoder::new(chained).map_err(err)?;
        Ok(Box::new(BufReader::with_capacity(256 * 1024, d)))
    } else {
        Ok(Box::new(chained))
    }
}

/// A parser that decodes every value (see [`Parser::decode_values`] to only walk them).
pub fn parser(path: &Path) -> Result<Parser<Box<dyn Read + Send>>, RdbFileError> {
    Parser::new(open(path)?).map_err(|source| RdbFileError::Rdb {
        path: path.display().to_string(),
        source,
    })
}

/// `rdb info`: JSON `{"version", "aux": {..}, "keys", "expires", "expired", "dbs": {"0":
/// {"string": n, ..}}, "functions", "module_aux", "checksum", "serialized_bytes"}`.
#[derive(Debug, Default, Serialize)]
pub struct RdbInfo {
    pub version: u16,
    pub aux: BTreeMap<String, String>,
    pub keys: u64,
    pub expires: u64,
    /// Keys whose expiry has already passed (a restore skips them).
    pub expired: u64,
    pub dbs: BTreeMap<u64, BTreeMap<&'static str, u64>>,
    pub functions: u64,
    pub module_aux: u64,
    pub checksum: Option<String>,
    pub serialized_bytes: u64,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Walks a file, calling `on_entry` for every key (values decoded when `decode`; raw value
/// bytes not kept, only their length); returns the summary.
pub fn scan(
    path: &Path,
    decode: bool,
    mut on_entry: impl FnMut(&rcops_rdb::Entry),
) -> Result<RdbInfo, RdbFileError> {
    let p = parser(path)?.decode_values(decode).keep_raw(false);
    scan_with(path, p, |e| on_entry(&e))
}

/// Entries per batch handed to a decoding thread, and a bound on their raw bytes (a run of
/// big keys stays small in memory).
const BATCH_ENTRIES: usize = 256;
const BATCH_BYTES: u64 = 1 << 20;

/// One batch's encoded entries, the error that stopped it early, and its entries' keys and
/// raw bytes, handed back to be freed where they were allocated (glibc's malloc takes a
/// lock to free into another thread's arena: 20% slower with the frees in the workers).
type Encoded = (u64, Vec<u8>, Option<RdbError>, Vec<rcops_rdb::Entry>);

/// `rdb dump`: every entry that `keep` accepts, decoded, encoded by `encode` and passed to
/// `write` in file order — what [`scan`] with decoding gives, on more cores. This thread
/// walks the file (structure and CRC checked, raw value bytes kept); decoding and encoding,
/// most of the work, run on `threads` others (default: one per other core, at most 4, from
/// 4 cores up; 0: here, entry by entry), a batch at a time, at most four batches per thread
/// between reading and writing. An error stops the output where a sequential scan would
/// have stopped it.
pub fn dump(
    path: &Path,
    threads: Option<usize>,
    mut keep: impl FnMut(&rcops_rdb::Entry) -> bool,
    encode: impl Fn(&rcops_rdb::Entry, &mut Vec<u8>) + Sync,
    mut write: impl FnMut(&[u8]),
) -> Result<RdbInfo, RdbFileError> {
    // On two cores the reading thread and the decoding ones take turns, and the hand-over
    // costs more than it saves (0.52 s vs 0.43 s for a 274k-key file): one thread there.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = threads.unwrap_or(if cores >= 4 { (cores - 1).min(4) } else { 0 });
    if workers > 0 {
        return dump_batched(path, workers, BATCH_ENTRIES, keep, encode, write);
    }
    let mut out = Vec::with_capacity(64 * 1024);
    scan(path, true, |e| {
        if keep(e) {
            out.clear();
            encode(e, &mut out);
            write(&out);
        }
    })
}

fn dump_batched(
    path: &Path,
    workers: usize,
    batch_entries: usize,
    mut keep: impl FnMut(&rcops_rdb::Entry) -> bool,
    encode: impl Fn(&rcops_rdb::Entry, &mut Vec<u8>) + Sync,
    mut write: impl FnMut(&[u8]),
) -> Result<RdbInfo, RdbFileError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    let wrap = |source| RdbFileError::Rdb {
        path: path.display().to_string(),
        source,
    };
    let p = parser(path)?.decode_values(false).keep_raw(true);
    let version = p.version();
    // The earliest batch that failed: later batches are not worth decoding.
    let first_failed = AtomicU64::new(u64::MAX);
    let (work_tx, work_rx) = mpsc::sync_channel::<(u64, Vec<rcops_rdb::Entry>)>(2 * workers);
    let in_flight = 4 * workers as u64;
    // Only the workers hold the queue's receiving end: should they all stop, sending fails
    // instead of waiting for them forever.
    let work_rx = std::sync::Arc::new(std::sync::Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::channel::<Encoded>();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (done_tx, work_rx) = (done_tx.clone(), std::sync::Arc::clone(&work_rx));
            let (first_failed, encode) = (&first_failed, &encode);
            s.spawn(move || loop {
                let job = match work_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((seq, batch)) = job else { return };
                let mut out = Vec::with_capacity(64 * 1024);
                let mut err = None;
                let mut batch = batch;
                for e in &mut batch {
                    if first_failed.load(Ordering::Relaxed) < seq {
                        break;
                    }
                    match rcops_rdb::decode_raw(&e.raw, e.offset, e.value_offset, version) {
                        Ok(v) => {
                            e.value = v;
                            encode(e, &mut out);
                            // The decoded value was allocated here: freed here.
                            e.value = rcops_rdb::Value::NotDecoded;
                        }
                        Err(x) => {
                            first_failed.fetch_min(seq, Ordering::Relaxed);
                            err = Some(x);
                            break;
                        }
                    }
                }
                let _ = done_tx.send((seq, out, err, batch));
            });
        }
        drop((done_tx, work_rx));
        // Encoded batches come back in any order; they are written in file order.
        let mut pending: BTreeMap<u64, (Vec<u8>, Option<RdbError>)> = BTreeMap::new();
        let (mut sent, mut written) = (0u64, 0u64);
        let mut failure: Option<RdbError> = None;
        let mut drain = |block: bool, upto: u64| {
            while written < upto && failure.is_none() {
                if let Some((out, err)) = pending.remove(&written) {
                    write(&out);
                    written += 1;
                    failure = err;
                    continue;
                }
                let got = if block {
                    done_rx.recv().ok()
                } else {
                    done_rx.try_recv().ok()
                };
                match got {
                    Some((seq, out, err, entries)) => {
                        // Freed here, where their keys and raw bytes were allocated.
                        drop(entries);
                        pending.insert(seq, (out, err));
                    }
                    None => break,
                }
            }
        };
        let mut batch = Vec::with_capacity(batch_entries);
        let mut bytes = 0;
        let walked = scan_with(path, p, |e| {
            if first_failed.load(Ordering::Relaxed) != u64::MAX || !keep(&e) {
                return;
            }
            bytes += e.raw_len;
            batch.push(e);
            if batch.len() == batch_entries || bytes >= BATCH_BYTES {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_entries));
                // At most `in_flight` batches between reading and writing: a slow batch (a
                // huge key) holds the others back instead of letting the output pile up.
                drain(true, (sent + 1).saturating_sub(in_flight));
                let _ = work_tx.send((sent, full));
                sent += 1;
                bytes = 0;
                drain(false, sent);
            }
        });
        if !batch.is_empty() {
            let _ = work_tx.send((sent, batch));
            sent += 1;
        }
        drop(work_tx);
        drain(true, sent);
        match failure {
            // A bad value comes before whatever the walk found later in the file.
            Some(e) => Err(wrap(e)),
            None => walked,
        }
    })
}

fn scan_with<R: Read>(
    path: &Path,
    mut p: Parser<R>,
    mut on_entry: impl FnMut(rcops_rdb::Entry),
) -> Result<RdbInfo, RdbFileError> {
    let mut info = RdbInfo {
        version: p.version(),
        ..Default::default()
    };
    let now = now_ms();
    let wrap = |source| RdbFileError::Rdb {
        path: path.display().to_string(),
        source,
    };
    for item in &mut p {
        match item.map_err(wrap)? {
            Item::Aux { key, value } => {
                info.aux.insert(
                    String::from_utf8_lossy(&key).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                );
            }
            Item::Entry(e) => {
                info.keys += 1;
                info.serialized_bytes += e.raw_len;
                if let Some(x) = e.expire_ms {
                    info.expires += 1;
                    if x <= now {
                        info.expired += 1;
                    }
                }
                *info
                    .dbs
                    .entry(e.db)
                    .or_default()
                    .entry(type_name(e.type_byte))
                    .or_default() += 1;
                on_entry(e);
            }
            Item::Function { .. } => info.functions += 1,
            Item::ModuleAux { .. } => info.module_aux += 1,
            Item::End { checksum } => info.checksum = checksum.map(|c| format!("{c:016x}")),
            _ => {}
        }
    }
    Ok(info)
}

/// One of the biggest keys.
#[derive(Debug, Clone, Serialize)]
pub struct BigKey {
    pub key: String,
    pub db: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub serialized_bytes: u64,
    pub elements: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Totals {
    pub keys: u64,
    pub serialized_bytes: u64,
}

/// size, key, db, type, elements — ordered by size.
type Ranked = (u64, String, u64, &'static str, u64);

/// `rdb memory`: biggest keys by serialized size, totals per type and per prefix.
#[derive(Debug, Default, Serialize)]
pub struct RdbMemory {
    pub top: Vec<BigKey>,
    pub by_type: BTreeMap<&'static str, Totals>,
    pub by_prefix: BTreeMap<String, Totals>,
    pub info: RdbInfo,
}

pub fn memory(path: &Path, top: usize, delimiter: &str) -> Result<RdbMemory, RdbFileError> {
    let mut m = RdbMemory::default();
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<Ranked>> = Default::default();
    m.info = scan(path, true, |e| {
        let size = e.raw_len;
        let kind = type_name(e.type_byte);
        let key = rcops_formats::display_key(&e.key);
        let t = m.by_type.entry(kind).or_default();
        t.keys += 1;
        t.serialized_bytes += size;
        let prefix = match key.split_once(delimiter) {
            Some((p, _)) if !delimiter.is_empty() => p.to_string(),
            _ => "(no prefix)".to_string(),
        };
        let p = m.by_prefix.entry(prefix).or_default();
        p.keys += 1;
        p.serialized_bytes += size;
        heap.push(std::cmp::Reverse((
            size,
            key,
            e.db,
            kind,
            e.value.len() as u64,
        )));
        if heap.len() > top {
            heap.pop();
        }
    })?;
    let mut v: Vec<_> = heap.into_iter().map(|r| r.0).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    m.top = v
        .into_iter()
        .map(|(serialized_bytes, key, db, kind, elements)| BigKey {
            key,
            db,
            kind,
            serialized_bytes,
            elements,
        })
        .collect();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: [&str; 2] = ["redis-7.0.15-all-types.rdb", "valkey-9.1.2-all-types.rdb"];

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../rdb/testdata")
            .join(name)
    }

    fn line(e: &rcops_rdb::Entry, out: &mut Vec<u8>) {
        rcops_rdb::json::entry_line(out, e)
    }

    /// Output and outcome of a dump with `workers` threads and `batch` entries per batch
    /// (0 workers: the sequential scan).
    fn run(path: &Path, workers: usize, batch: usize) -> (Vec<u8>, Result<u64, String>) {
        let mut out = Vec::new();
        let keep = |e: &rcops_rdb::Entry| e.key != b"skipped-by-filter";
        let r = if workers == 0 {
            dump(path, Some(0), keep, line, |b| out.extend_from_slice(b))
        } else {
            dump_batched(path, workers, batch, keep, line, |b| {
                out.extend_from_slice(b)
            })
        };
        (out, r.map(|i| i.keys).map_err(|e| e.to_string()))
    }

    #[test]
    fn batched_dump_writes_what_the_sequential_scan_writes_in_file_order() {
        for name in FIXTURES {
            let path = fixture(name);
            let (want, n) = run(&path, 0, 0);
            assert!(n.as_ref().is_ok_and(|&n| n >= 5), "{n:?}");
            assert!(want.iter().filter(|&&b| b == b'\n').count() >= 5);
            // One entry per batch and odd sizes make batches finish out of order.
            for (workers, batch) in [(1, 1), (2, 1), (3, 2), (4, 3), (2, 1000)] {
                assert_eq!(
                    run(&path, workers, batch),
                    (want.clone(), n.clone()),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn a_value_that_fails_to_decode_stops_the_output_where_the_scan_stops() {
        // A listpack blob with its terminator overwritten: the walk only steps over the blob,
        // decoding it fails. The output stops before that key, with the same error.
        let data = std::fs::read(fixture(FIXTURES[0])).expect("fixture");
        let entries: Vec<rcops_rdb::Entry> = Parser::new(&data[..])
            .expect("header")
            .decode_values(false)
            .filter_map(|i| match i.expect("item") {
                Item::Entry(e) => Some(e),
                _ => None,
            })
            .collect();
        let victim = entries
            .iter()
            .skip(2)
            .find(|e| e.type_byte == 16)
            .expect("a listpack hash");
        let end = (victim.value_offset + victim.raw_len - 1) as usize;
        let mut bad = data.clone();
        assert_eq!(bad[end - 1], 0xff, "listpack terminator");
        bad[end - 1] = 0x00;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.rdb");
        std::fs::write(&path, &bad).expect("write");
        let (want, err) = run(&path, 0, 0);
        let err = err.expect_err("decoding fails");
        assert!(err.contains("listpack"), "{err}");
        let before = entries
            .iter()
            .take_while(|e| e.offset < victim.offset)
            .count();
        assert_eq!(want.iter().filter(|&&b| b == b'\n').count(), before);
        for (workers, batch) in [(1, 1), (2, 1), (2, 2), (3, 1000)] {
            assert_eq!(run(&path, workers, batch), (want.clone(), Err(err.clone())));
        }
    }
}
