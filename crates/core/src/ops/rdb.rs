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
    let mut p = parser(path)?.decode_values(decode).keep_raw(false);
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
                on_entry(&e);
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
        let key = String::from_utf8_lossy(&e.key).into_owned();
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
