//! Box primitives: box headers, iterating a body's children and big-endian reads with errors
//! that name the box and offset, all over bytes already in memory (no I/O here).

use bytes::Bytes;

use crate::index::ParseError;

/// A box header: type, where the box starts, how long its header is and its total size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BoxHeader {
    pub(super) kind: [u8; 4],
    pub(super) offset: u64,
    pub(super) header_len: u64,
    pub(super) size: u64,
}

impl BoxHeader {
    pub(super) fn end(&self) -> u64 {
        self.offset + self.size
    }
    pub(super) fn body_offset(&self) -> u64 {
        self.offset + self.header_len
    }
    pub(super) fn body_len(&self) -> u64 {
        self.size - self.header_len
    }
    pub(super) fn is(&self, kind: &[u8; 4]) -> bool {
        &self.kind == kind
    }
}

/// Parses the box header at the start of `buf`, which lies at file offset `offset` inside a
/// parent that ends at `parent_end`. Sizes of zero mean "to the end of the parent".
pub(super) fn parse_box_header(buf: &[u8], offset: u64, parent_end: u64) -> Result<BoxHeader, ParseError> {
    let too_short =
        || ParseError::Truncated { element: "box header", offset, needed: 8, end: offset + buf.len() as u64 };
    let size32 =
        u32::from_be_bytes(buf.get(0..4).ok_or_else(too_short)?.try_into().map_err(|_| too_short())?);
    let kind: [u8; 4] = buf.get(4..8).ok_or_else(too_short)?.try_into().map_err(|_| too_short())?;
    let (header_len, size) = match size32 {
        0 => (8, parent_end.saturating_sub(offset)),
        1 => {
            let large = buf.get(8..16).ok_or(ParseError::Truncated {
                element: "box header",
                offset,
                needed: 16,
                end: offset + buf.len() as u64,
            })?;
            let mut be = [0u8; 8];
            be.copy_from_slice(large);
            (16, u64::from_be_bytes(be))
        }
        n => (8, u64::from(n)),
    };
    if size < header_len {
        return Err(ParseError::malformed(
            box_name(&kind),
            offset,
            format!("box size {size} is smaller than its {header_len}-byte header"),
        ));
    }
    match offset.checked_add(size) {
        Some(end) if end <= parent_end => {}
        _ => {
            return Err(ParseError::malformed(
                box_name(&kind),
                offset,
                format!("box of {size} bytes runs past its parent, which ends at byte {parent_end}"),
            ))
        }
    }
    Ok(BoxHeader { kind, offset, header_len, size })
}

/// A static name for error messages: the boxes we parse by name, "box" otherwise.
pub(super) fn box_name(kind: &[u8; 4]) -> &'static str {
    const KNOWN: &[&str] = &[
        "ftyp", "moov", "mdat", "moof", "mfra", "mfro", "tfra", "sidx", "mvhd", "trak", "tkhd", "mdia",
        "mdhd", "hdlr", "minf", "stbl", "stsd", "stts", "ctts", "stss", "stsz", "stz2", "stsc", "stco",
        "co64", "edts", "elst", "mvex", "trex", "mehd", "traf", "tfhd", "tfdt", "trun", "avcC", "hvcC",
        "esds", "dOps", "av1C", "dfLa", "free", "skip", "uuid",
    ];
    KNOWN.iter().copied().find(|k| k.as_bytes() == kind).unwrap_or("box")
}

/// A tick count read from the file as a signed count, or a typed error naming the box: a
/// value above `i64::MAX` would otherwise wrap into a negative time.
pub(super) fn signed_ticks(value: u64, element: &'static str, offset: u64) -> Result<i64, ParseError> {
    i64::try_from(value)
        .map_err(|_| ParseError::malformed(element, offset, format!("{value} ticks do not fit in 63 bits")))
}

/// Iterates the child boxes of a body held in memory.
pub(super) struct Children<'a> {
    body: &'a Bytes,
    /// File offset of `body[0]`.
    base: u64,
    pos: usize,
}

impl<'a> Children<'a> {
    pub(super) fn new(body: &'a Bytes, base: u64) -> Self {
        Children { body, base, pos: 0 }
    }
}

impl Iterator for Children<'_> {
    type Item = Result<(BoxHeader, Bytes), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos + 8 > self.body.len() {
            return None;
        }
        let offset = self.base + self.pos as u64;
        let parent_end = self.base + self.body.len() as u64;
        let header = match parse_box_header(&self.body[self.pos..], offset, parent_end) {
            Ok(h) => h,
            Err(e) => {
                self.pos = self.body.len();
                return Some(Err(e));
            }
        };
        let start = self.pos + header.header_len as usize;
        let end = self.pos + header.size as usize;
        self.pos = end;
        Some(Ok((header, self.body.slice(start..end))))
    }
}

/// Finds the first child of type `kind`.
pub(super) fn child(
    body: &Bytes,
    base: u64,
    kind: &[u8; 4],
) -> Result<Option<(BoxHeader, Bytes)>, ParseError> {
    for item in Children::new(body, base) {
        let (header, data) = item?;
        if header.is(kind) {
            return Ok(Some((header, data)));
        }
    }
    Ok(None)
}

/// Big-endian reads over a box body with errors naming the box and offset.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pub(super) pos: usize,
    element: &'static str,
    base: u64,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8], element: &'static str, base: u64) -> Self {
        Cursor { buf, pos: 0, element, base }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(ParseError::Truncated {
            element: self.element,
            offset: self.base + self.pos as u64,
            needed: n as u64,
            end: self.base + self.buf.len() as u64,
        })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(super) fn skip(&mut self, n: usize) -> Result<(), ParseError> {
        self.take(n).map(|_| ())
    }

    pub(super) fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Result<u32, ParseError> {
        let b = self.take(3)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    pub(super) fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut be = [0u8; 8];
        be.copy_from_slice(b);
        Ok(u64::from_be_bytes(be))
    }

    /// A signed 64-bit field (as the spec declares it, e.g. an edit's media time).
    pub(super) fn i64(&mut self) -> Result<i64, ParseError> {
        let b = self.take(8)?;
        let mut be = [0u8; 8];
        be.copy_from_slice(b);
        Ok(i64::from_be_bytes(be))
    }

    /// Version byte and 24-bit flags of a full box.
    pub(super) fn full_box(&mut self) -> Result<(u8, u32), ParseError> {
        Ok((self.u8()?, self.u24()?))
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// An entry count that must fit, at `entry_size` bytes each, in what is left of the box:
    /// the check that keeps a forged count from sizing an allocation.
    pub(super) fn count(&mut self, entry_size: usize) -> Result<usize, ParseError> {
        let at = self.offset();
        let count = self.u32()? as usize;
        if count.saturating_mul(entry_size) > self.remaining() {
            return Err(ParseError::malformed(
                self.element,
                at,
                format!(
                    "{count} entries of {entry_size} bytes do not fit in the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        Ok(count)
    }
}
