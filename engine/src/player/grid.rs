//! The grid the window shows and export writes: where each video track's tile goes, and the
//! dark tile with the participant's name that shows while the track has nothing to show.
//!
//! ```text
//! videotestsrc (dark) ! textoverlay (name) ─> compositor pad, zorder 0 ─┐
//! track frames ! videoconvert              ─> compositor pad, zorder 1 ─┴─ compositor (1280x720)
//! ```
//!
//! The compositor scales each input into its tile keeping the aspect ratio, so one layout
//! serves any mix of track sizes, and re-laying the grid is setting pad properties.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;

use super::elements::make;
use super::PlayerError;

/// Size of the composed grid.
pub(crate) const GRID_SIZE: (i32, i32) = (1280, 720);

/// The dark tile's colour (ARGB).
const DARK: u32 = 0xff26_2a30;

/// Position and size of each of `count` tiles: as close to square as the count allows, in
/// reading order.
pub(crate) fn layout(count: usize) -> Vec<(i32, i32, i32, i32)> {
    let count = count.max(1);
    let cols = (count as f64).sqrt().ceil() as usize;
    let rows = count.div_ceil(cols);
    let (w, h) = (GRID_SIZE.0 / cols as i32, GRID_SIZE.1 / rows as i32);
    (0..count).map(|i| (w * (i % cols) as i32, h * (i / cols) as i32, w, h)).collect()
}

/// A compositor for the grid, with a black background.
pub(crate) fn compositor() -> Result<gst::Element, PlayerError> {
    let compositor = make("compositor", String::new())?;
    compositor.set_property_from_str("background", "black");
    Ok(compositor)
}

/// The output caps of a grid at `fps` frames per second.
pub(crate) fn caps(fps: i32) -> gst::Caps {
    gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::I420)
        .width(GRID_SIZE.0)
        .height(GRID_SIZE.1)
        .pixel_aspect_ratio(gst::Fraction::new(1, 1))
        .framerate(gst::Fraction::new(fps, 1))
        .build()
}

/// One tile: the track's pad over its name pad.
#[derive(Debug)]
pub(crate) struct TilePads {
    pub(crate) track: gst::Pad,
    pub(crate) name: gst::Pad,
}

impl TilePads {
    /// Puts the tile at `(x, y, w, h)`, or hides both layers with `None`.
    pub(crate) fn place(&self, at: Option<(i32, i32, i32, i32)>) {
        for pad in [&self.name, &self.track] {
            if let Some((x, y, w, h)) = at {
                pad.set_property("xpos", x);
                pad.set_property("ypos", y);
                pad.set_property("width", w);
                pad.set_property("height", h);
            }
        }
        self.name.set_property("alpha", if at.is_some() { 1.0f64 } else { 0.0 });
        if at.is_none() {
            self.track.set_property("alpha", 0.0f64);
        }
    }
}

/// Adds a tile to `pipeline`: `source` (frames of the track, raw video) over a dark tile
/// with `label`. `live` for the window; otherwise the name layer makes `frames` frames at
/// `fps` and ends.
pub(crate) fn add_tile(
    pipeline: &gst::Pipeline,
    compositor: &gst::Element,
    source: &gst::Element,
    label: &str,
    live: bool,
    fps: i32,
    frames: Option<u64>,
) -> Result<TilePads, PlayerError> {
    let err = |e: &dyn std::fmt::Display| PlayerError::Gst(format!("the grid: {e}"));
    let dark = make("videotestsrc", String::new())?;
    dark.set_property_from_str("pattern", "solid-color");
    dark.set_property("foreground-color", DARK);
    dark.set_property("is-live", live);
    if let Some(frames) = frames {
        dark.set_property("num-buffers", i32::try_from(frames).unwrap_or(i32::MAX));
    }
    let dark_caps = make("capsfilter", String::new())?;
    dark_caps.set_property(
        "caps",
        gst_video::VideoCapsBuilder::new()
            .width(640)
            .height(360)
            .pixel_aspect_ratio(gst::Fraction::new(1, 1))
            .framerate(gst::Fraction::new(fps, 1))
            .build(),
    );
    let text = make("textoverlay", String::new())?;
    text.set_property("text", label);
    text.set_property("font-desc", "Sans 40");
    text.set_property_from_str("valignment", "center");
    text.set_property_from_str("halignment", "center");
    text.set_property("shaded-background", false);
    let text_convert = make("videoconvert", String::new())?;
    let convert = make("videoconvert", String::new())?;
    let name_chain = [&dark, &dark_caps, &text, &text_convert];
    pipeline.add_many(name_chain).map_err(|e| err(&e))?;
    gst::Element::link_many(name_chain).map_err(|e| err(&e))?;
    pipeline.add_many([source, &convert]).map_err(|e| err(&e))?;
    source.link(&convert).map_err(|e| err(&e))?;
    let pad = |from: &gst::Element, zorder: u32| -> Result<gst::Pad, PlayerError> {
        let pad = compositor.request_pad_simple("sink_%u").ok_or_else(|| err(&"no compositor pad"))?;
        pad.set_property("zorder", zorder);
        pad.set_property_from_str("sizing-policy", "keep-aspect-ratio");
        from.static_pad("src").ok_or_else(|| err(&"no source pad"))?.link(&pad).map_err(|e| err(&e))?;
        Ok(pad)
    };
    let name = pad(&text_convert, 0)?;
    let track = pad(&convert, 1)?;
    Ok(TilePads { track, name })
}
