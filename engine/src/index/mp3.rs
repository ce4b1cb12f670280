//! (stub, being written)

use super::{ContainerIndex, Keyframe, ParseError, ReadPos, Reader, SampleBatch, TrackInfo};
use crate::source::RangeSource;
use crate::time::MediaTime;

#[derive(Debug)]
pub(crate) struct Mp3Index {
    info: TrackInfo,
}

impl Mp3Index {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        Err(ParseError::Unsupported {
            element: "mp3",
            offset: 0,
            what: format!("{} bytes: not written yet", reader.len()),
        })
    }
}

impl ContainerIndex for Mp3Index {
    fn info(&self) -> &TrackInfo {
        &self.info
    }
    fn keyframes(&self, _src: &dyn RangeSource) -> Result<Vec<Keyframe>, ParseError> {
        Err(ParseError::NoSamples)
    }
    fn seek(&self, _src: &dyn RangeSource, _t: MediaTime) -> Result<Keyframe, ParseError> {
        Err(ParseError::NoSamples)
    }
    fn samples(
        &self,
        _src: &dyn RangeSource,
        _from: ReadPos,
        _max: usize,
    ) -> Result<SampleBatch, ParseError> {
        Err(ParseError::NoSamples)
    }
}

/// An ID3v2 tag or an MPEG audio layer III frame header at the start.
pub(crate) fn is_mp3(head: &[u8]) -> bool {
    head.starts_with(b"ID3") || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE6 == 0xE2)
}
