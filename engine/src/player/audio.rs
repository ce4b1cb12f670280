//! Audio decoded in the engine with symphonia: Vorbis, MP3, AAC and FLAC packets become
//! interleaved `f32` PCM with exact meeting times, so audio seeks are sample-accurate without
//! relying on a GStreamer decoder's idea of timestamps. Opus is left to GStreamer's `opusdec`
//! (see [`decodes_in_engine`]).

use bytes::Bytes;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{
    CodecParameters, Decoder, DecoderOptions, CODEC_TYPE_AAC, CODEC_TYPE_FLAC, CODEC_TYPE_MP3,
    CODEC_TYPE_VORBIS,
};
use symphonia::core::formats::Packet;

use crate::index::{Codec, TrackInfo};

/// Whether the engine decodes this codec itself (the rest go to GStreamer).
pub(crate) fn decodes_in_engine(codec: &Codec) -> bool {
    matches!(codec, Codec::Vorbis | Codec::Mp3 | Codec::Aac | Codec::Flac)
}

/// Samples an MP3 decoder outputs before the first encoded sample (the MDCT/filterbank delay
/// every layer III decoder has, on top of the encoder's own delay from the LAME tag).
const MP3_DECODER_DELAY: u64 = 529;

/// A symphonia decoder for one track.
pub(crate) struct AudioDecoder {
    decoder: Box<dyn Decoder>,
    /// Samples at the start of the decoded output that precede media time zero.
    priming: u64,
    buffer: Option<SampleBuffer<f32>>,
    pub(crate) rate: u32,
    pub(crate) channels: u32,
}

impl std::fmt::Debug for AudioDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioDecoder")
            .field("rate", &self.rate)
            .field("channels", &self.channels)
            .field("priming", &self.priming)
            .finish()
    }
}

/// Decoded PCM of one packet.
#[derive(Debug)]
pub(crate) struct Pcm {
    /// Interleaved f32 little-endian samples.
    pub(crate) data: Vec<f32>,
    pub(crate) frames: u64,
}

impl AudioDecoder {
    /// A decoder for `info`, with `encoder_delay` samples (LAME tag) to trim for MP3.
    pub(crate) fn new(info: &TrackInfo, encoder_delay: Option<u64>) -> Result<AudioDecoder, String> {
        let audio = info.audio.ok_or("no sample rate or channel count in the index")?;
        let mut params = CodecParameters::new();
        params.with_sample_rate(audio.sample_rate);
        let mut priming = 0;
        match info.codec {
            Codec::Vorbis => {
                let config = info.codec_config.as_ref().ok_or("Vorbis without its headers")?;
                let headers = split_xiph_laced(config).ok_or("Vorbis headers are not Xiph-laced")?;
                if headers.len() != 3 {
                    return Err(format!("Vorbis needs 3 headers, found {}", headers.len()));
                }
                // symphonia wants the identification header followed by the setup header.
                let mut extra = headers[0].to_vec();
                extra.extend_from_slice(headers[2]);
                params.for_codec(CODEC_TYPE_VORBIS).with_extra_data(extra.into_boxed_slice());
            }
            Codec::Mp3 => {
                params.for_codec(CODEC_TYPE_MP3);
                priming = encoder_delay.unwrap_or(0) + MP3_DECODER_DELAY;
            }
            Codec::Aac => {
                params.for_codec(CODEC_TYPE_AAC);
                if let Some(config) = &info.codec_config {
                    params.with_extra_data(config.to_vec().into_boxed_slice());
                }
            }
            Codec::Flac => {
                let config = info.codec_config.as_ref().ok_or("FLAC without STREAMINFO")?;
                params.for_codec(CODEC_TYPE_FLAC).with_extra_data(flac_streaminfo(config)?.into());
            }
            ref other => return Err(format!("{other:?} is not decoded in the engine")),
        }
        let decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| format!("opening the {:?} decoder: {e}", info.codec))?;
        Ok(AudioDecoder { decoder, priming, buffer: None, rate: audio.sample_rate, channels: audio.channels })
    }

    /// Samples of decoder and encoder delay at the start of the output.
    pub(crate) fn priming(&self) -> u64 {
        self.priming
    }

    /// Forgets decoder state (after a seek).
    pub(crate) fn reset(&mut self) {
        self.decoder.reset();
    }

    /// Decodes one packet. A damaged packet yields an error; the caller skips it.
    pub(crate) fn decode(&mut self, data: &Bytes) -> Result<Pcm, String> {
        let packet = Packet::new_from_slice(0, 0, 0, data);
        let decoded = self.decoder.decode(&packet).map_err(|e| e.to_string())?;
        let spec = *decoded.spec();
        let frames = decoded.frames() as u64;
        let channels = spec.channels.count() as u32;
        if channels != self.channels || spec.rate != self.rate {
            return Err(format!(
                "decoded {} Hz x {channels} but the index said {} Hz x {}",
                spec.rate, self.rate, self.channels
            ));
        }
        let needed = decoded.capacity() as u64;
        let buffer = match &mut self.buffer {
            Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
            slot => slot.insert(SampleBuffer::new(needed, spec)),
        };
        buffer.copy_interleaved_ref(decoded);
        Ok(Pcm { data: buffer.samples().to_vec(), frames })
    }
}

/// Splits Xiph lacing: a count byte, then the sizes of all but the last packet in 255-runs.
pub(crate) fn split_xiph_laced(data: &[u8]) -> Option<Vec<&[u8]>> {
    let (&count, mut rest) = data.split_first()?;
    let mut sizes = Vec::with_capacity(count as usize + 1);
    for _ in 0..count {
        let mut size = 0usize;
        loop {
            let (&b, tail) = rest.split_first()?;
            rest = tail;
            size = size.checked_add(b as usize)?;
            if b != 255 {
                break;
            }
        }
        sizes.push(size);
    }
    let mut out = Vec::with_capacity(sizes.len() + 1);
    for size in sizes {
        if size > rest.len() {
            return None;
        }
        let (packet, tail) = rest.split_at(size);
        out.push(packet);
        rest = tail;
    }
    out.push(rest);
    Some(out)
}

/// The 34-byte STREAMINFO block from a FLAC codec configuration in any of its wrappings:
/// `fLaC` + metadata blocks (Matroska), a metadata block header + STREAMINFO (MP4 `dfLa`), or
/// STREAMINFO alone.
fn flac_streaminfo(config: &[u8]) -> Result<Vec<u8>, String> {
    let body = config.strip_prefix(b"fLaC").unwrap_or(config);
    let block = match body.len() {
        34 => body,
        n if n >= 38 && body[0] & 0x7F == 0 => &body[4..38],
        _ => return Err(format!("FLAC configuration of {} bytes has no STREAMINFO", config.len())),
    };
    Ok(block.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_xiph_lacing_with_long_runs() {
        let mut data = vec![2u8, 255, 45, 3];
        data.extend(std::iter::repeat_n(1u8, 300));
        data.extend([2, 2, 2]);
        data.extend([3, 3, 3, 3]);
        let parts = split_xiph_laced(&data).expect("laced");
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![300, 3, 4]);
        assert!(split_xiph_laced(&[2, 10, 1, 0]).is_none());
    }
}
