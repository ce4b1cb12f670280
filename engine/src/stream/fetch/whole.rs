//! Tracks read whole rather than walked: a caption track's cues, and the bytes of a track
//! without an index, in chunks.

use super::{Fetcher, Flow, Run};
use crate::stream::item::{Cue, Item};
use crate::stream::timeline::Span;

/// Bytes per chunk of a track without an index.
const CHUNK: u64 = 256 * 1024;

impl Fetcher {
    /// Every cue of a caption track that ends after the target, in order, then the end.
    pub(super) fn cues(&mut self, run: &mut Run) -> Result<(), Flow> {
        let failed = |e: crate::index::IndexError| Flow::Failed(e.to_string());
        let mut cues = Vec::new();
        for (number, file) in self.files.iter().enumerate() {
            let Some(index) = file.index.as_deref() else { continue };
            let src = file.source.as_ref();
            let spans: Vec<&Span> =
                self.desc.timeline.spans().iter().filter(|s| s.file as usize == number).collect();
            let mut pos =
                Some(index.keyframes(src).map_err(failed)?.first().map(|k| k.pos).unwrap_or_default());
            while let Some(at) = pos {
                let batch = index.samples(src, at, 1024).map_err(failed)?;
                if batch.samples.is_empty() {
                    break;
                }
                for sample in &batch.samples {
                    let data = index.sample_data(src, sample).map_err(failed)?;
                    let text = crate::index::subtitles::cue_body(&String::from_utf8_lossy(&data));
                    for span in &spans {
                        let start = span.to_meeting(sample.pts).max(span.start);
                        let end = span.to_meeting(sample.pts.saturating_add(sample.duration));
                        let end = span.end.map_or(end, |e| end.min(e));
                        if start < end && end > run.target {
                            cues.push(Cue { start, end, text: text.clone() });
                        }
                    }
                }
                pos = batch.next;
            }
        }
        cues.sort_by_key(|c| c.start);
        for cue in cues {
            self.send(run, Item::Cue(cue))?;
        }
        self.finish(run)
    }

    /// A track without an index: its bytes in order from the start, as the consumer takes
    /// them (the channel bounds how far ahead).
    pub(super) fn chunks(&mut self, run: &mut Run) -> Result<(), Flow> {
        let len = self.data_source.len();
        let mut offset = 0;
        while offset < len {
            self.poll_commands()?;
            let size = CHUNK.min(len - offset);
            let data = self.read(offset, size, 0)?;
            self.send(run, Item::Chunk { offset, data })?;
            offset += size;
        }
        self.finish(run)
    }
}
