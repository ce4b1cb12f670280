//! EBML primitives: variable-length integers, element headers and the value types Matroska
//! uses (unsigned, signed, float, string, binary), all parsed from byte slices without I/O.
//!
//! Every function takes untrusted bytes and returns `None` (or a typed error in the caller) for
//! anything malformed or incomplete; nothing here indexes out of bounds or overflows.

/// Matroska element IDs (with their length marker, as written in the file).
pub(crate) mod id {
    pub(crate) const EBML: u32 = 0x1A45_DFA3;
    pub(crate) const DOC_TYPE: u32 = 0x4282;
    pub(crate) const SEGMENT: u32 = 0x1853_8067;

    pub(crate) const SEEK_HEAD: u32 = 0x114D_9B74;
    pub(crate) const SEEK: u32 = 0x4DBB;
    pub(crate) const SEEK_ID: u32 = 0x53AB;
    pub(crate) const SEEK_POSITION: u32 = 0x53AC;

    pub(crate) const INFO: u32 = 0x1549_A966;
    pub(crate) const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
    pub(crate) const DURATION: u32 = 0x4489;

    pub(crate) const TRACKS: u32 = 0x1654_AE6B;
    pub(crate) const TRACK_ENTRY: u32 = 0xAE;
    pub(crate) const TRACK_NUMBER: u32 = 0xD7;
    pub(crate) const TRACK_TYPE: u32 = 0x83;
    pub(crate) const CODEC_ID: u32 = 0x86;
    pub(crate) const CODEC_PRIVATE: u32 = 0x63A2;
    pub(crate) const CODEC_DELAY: u32 = 0x56AA;
    pub(crate) const DEFAULT_DURATION: u32 = 0x23_E383;
    pub(crate) const CONTENT_ENCODINGS: u32 = 0x6D80;
    pub(crate) const VIDEO: u32 = 0xE0;
    pub(crate) const PIXEL_WIDTH: u32 = 0xB0;
    pub(crate) const PIXEL_HEIGHT: u32 = 0xBA;
    pub(crate) const AUDIO: u32 = 0xE1;
    pub(crate) const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub(crate) const CHANNELS: u32 = 0x9F;

    pub(crate) const CUES: u32 = 0x1C53_BB6B;
    pub(crate) const CUE_POINT: u32 = 0xBB;
    pub(crate) const CUE_TIME: u32 = 0xB3;
    pub(crate) const CUE_TRACK_POSITIONS: u32 = 0xB7;
    pub(crate) const CUE_TRACK: u32 = 0xF7;
    pub(crate) const CUE_CLUSTER_POSITION: u32 = 0xF1;
    pub(crate) const CUE_RELATIVE_POSITION: u32 = 0xF0;

    pub(crate) const CLUSTER: u32 = 0x1F43_B675;
    pub(crate) const TIMESTAMP: u32 = 0xE7;
    pub(crate) const SIMPLE_BLOCK: u32 = 0xA3;
    pub(crate) const BLOCK_GROUP: u32 = 0xA0;
    pub(crate) const BLOCK: u32 = 0xA1;
    pub(crate) const BLOCK_DURATION: u32 = 0x9B;
    pub(crate) const REFERENCE_BLOCK: u32 = 0xFB;

    pub(crate) const ATTACHMENTS: u32 = 0x1941_A469;
    pub(crate) const CHAPTERS: u32 = 0x1043_A770;
    pub(crate) const TAGS: u32 = 0x1254_C367;
    pub(crate) const VOID: u32 = 0xEC;
    pub(crate) const CRC32: u32 = 0xBF;
}

/// Whether `element` may appear directly in a Segment. An unknown-size Cluster ends at the
/// first of these (the next Cluster, or Cues/Tags written after the media).
pub(crate) fn is_top_level(element: u32) -> bool {
    matches!(
        element,
        id::CLUSTER
            | id::SEEK_HEAD
            | id::INFO
            | id::TRACKS
            | id::CUES
            | id::ATTACHMENTS
            | id::CHAPTERS
            | id::TAGS
            | id::EBML
            | id::SEGMENT
    )
}

/// The longest element header: a 4-byte ID and an 8-byte size.
pub(crate) const MAX_HEADER: u64 = 12;

