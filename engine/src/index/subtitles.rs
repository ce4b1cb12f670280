//! (stub, being written)

use super::{ContainerIndex, Keyframe, ParseError, ReadPos, Reader, SampleBatch, TrackInfo};
use crate::source::RangeSource;
use crate::time::MediaTime;

#[derive(Debug)]
pub(crate) struct SubtitleIndex {
    info: TrackInfo,
}

impl SubtitleIndex {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        Err(ParseError::Unsupported {
            element: "subtitles",
            offset: 0,
            what: format!("{} bytes: not written yet", reader.len()),
        })
    }
}

impl ContainerIndex for SubtitleIndex {
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

pub(crate) fn is_webvtt(head: &[u8]) -> bool {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    head.starts_with(b"WEBVTT") && matches!(head.get(6), None | Some(b' ' | b'\t' | b'\n' | b'\r'))
}

pub(crate) fn is_srt(head: &[u8]) -> bool {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let text = String::from_utf8_lossy(&head[..head.len().min(256)]);
    let mut lines = text.lines().map(str::trim).skip_while(|l| l.is_empty());
    let counter = lines.next().unwrap_or("");
    let timing = lines.next().unwrap_or("");
    !counter.is_empty() && counter.chars().all(|c| c.is_ascii_digit()) && timing.contains("-->")
}
