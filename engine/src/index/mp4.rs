//! (stub, being written)

use super::{ContainerIndex, Keyframe, ParseError, ReadPos, Reader, SampleBatch, TrackInfo};
use crate::source::RangeSource;
use crate::time::MediaTime;

#[derive(Debug)]
pub(crate) struct Mp4Index {
    info: TrackInfo,
}

impl Mp4Index {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        Err(ParseError::Unsupported {
            element: "mp4",
            offset: 0,
            what: format!("{} bytes: not written yet", reader.len()),
        })
    }
}

impl ContainerIndex for Mp4Index {
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

/// The first box is one an MP4 file starts with.
pub(crate) fn is_mp4(head: &[u8]) -> bool {
    matches!(
        &head[4..8],
        b"ftyp" | b"styp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide" | b"pdin" | b"sidx" | b"moof"
    )
}
