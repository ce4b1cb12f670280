//! (stub, being written)

use super::{ContainerIndex, Keyframe, ParseError, ReadPos, Reader, SampleBatch, TrackInfo};
use crate::source::RangeSource;
use crate::time::MediaTime;

#[derive(Debug)]
pub(crate) struct OggIndex {
    info: TrackInfo,
}

impl OggIndex {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        Err(ParseError::Unsupported {
            element: "ogg",
            offset: 0,
            what: format!("{} bytes: not written yet", reader.len()),
        })
    }
}

impl ContainerIndex for OggIndex {
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
