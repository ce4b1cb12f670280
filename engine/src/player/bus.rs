//! The pipeline's bus: a track's error stops that track only; the end of every branch is
//! the end of the meeting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{Inner, PlayerEvent};

/// Watches the pipeline's bus: a track's error stops that track only; the end of every
/// branch is the end of the meeting.
pub(super) fn spawn_bus_watch(inner: Weak<Inner>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    let bus = inner.upgrade().and_then(|i| i.pipeline.bus());
    std::thread::Builder::new().name("tandem-bus".into()).spawn(move || {
        let Some(bus) = bus else { return };
        while !stop.load(Ordering::Relaxed) {
            let Some(message) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else { continue };
            let Some(inner) = inner.upgrade() else { return };
            match message.view() {
                gst::MessageView::Error(err) => {
                    let source = message.src().map(|s| s.name().to_string()).unwrap_or_default();
                    let text = format!("{} ({source})", err.error());
                    match inner.track_of(&source) {
                        Some(track) => {
                            tracing::warn!(%track, %text, "track error");
                            inner
                                .events
                                .send(PlayerEvent::TrackError { track: track.clone(), message: text });
                            inner.remove_track(&track);
                        }
                        None => inner
                            .events
                            .send(PlayerEvent::TrackError { track: Arc::from("pipeline"), message: text }),
                    }
                }
                gst::MessageView::Eos(_) => inner.events.send(PlayerEvent::EndOfMeeting),
                _ => {}
            }
        }
    })
}
