//! Shared body of every index fuzz target: open with one parser, then use every entry point.

use bytes::Bytes;
use tandem::index::{Container, TrackIndex};
use tandem::MediaTime;

pub fn exercise(container: Container, data: &[u8]) {
    let src = Bytes::copy_from_slice(data);
    let Ok(index) = TrackIndex::open_as("fuzz", &src, container) else { return };
    let _ = index.keyframes(&src);
    for ms in [0, 1_000, 60_000] {
        if let Ok(keyframe) = index.seek(&src, MediaTime::from_millis(ms)) {
            if let Ok(batch) = index.samples(&src, keyframe.pos, 64) {
                for sample in batch.samples.iter().take(8) {
                    let _ = index.sample_data(&src, sample);
                }
            }
        }
    }
}
