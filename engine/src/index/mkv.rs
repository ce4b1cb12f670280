//! (stub, being written)

use super::{ContainerIndex, Keyframe, ParseError, ReadPos, Reader, SampleBatch, TrackInfo};
use crate::source::RangeSource;
use crate::time::MediaTime;

#[derive(Debug)]
pub(crate) struct MkvIndex {
    info: TrackInfo,
}

impl MkvIndex {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        Err(ParseError::Unsupported {
            element: "mkv",
            offset: 0,
            what: format!("{} bytes: not written yet", reader.len()),
        })
    }
}

impl ContainerIndex for MkvIndex {
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

/// Matroska or WebM, from the EBML header's DocType (called only after the EBML magic matched).
pub(crate) fn doc_type(head: &[u8]) -> super::Container {
    if head.windows(4).take(64).any(|w| w == b"webm") {
        super::Container::WebM
    } else {
        super::Container::Matroska
    }
}