/// An element's ID and size, located in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) id: u32,
    /// Absolute offset of the ID's first byte.
    pub(crate) offset: u64,
    /// Bytes of ID plus size field.
    pub(crate) len: u64,
    /// Data size; `None` for the unknown-size marker (all value bits set).
    pub(crate) size: Option<u64>,
}

impl Header {
    pub(crate) fn data_start(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    /// One past the last data byte, when the size is known and does not overflow.
    pub(crate) fn end(&self) -> Option<u64> {
        self.size.and_then(|s| self.data_start().checked_add(s))
    }
}

/// Why a header could not be read from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// The buffer ends inside the header.
    Incomplete,
    /// The bytes cannot be an element header (zero length marker, ID longer than 4 bytes).
    Invalid,
}

/// Length in bytes of a variable-length integer from its first byte; `None` for 0x00.
fn vint_len(first: u8) -> Option<usize> {
    if first == 0 {
        None
    } else {
        Some(first.leading_zeros() as usize + 1)
    }
}

/// Reads an element ID (marker bits kept, 1-4 bytes).
pub(crate) fn read_id(buf: &[u8]) -> Result<(u32, usize), HeaderError> {
    let first = *buf.first().ok_or(HeaderError::Incomplete)?;
    let len = vint_len(first).ok_or(HeaderError::Invalid)?;
    if len > 4 {
        return Err(HeaderError::Invalid);
    }
    let bytes = buf.get(..len).ok_or(HeaderError::Incomplete)?;
    let value = bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    Ok((value, len))
}

/// Reads a size or other unsigned vint (marker removed, 1-8 bytes). The value is `None` when
/// all value bits are set: the unknown-size marker.
pub(crate) fn read_vint(buf: &[u8]) -> Result<(Option<u64>, usize), HeaderError> {
    let first = *buf.first().ok_or(HeaderError::Incomplete)?;
    let len = vint_len(first).ok_or(HeaderError::Invalid)?;
    let bytes = buf.get(..len).ok_or(HeaderError::Incomplete)?;
    let value_bits = 7 * len as u32;
    let mut value = u64::from(first) & ((1u64 << (8 - len as u32)).wrapping_sub(1));
    for &b in bytes.iter().skip(1) {
        value = (value << 8) | u64::from(b);
    }
    let all_ones = (1u64 << value_bits) - 1;
    Ok((if value == all_ones { None } else { Some(value) }, len))
}

/// Reads the element header at the start of `buf`, which lies at absolute `offset`.
pub(crate) fn read_header(buf: &[u8], offset: u64) -> Result<Header, HeaderError> {
    let (element, id_len) = read_id(buf)?;
    let (size, size_len) = read_vint(buf.get(id_len..).ok_or(HeaderError::Incomplete)?)?;
    Ok(Header { id: element, offset, len: (id_len + size_len) as u64, size })
}

/// An unsigned integer element's value (0-8 bytes, big-endian).
pub(crate) fn read_uint(data: &[u8]) -> Option<u64> {
    if data.len() > 8 {
        return None;
    }
    Some(data.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// A float element's value (0, 4 or 8 bytes).
pub(crate) fn read_float(data: &[u8]) -> Option<f64> {
    match data.len() {
        0 => Some(0.0),
        4 => <[u8; 4]>::try_from(data).ok().map(|b| f64::from(f32::from_be_bytes(b))),
        8 => <[u8; 8]>::try_from(data).ok().map(f64::from_be_bytes),
        _ => None,
    }
}

/// A string element's value, up to the first NUL (Matroska pads strings with zeros).
pub(crate) fn read_string(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(data.get(..end).unwrap_or_default()).into_owned()
}

/// The children of a master element whose data is entirely in `data` (which starts at absolute
/// offset `base`). Yields each child's header and data; stops with an error at the first child
/// that is malformed or runs past the parent.
#[derive(Debug)]
pub(crate) struct Children<'a> {
    data: &'a [u8],
    base: u64,
    pos: usize,
    failed: bool,
}

/// Where and why iterating children stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildError {
    /// Absolute offset of the offending child.
    pub(crate) offset: u64,
    pub(crate) kind: ChildErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildErrorKind {
    BadHeader,
    UnknownSize,
    PastParent,
}

impl ChildErrorKind {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            ChildErrorKind::BadHeader => "invalid child element header",
            ChildErrorKind::UnknownSize => "child element of unknown size",
            ChildErrorKind::PastParent => "child element extends past its parent",
        }
    }
}

