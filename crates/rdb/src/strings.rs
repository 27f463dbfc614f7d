//! Collections of byte strings stored back to back in one buffer: a list's, set's, sorted
//! set's or hash's elements cost two allocations, not one each (a `Vec` per element was
//! about a third of `rdb dump`'s time, in malloc and free).

/// Byte strings in order, in one buffer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Strings {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Strings {
    /// Room for `n` strings (capped by the caller: counts come from the file).
    pub fn with_capacity(n: usize) -> Self {
        Strings {
            data: Vec::with_capacity(n * 8),
            ends: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, s: &[u8]) {
        self.data.extend_from_slice(s);
        self.ends.push(self.data.len());
    }

    /// An integer as its decimal text, as Redis returns it.
    pub fn push_int(&mut self, i: i64) {
        self.push(itoa::Buffer::new().format(i).as_bytes());
    }

    /// Appends the next string with `fill`, which writes its bytes at the end of the buffer.
    pub fn push_with<E>(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.data.len();
        match fill(&mut self.data) {
            Ok(()) => {
                self.ends.push(self.data.len());
                Ok(())
            }
            Err(e) => {
                self.data.truncate(start);
                Err(e)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.data[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + Clone + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let s = &self.data[start..end];
            start = end;
            s
        })
    }
}

impl std::fmt::Debug for Strings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

impl<T: AsRef<[u8]>> FromIterator<T> for Strings {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut out = Strings::default();
        for x in items {
            out.push(x.as_ref());
        }
        out
    }
}

/// A sorted set's members with their scores, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Members {
    pub names: Strings,
    pub scores: Vec<f64>,
}

impl Members {
    pub fn with_capacity(n: usize) -> Self {
        Members {
            names: Strings::with_capacity(n),
            scores: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, name: &[u8], score: f64) {
        self.names.push(name);
        self.scores.push(score);
    }

    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], f64)> + '_ {
        self.names.iter().zip(self.scores.iter().copied())
    }
}

impl<T: AsRef<[u8]>> FromIterator<(T, f64)> for Members {
    fn from_iter<I: IntoIterator<Item = (T, f64)>>(items: I) -> Self {
        let mut out = Members::default();
        for (m, s) in items {
            out.push(m.as_ref(), s);
        }
        out
    }
}

/// A hash's fields and values, with each field's absolute expiry in ms (`None`: none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub names: Strings,
    pub values: Strings,
    pub expiries: Vec<Option<i64>>,
}

impl Fields {
    pub fn with_capacity(n: usize) -> Self {
        Fields {
            names: Strings::with_capacity(n),
            values: Strings::with_capacity(n),
            expiries: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, name: &[u8], value: &[u8], expiry: Option<i64>) {
        self.names.push(name);
        self.values.push(value);
        self.expiries.push(expiry);
    }

    pub fn len(&self) -> usize {
        self.expiries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expiries.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8], Option<i64>)> + '_ {
        self.names
            .iter()
            .zip(self.values.iter())
            .zip(self.expiries.iter().copied())
            .map(|((f, v), e)| (f, v, e))
    }
}

impl<F: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(F, V, Option<i64>)> for Fields {
    fn from_iter<I: IntoIterator<Item = (F, V, Option<i64>)>>(items: I) -> Self {
        let mut out = Fields::default();
        for (f, v, e) in items {
            out.push(f.as_ref(), v.as_ref(), e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_keep_order_and_bounds_including_empty_ones() {
        let items: [&[u8]; 5] = [b"", b"a", b"", b"bc\xff", b""];
        let s: Strings = items.iter().collect();
        assert_eq!(s.len(), 5);
        assert_eq!(s.iter().collect::<Vec<_>>(), items);
        assert_eq!(s.get(3), Some(&b"bc\xff"[..]));
        assert_eq!(s.get(5), None);
        let mut t = Strings::default();
        assert!(t.is_empty());
        t.push_int(-42);
        let failed: Result<(), ()> = t.push_with(|b| {
            b.extend_from_slice(b"partial");
            Err(())
        });
        assert!(failed.is_err());
        t.push_with(|b| {
            b.extend_from_slice(b"ok");
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(t.iter().collect::<Vec<_>>(), [&b"-42"[..], b"ok"]);
        assert_ne!(s, t);
    }
}
