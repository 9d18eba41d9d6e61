//! Line framing with a bound: asyncio's `readline`, Twisted's `LineReceiver`.

use std::fmt;
use std::io;

/// Splits a byte stream into lines of at most a given length, holding no more than that
/// between reads.
///
/// Feed it whatever a protocol's [`data`](super::Protocol::data) receives; it calls back once
/// per complete line, without its `\n` (and without a `\r` before it). Whole lines inside one
/// read go to the callback straight from the read's bytes; only a line split across reads is
/// copied, and it may grow to the limit, no further. A longer line is an error, reported once
/// (as [`LineTooLong`]); the rest of it is skipped and the next line arrives intact.
///
/// # Examples
///
/// ```
/// use selreactor::net::Lines;
///
/// let mut lines = Lines::new(8);
/// let mut got = Vec::new();
/// lines.feed(b"one\r\ntw", |line| Ok(got.push(line.unwrap().to_vec())))?;
/// lines.feed(b"o\nmuch too long\nthree\n", |line| {
///     match line {
///         Ok(line) => got.push(line.to_vec()),
///         Err(too_long) => got.push(format!("<{too_long}>").into_bytes()),
///     }
///     Ok(())
/// })?;
/// assert_eq!(got, [&b"one"[..], b"two", b"<line longer than 8 bytes>", b"three"]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Lines {
    max: usize,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Skipping the rest of an over-long line, up to its `\n`.
    discarding: bool,
}

/// A line passed the [`Lines`] limit. Converts into an [`io::Error`] of kind `InvalidData`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineTooLong {
    /// The limit it passed.
    pub max: usize,
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line longer than {} bytes", self.max)
    }
}

impl std::error::Error for LineTooLong {}

impl From<LineTooLong> for io::Error {
    fn from(e: LineTooLong) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl Lines {
    /// A splitter for lines of at most `max` bytes (not counting the line end).
    pub fn new(max: usize) -> Lines {
        Lines {
            max,
            partial: Vec::new(),
            discarding: false,
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes held for a line not yet complete.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Splits `data` into lines, calling `on_line` with each complete one (or a
    /// [`LineTooLong`] once per over-long line), and keeps the unfinished end for next time.
    ///
    /// # Errors
    ///
    /// The first `Err` `on_line` returns: feeding stops there, and the rest of `data` is
    /// dropped (the usual next step is closing the connection).
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut on_line: impl FnMut(Result<&[u8], LineTooLong>) -> io::Result<()>,
    ) -> io::Result<()> {
        let too_long = LineTooLong { max: self.max };
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            let (head, rest) = (&data[..end], &data[end + 1..]);
            data = rest;
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            if self.partial.is_empty() {
                let line = strip_cr(head);
                if line.len() > self.max {
                    on_line(Err(too_long))?;
                } else {
                    on_line(Ok(line))?;
                }
            } else if self.partial.len() + head.len() > self.max + 1 {
                self.partial.clear();
                on_line(Err(too_long))?;
            } else {
                self.partial.extend_from_slice(head);
                let line = std::mem::take(&mut self.partial);
                let stripped = strip_cr(&line);
                let outcome = if stripped.len() > self.max {
                    on_line(Err(too_long))
                } else {
                    on_line(Ok(stripped))
                };
                // Keep the allocation for the next split line.
                self.partial = line;
                self.partial.clear();
                outcome?;
            }
        }
        if self.discarding || data.is_empty() {
            return Ok(());
        }
        // One byte of slack for a `\r` that may precede the `\n`.
        if self.partial.len() + data.len() > self.max + 1 {
            self.partial = Vec::new();
            self.discarding = true;
            return on_line(Err(too_long));
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }

    /// Takes what is left of an unfinished line (at end of stream, say); `None` if nothing is.
    /// A `\r` at its end is kept: no line end followed it.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.discarding = false;
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}