pub(crate) fn children(data: &[u8], base: u64) -> Children<'_> {
    Children { data, base, pos: 0, failed: false }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<(Header, &'a [u8]), ChildError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let offset = self.base.saturating_add(self.pos as u64);
        let rest = self.data.get(self.pos..)?;
        let fail = |s: &mut Self, kind| {
            s.failed = true;
            Some(Err(ChildError { offset, kind }))
        };
        let header = match read_header(rest, offset) {
            Ok(h) => h,
            Err(_) => return fail(self, ChildErrorKind::BadHeader),
        };
        let Some(size) = header.size else {
            return fail(self, ChildErrorKind::UnknownSize);
        };
        let start = header.len as usize;
        let body = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .and_then(|end| rest.get(start..end));
        let Some(body) = body else {
            return fail(self, ChildErrorKind::PastParent);
        };
        self.pos += start + body.len();
        Some(Ok((header, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vint_sizes_of_every_length_and_unknown_marker() {
        assert_eq!(read_vint(&[0x81]), Ok((Some(1), 1)));
        assert_eq!(read_vint(&[0x40, 0x02]), Ok((Some(2), 2)));
        assert_eq!(read_vint(&[0x01, 0, 0, 0, 0, 0, 0x01, 0x00]), Ok((Some(256), 8)));
        assert_eq!(read_vint(&[0xFF]), Ok((None, 1)));
        assert_eq!(read_vint(&[0x7F, 0xFF]), Ok((None, 2)), "all-ones is unknown at any length");
        assert_eq!(read_vint(&[0x7F, 0xFE]), Ok((Some(0x3FFE), 2)));
        assert_eq!(read_vint(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]), Ok((None, 8)));
        assert_eq!(
            read_vint(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE]),
            Ok((Some(0x00FF_FFFF_FFFF_FFFE), 8))
        );
        assert_eq!(read_vint(&[0x00, 1]), Err(HeaderError::Invalid));
        assert_eq!(read_vint(&[0x20, 1]), Err(HeaderError::Incomplete));
        assert_eq!(read_vint(&[]), Err(HeaderError::Incomplete));
    }

    #[test]
    fn ids_keep_their_marker_and_reject_long_ids() {
        assert_eq!(read_id(&[0x1A, 0x45, 0xDF, 0xA3]), Ok((id::EBML, 4)));
        assert_eq!(read_id(&[0xA3]), Ok((id::SIMPLE_BLOCK, 1)));
        assert_eq!(read_id(&[0x08, 0, 0, 0, 0]), Err(HeaderError::Invalid));
        let h = read_header(&[0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], 10)
            .expect("header");
        assert_eq!(h, Header { id: id::CLUSTER, offset: 10, len: 12, size: None });
        assert_eq!(h.end(), None);
    }

    #[test]
    fn values() {
        assert_eq!(read_uint(&[]), Some(0));
        assert_eq!(read_uint(&[0x0F, 0x42, 0x40]), Some(1_000_000));
        assert_eq!(read_uint(&[0; 9]), None);
        assert_eq!(read_float(&1.5f32.to_be_bytes()), Some(1.5));
        assert_eq!(read_float(&2.25f64.to_be_bytes()), Some(2.25));
        assert_eq!(read_float(&[1, 2, 3]), None);
        assert_eq!(read_string(b"webm\0\0"), "webm");
    }

    #[test]
    fn children_stop_at_overrun() {
        let data = [0xE7, 0x81, 0x05, 0xA3, 0x85, 1, 2];
        let mut it = children(&data, 100);
        let (h, body) = it.next().expect("first").expect("ok");
        assert_eq!((h.id, h.offset, body), (id::TIMESTAMP, 100, &[5u8][..]));
        assert_eq!(it.next(), Some(Err(ChildError { offset: 103, kind: ChildErrorKind::PastParent })));
        assert_eq!(it.next(), None);
    }
}
