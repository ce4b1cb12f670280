//! The Xing/Info or VBRI header in the first frame: frame and byte counts, TOC and the LAME
//! encoder delay, which give the duration and tell CBR (Info) from VBR.

use super::frame::FrameHeader;
use crate::index::ParseError;

pub(super) const XING: &str = "Xing header";

/// What the first frame's Xing/Info or VBRI header says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct VbrHeader {
    pub(crate) frames: Option<u32>,
    pub(crate) bytes: Option<u32>,
    /// The Xing seek table (100 entries of 1/256 of the file), when present and increasing.
    pub(crate) toc: Option<[u8; 100]>,
    /// LAME encoder delay and padding, in samples.
    pub(crate) delay: Option<(u16, u16)>,
    /// The tag says "Info": LAME writes it instead of "Xing" for constant bitrate.
    pub(crate) info: bool,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

/// Parses a Xing/Info or VBRI header in `frame` (the whole first frame), `offset` for errors.
pub(crate) fn parse_vbr_header(
    header: &FrameHeader,
    frame: &[u8],
    offset: u64,
) -> Result<Option<VbrHeader>, ParseError> {
    let at = header.xing_offset();
    let truncated = || ParseError::malformed(XING, offset, "shorter than its flags say");
    if let Some(tag) = frame.get(at..at + 4).filter(|t| t == b"Xing" || t == b"Info") {
        let flags = be32(frame, at + 4).ok_or_else(truncated)?;
        let mut p = at + 8;
        let mut vbr = VbrHeader { info: tag == b"Info", ..VbrHeader::default() };
        if flags & 1 != 0 {
            vbr.frames = Some(be32(frame, p).ok_or_else(truncated)?);
            p += 4;
        }
        if flags & 2 != 0 {
            vbr.bytes = Some(be32(frame, p).ok_or_else(truncated)?);
            p += 4;
        }
        if flags & 4 != 0 {
            let toc = frame.get(p..p + 100).ok_or_else(truncated)?;
            let mut table = [0u8; 100];
            table.copy_from_slice(toc);
            // A table that is not non-decreasing is nonsense: ignore it.
            if table.windows(2).all(|w| w[0] <= w[1]) {
                vbr.toc = Some(table);
            }
            p += 100;
        }
        if flags & 8 != 0 {
            p += 4;
        }
        // LAME tag: 9-byte encoder string, then delay/padding 12+12 bits at +21.
        if let Some(d) = frame.get(p + 21..p + 24).filter(|_| frame.get(p..p + 4) == Some(b"LAME")) {
            let delay = ((d[0] as u16) << 4) | (d[1] as u16 >> 4);
            let padding = (((d[1] & 0x0F) as u16) << 8) | d[2] as u16;
            vbr.delay = Some((delay, padding));
        }
        return Ok(Some(vbr));
    }
    if frame.get(36..40) == Some(b"VBRI") {
        let bytes = be32(frame, 36 + 10).ok_or_else(truncated)?;
        let frames = be32(frame, 36 + 14).ok_or_else(truncated)?;
        return Ok(Some(VbrHeader { frames: Some(frames), bytes: Some(bytes), ..VbrHeader::default() }));
    }
    Ok(None)
}
