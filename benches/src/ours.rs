//! Tandem's player, logging what its callbacks hand over in the same shape as the baseline's
//! sinks ([`Rendered`]), so one piece of code measures both.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tandem::player::{AudioChunk, Output, VideoFrame};
use tandem::MediaTime;
use tandem_fixtures::{audio, stamp};

use crate::gst_play::Rendered;

/// Callbacks that append to `log`; audio samples are kept when `audio_samples`.
pub fn output(log: Arc<Mutex<Vec<Rendered>>>, audio_samples: bool) -> Output {
    let video_log = log.clone();
    Output::Callbacks {
        video: Some(Arc::new(move |f: &VideoFrame| {
            let at = Instant::now();
            let stamp = stamp::read_stamp(f.luma(), f.stride, f.width as usize, f.height as usize);
            let r = Rendered {
                track: f.track.clone(),
                video: true,
                gen: f.seek,
                preroll: f.preroll,
                stamp,
                pts: Some(f.pts),
                end: Some(f.pts.saturating_add(f.duration)),
                position: f.clock,
                at,
                mono: Vec::new(),
                rate: 0,
            };
            video_log.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        })),
        audio: Some(Arc::new(move |a: &AudioChunk| {
            let at = Instant::now();
            let frames = a.samples.len() / 4 / (a.channels.max(1) as usize);
            let len = MediaTime::from_ticks(frames as i64, u64::from(a.rate.max(1))).unwrap_or_default();
            let mono = if audio_samples { audio::mono(&a.to_f32(), a.channels as usize) } else { Vec::new() };
            let r = Rendered {
                track: a.track.clone(),
                video: false,
                gen: a.seek,
                preroll: false,
                stamp: None,
                pts: Some(a.pts),
                end: Some(a.pts.saturating_add(len)),
                position: a.clock,
                at,
                mono,
                rate: a.rate,
            };
            log.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        })),
    }
}

/// Entries of `log` from `mark` on.
pub fn since(log: &Mutex<Vec<Rendered>>, mark: usize) -> Vec<Rendered> {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    log[mark.min(log.len())..].to_vec()
}

pub fn mark(log: &Mutex<Vec<Rendered>>) -> usize {
    log.lock().map(|l| l.len()).unwrap_or(0)
}
