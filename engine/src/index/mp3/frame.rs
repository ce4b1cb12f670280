//! Layer III frame headers and the ID3v2 tag that may come before the first frame, parsed from
//! bytes in memory (no I/O).

use super::ID3;
use crate::index::ParseError;

/// A decoded layer III frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// 1 for MPEG-1, 2 for MPEG-2, 25 for MPEG-2.5.
    pub(crate) version: u8,
    pub(crate) bitrate_kbps: u32,
    pub(crate) sample_rate: u32,
    pub(crate) padding: bool,
    pub(crate) mono: bool,
    pub(crate) len: u32,
    pub(crate) samples: u32,
}

impl FrameHeader {
    pub(crate) fn parse(b: &[u8]) -> Option<FrameHeader> {
        let h = u32::from_be_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]);
        if h >> 21 != 0x7FF {
            return None;
        }
        let version = match (h >> 19) & 3 {
            0 => 25,
            2 => 2,
            3 => 1,
            _ => return None,
        };
        if (h >> 17) & 3 != 1 {
            return None; // not layer III
        }
        let bitrate_index = ((h >> 12) & 15) as usize;
        let rate_index = ((h >> 10) & 3) as usize;
        if bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
            return None;
        }
        const V1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
        const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
        let (bitrate_kbps, sample_rate, samples, coeff) = match version {
            1 => (V1[bitrate_index], [44_100, 48_000, 32_000][rate_index], 1152, 144),
            2 => (V2[bitrate_index], [22_050, 24_000, 16_000][rate_index], 576, 72),
            _ => (V2[bitrate_index], [11_025, 12_000, 8_000][rate_index], 576, 72),
        };
        let padding = (h >> 9) & 1 == 1;
        let len = coeff * bitrate_kbps * 1000 / sample_rate + padding as u32;
        Some(FrameHeader {
            version,
            bitrate_kbps,
            sample_rate,
            padding,
            mono: (h >> 6) & 3 == 3,
            len,
            samples,
        })
    }

    /// Whether `other` can follow this frame in the same stream.
    pub(super) fn compatible(&self, other: &FrameHeader) -> bool {
        self.version == other.version && self.sample_rate == other.sample_rate
    }

    /// Offset of a Xing/Info header inside the frame (after the side information).
    pub(super) fn xing_offset(&self) -> usize {
        match (self.version == 1, self.mono) {
            (true, false) => 4 + 32,
            (true, true) | (false, false) => 4 + 17,
            (false, true) => 4 + 9,
        }
    }
}

/// Size of the ID3v2 tag at the start of `b` (header, body, footer), if there is one.
pub(super) fn id3v2_len(b: &[u8], offset: u64) -> Result<Option<u64>, ParseError> {
    if !b.starts_with(b"ID3") {
        return Ok(None);
    }
    let h = b.get(..10).ok_or_else(|| ParseError::Truncated {
        element: ID3,
        offset,
        needed: 10,
        end: offset + b.len() as u64,
    })?;
    if h[6..10].iter().any(|&x| x & 0x80 != 0) {
        return Err(ParseError::malformed(ID3, offset, "size is not syncsafe"));
    }
    let size = h[6..10].iter().fold(0u64, |a, &x| (a << 7) | x as u64);
    let footer = if h[5] & 0x10 != 0 { 10 } else { 0 };
    Ok(Some(10 + size + footer))
}
