//! `rcops rdb …`: renders [`rcops_core::ops::rdb`]. No cluster needed.

use rcops_core::ops::rdb::{dump, memory, scan};
use rcops_formats::conf::glob_bytes;

use super::{CmdResult, Failure};
use crate::cli::{GlobalOpts, RdbCommand};
use crate::output::{self, bytes, EXIT_OK};

fn matches(pattern: &Option<String>, key: &[u8]) -> bool {
    pattern
        .as_deref()
        .is_none_or(|p| glob_bytes(p.as_bytes(), key))
}

pub fn run(g: &GlobalOpts, c: &RdbCommand) -> CmdResult {
    match c {
        RdbCommand::Info { file } => {
            let info = scan(file, false, |_| {}).map_err(Failure::failed)?;
            if g.json {
                output::print_json(&info);
                return Ok(EXIT_OK);
            }
            crate::outln!(
                "RDB version {}, {} keys ({} with a TTL, {} already expired), {} serialized",
                info.version,
                info.keys,
                info.expires,
                info.expired,
                bytes(info.serialized_bytes)
            );
            for (k, v) in &info.aux {
                crate::outln!("aux {k} = {v}");
            }
            let mut t = output::table(&["DB", "TYPE", "KEYS"]);
            for (db, types) in &info.dbs {
                for (ty, n) in types {
                    t.add_row(vec![db.to_string(), ty.to_string(), n.to_string()]);
                }
            }
            output::align_right(&mut t, &[2]);
            output::print_table(&t);
            crate::outln!(
                "checksum {}",
                info.checksum
                    .as_deref()
                    .unwrap_or("absent (disabled when written)")
            );
            Ok(EXIT_OK)
        }
        RdbCommand::Keys { file, pattern } => {
            let mut out = output::Lines::new();
            scan(file, false, |e| {
                if !matches(pattern, &e.key) {
                    return;
                }
                if g.json {
                    out.json(&serde_json::json!({
                        "db": e.db, "key": String::from_utf8_lossy(&e.key),
                        "type": rcops_core::ops::rdb::type_name(e.type_byte), "expire_ms": e.expire_ms,
                    }));
                } else {
                    out.line(format_args!("{}", rcops_formats::display_key(&e.key)));
                }
            })
            .map_err(Failure::failed)?;
            out.finish();
            Ok(EXIT_OK)
        }
        RdbCommand::Dump {
            file,
            pattern,
            threads,
        } => {
            let mut out = output::Lines::new();
            dump(
                file,
                threads.map(usize::from),
                |e| matches(pattern, &e.key),
                |e, out| rcops_rdb::json::entry_line(out, e),
                |lines| out.raw(lines),
            )
            .map_err(Failure::failed)?;
            out.finish();
            Ok(EXIT_OK)
        }
        RdbCommand::Memory {
            file,
            top,
            delimiter,
        } => {
            let m = memory(file, *top, delimiter).map_err(Failure::failed)?;
            if g.json {
                output::print_json(&m);
                return Ok(EXIT_OK);
            }
            let mut t = output::table(&["KEY", "DB", "TYPE", "SERIALIZED", "ELEMENTS"]);
            for k in &m.top {
                t.add_row(vec![
                    k.key.clone(),
                    k.db.to_string(),
                    k.kind.to_string(),
                    bytes(k.serialized_bytes),
                    k.elements.to_string(),
                ]);
            }
            output::align_right(&mut t, &[3, 4]);
            output::print_table(&t);
            let mut t = output::table(&["TYPE", "KEYS", "SERIALIZED"]);
            for (ty, x) in &m.by_type {
                t.add_row(vec![
                    ty.to_string(),
                    x.keys.to_string(),
                    bytes(x.serialized_bytes),
                ]);
            }
            output::align_right(&mut t, &[1, 2]);
            output::print_table(&t);
            let mut prefixes: Vec<_> = m.by_prefix.iter().collect();
            prefixes.sort_by_key(|(_, x)| std::cmp::Reverse(x.serialized_bytes));
            let mut t = output::table(&["PREFIX", "KEYS", "SERIALIZED"]);
            for (p, x) in prefixes.iter().take(20) {
                t.add_row(vec![
                    p.to_string(),
                    x.keys.to_string(),
                    bytes(x.serialized_bytes),
                ]);
            }
            output::align_right(&mut t, &[1, 2]);
            output::print_table(&t);
            Ok(EXIT_OK)
        }
    }
}
