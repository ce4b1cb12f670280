//! What the codecs add to Ogg's packets: packet durations from the Opus TOC byte and from the
//! Vorbis block sizes, for which the mode list is read from the Vorbis setup header.

use crate::index::ParseError;

const VORBIS_SETUP: &str = "Vorbis setup header";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Opus,
    Vorbis,
}

/// What the Vorbis setup header says about block sizes, as FFmpeg's Vorbis parser reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VorbisModes {
    pub(super) blocksize: [u32; 2],
    /// Per mode: true for a long block.
    pub(super) long: Vec<bool>,
    pub(super) mode_mask: u8,
    pub(super) prev_mask: u8,
}

impl VorbisModes {
    /// The block size of an audio packet (`None` for non-audio packets).
    fn packet_blocksize(&self, first: u8) -> Option<(u32, bool, u8)> {
        if first & 1 != 0 {
            return None;
        }
        let mode = if self.long.len() == 1 { 0 } else { ((first & self.mode_mask) >> 1) as usize };
        let long = *self.long.get(mode)?;
        Some((if long { self.blocksize[1] } else { self.blocksize[0] }, long, first))
    }

    /// Samples of a packet, given the previous packet's block size; updates it.
    pub(super) fn duration(&self, first: Option<u8>, prev: &mut u32) -> i64 {
        let Some((current, long, byte)) = first.and_then(|b| self.packet_blocksize(b)) else {
            return 0;
        };
        let previous = if long {
            if byte & self.prev_mask != 0 {
                self.blocksize[1]
            } else {
                self.blocksize[0]
            }
        } else {
            *prev
        };
        *prev = current;
        ((previous + current) / 4) as i64
    }
}

/// Reads bits most significant first (used on the byte-reversed setup header).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(b as u32)
    }
    fn bits(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }
}

/// Finds the mode list at the end of a Vorbis setup header by reading it backwards, as FFmpeg
/// (`vorbis_parser.c`) and liboggz do: the modes are the last field before the framing bit and
/// each is 41 bits (blockflag, window type 0, transform type 0, mapping), so candidate counts
/// are checked against the 6-bit mode count that precedes them.
pub(super) fn parse_vorbis_modes(
    setup: &[u8],
    blocksize: [u32; 2],
    offset: u64,
) -> Result<VorbisModes, ParseError> {
    if setup.len() < 7 || setup[0] != 5 || &setup[1..7] != b"vorbis" {
        return Err(ParseError::malformed(VORBIS_SETUP, offset, "not a Vorbis setup header"));
    }
    let rev: Vec<u8> = setup.iter().rev().copied().collect();
    let mut gb = BitReader { data: &rev, pos: 0 };
    let mut framing = None;
    while gb.left() > 97 {
        if gb.bit() == Some(1) {
            framing = Some(gb.pos);
            break;
        }
    }
    let framing = framing.ok_or_else(|| ParseError::malformed(VORBIS_SETUP, offset, "no framing bit"))?;
    let mut mode_count = 0usize;
    let mut last_mode_count = None;
    while gb.left() >= 97 {
        let mapping = gb.bits(8).unwrap_or(u32::MAX);
        if mapping > 63 || gb.bits(16) != Some(0) || gb.bits(16) != Some(0) {
            break;
        }
        gb.bit();
        mode_count += 1;
        if mode_count > 64 {
            break;
        }
        let mut gb0 = BitReader { data: gb.data, pos: gb.pos };
        if gb0.bits(6).map(|c| c as usize + 1) == Some(mode_count) {
            last_mode_count = Some(mode_count);
        }
    }
    let count = last_mode_count
        .filter(|&c| c <= 63)
        .ok_or_else(|| ParseError::malformed(VORBIS_SETUP, offset, "no valid mode list"))?;
    let mut gb = BitReader { data: &rev, pos: framing };
    let mut long = vec![false; count];
    for i in (0..count).rev() {
        gb.bits(40);
        long[i] =
            gb.bit().ok_or_else(|| ParseError::malformed(VORBIS_SETUP, offset, "mode list cut short"))? == 1;
    }
    let log2 = usize::BITS - 1 - (count - 1).max(1).leading_zeros();
    let log2 = if count - 1 == 0 { 0 } else { log2 };
    let mode_mask = (((1u32 << (log2 + 1)) - 1) << 1) as u8;
    let prev_mask = (mode_mask | 1).wrapping_add(1);
    Ok(VorbisModes { blocksize, long, mode_mask, prev_mask })
}

/// Samples (at 48 kHz) in an Opus packet, from its TOC byte (RFC 6716 section 3.1).
pub(crate) fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][(config % 4) as usize],
        12..=15 => [480, 960][(config % 2) as usize],
        _ => [120, 240, 480, 960][(config % 4) as usize],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => (*packet.get(1)? & 0x3F) as u32,
    };
    let total = frame * frames;
    (total <= 5760).then_some(total)
}
