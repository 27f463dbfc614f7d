//! Slot arithmetic: CRC16 (XMODEM) key hashing with `{hash tags}`, slot ranges and slot sets.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ParseError;

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key hashing.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key: CRC16 of the key, or of the first non-empty `{tag}` in it, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) & (SLOTS - 1)
}

/// A short hash tag whose keys hash to `slot` (`{tag}…`): how a temporary key is placed in
/// the slot of the key it will replace. The table is built once (about 170k CRCs).
pub fn tag_for_slot(slot: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); usize::from(SLOTS)];
        let mut left = usize::from(SLOTS);
        let mut n = 0u64;
        while left > 0 {
            let t = n.to_string();
            let s = &mut tags[usize::from(crc16(t.as_bytes()) & (SLOTS - 1))];
            if s.is_empty() {
                *s = t;
                left -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(slot & (SLOTS - 1))]
}

/// An inclusive range of slots, printed like Redis does: `5` or `0-5460`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
}

impl SlotRange {
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parses `N` or `N-M` with both ends inside 0..16384 and start <= end.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let (start, end) = match text.split_once('-') {
            Some((a, b)) => (parse_slot(a, text)?, parse_slot(b, text)?),
            None => {
                let s = parse_slot(text, text)?;
                (s, s)
            }
        };
        if start > end {
            return Err(ParseError::value("slot range start after end", text));
        }
        Ok(SlotRange { start, end })
    }
}

fn parse_slot(part: &str, whole: &str) -> Result<u16, ParseError> {
    match part.parse::<u16>() {
        Ok(slot) if slot < SLOTS => Ok(slot),
        _ => Err(ParseError::value("invalid slot", whole)),
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// A set of slots (a 16384-bit bitmap), convertible to and from compact ranges.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet {
    bits: Box<[u64; 256]>,
}

impl Default for SlotSet {
    fn default() -> Self {
        SlotSet {
            bits: Box::new([0; 256]),
        }
    }
}

impl fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotSet[{}]", format_ranges(&self.ranges()))
    }
}

impl SlotSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every slot 0..16384.
    pub fn full() -> Self {
        SlotSet {
            bits: Box::new([u64::MAX; 256]),
        }
    }

    pub fn from_ranges<'a>(ranges: impl IntoIterator<Item = &'a SlotRange>) -> Self {
        let mut set = Self::new();
        for r in ranges {
            set.insert_range(*r);
        }
        set
    }

    pub fn insert(&mut self, slot: u16) {
        if slot < SLOTS {
            self.bits[usize::from(slot / 64)] |= 1 << (slot % 64);
        }
    }

    pub fn insert_range(&mut self, range: SlotRange) {
        for slot in range.start..=range.end.min(SLOTS - 1) {
            self.insert(slot);
        }
    }

    pub fn remove(&mut self, slot: u16) {
        if slot < SLOTS {
            self.bits[usize::from(slot / 64)] &= !(1 << (slot % 64));
        }
    }

    pub fn contains(&self, slot: u16) -> bool {
        slot < SLOTS && self.bits[usize::from(slot / 64)] & (1 << (slot % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    pub fn union_with(&mut self, other: &SlotSet) {
        for (a, b) in self.bits.iter_mut().zip(other.bits.iter()) {
            *a |= b;
        }
    }

    pub fn intersection(&self, other: &SlotSet) -> SlotSet {
        let mut out = self.clone();
        for (a, b) in out.bits.iter_mut().zip(other.bits.iter()) {
            *a &= b;
        }
        out
    }

    /// Slots not in this set.
    pub fn complement(&self) -> SlotSet {
        let mut out = self.clone();
        for w in out.bits.iter_mut() {
            *w = !*w;
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..SLOTS).filter(move |&s| self.contains(s))
    }

    /// The set as sorted, maximal inclusive ranges.
    pub fn ranges(&self) -> Vec<SlotRange> {
        let mut out: Vec<SlotRange> = Vec::new();
        for slot in self.iter() {
            match out.last_mut() {
                Some(last) if last.end + 1 == slot => last.end = slot,
                _ => out.push(SlotRange {
                    start: slot,
                    end: slot,
                }),
            }
        }
        out
    }
}

/// `0-5460,5461,5463-6000`: ranges joined by commas, `-` when empty.
pub fn format_ranges(ranges: &[SlotRange]) -> String {
    if ranges.is_empty() {
        return "-".to_string();
    }
    ranges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits 16384 slots into `n` contiguous ranges the way `redis-cli --cluster create` does
/// (a fractional cursor rounded per master), so lab clusters look like real ones.
pub fn even_split(n: usize) -> Vec<SlotRange> {
    if n == 0 {
        return Vec::new();
    }
    let per_node = f64::from(SLOTS) / n as f64;
    let mut cursor = 0.0f64;
    let mut first = 0u16;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut last = (cursor + per_node - 1.0).round() as i64;
        if last > i64::from(SLOTS - 1) || i == n - 1 {
            last = i64::from(SLOTS - 1);
        }
        let last = last.max(i64::from(first)) as u16;
        out.push(SlotRange {
            start: first,
            end: last,
        });
        first = last.saturating_add(1);
        cursor += per_node;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        for slot in 0..SLOTS {
            let key = format!("{{{}}}tmp", tag_for_slot(slot));
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
    }

    #[test]
    fn crc16_matches_the_redis_cluster_spec_check_value() {
        // From the Redis Cluster specification: CRC16("123456789") = 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn key_slot_matches_values_reported_by_cluster_keyslot() {
        // Values captured from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"hello"), 866);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn key_slot_hashes_only_the_first_non_empty_tag() {
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"{"), key_slot(b"{"));
    }

    #[test]
    fn ranges_round_trip_through_a_set() {
        let rs = [
            SlotRange::parse("0-10").unwrap(),
            SlotRange::parse("12").unwrap(),
            SlotRange::parse("16383").unwrap(),
        ];
        let set = SlotSet::from_ranges(&rs);
        assert_eq!(set.len(), 13);
        assert_eq!(set.ranges(), rs.to_vec());
        assert_eq!(format_ranges(&set.ranges()), "0-10,12,16383");
        assert_eq!(set.complement().len(), 16384 - 13);
    }

    #[test]
    fn range_parse_rejects_out_of_bounds_and_reversed() {
        assert!(SlotRange::parse("16384").is_err());
        assert!(SlotRange::parse("10-5").is_err());
        assert!(SlotRange::parse("a-b").is_err());
        assert!(SlotRange::parse("").is_err());
        assert!(SlotRange::parse("-1").is_err());
    }

    #[test]
    fn even_split_covers_every_slot_like_redis_cli() {
        let r = even_split(3);
        assert_eq!(format_ranges(&r), "0-5460,5461-10922,10923-16383");
        for n in [1, 3, 7, 60, 128] {
            let set = SlotSet::from_ranges(&even_split(n));
            assert_eq!(set.len(), 16384, "n={n}");
        }
    }
}
