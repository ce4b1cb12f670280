//! GStreamer elements by factory name, with an error that says which Debian package installs
//! a missing one.

use gstreamer as gst;

use super::PlayerError;

/// The Debian 12 package that ships `factory` (the ones tandem uses).
pub(crate) fn package_of(factory: &str) -> &'static str {
    match factory {
        "avdec_h264" | "avdec_h265" | "avdec_vp8" | "avdec_vp9" | "avdec_av1" | "avenc_aac" => {
            "gstreamer1.0-libav"
        }
        "x264enc" => "gstreamer1.0-plugins-ugly",
        "vp8dec" | "vp9dec" | "pulsesink" | "mp4mux" | "qtmux" | "matroskademux" | "qtdemux"
        | "scaletempo" => "gstreamer1.0-plugins-good",
        "voaacenc" | "dav1ddec" | "av1dec" | "pipewiresink" => "gstreamer1.0-plugins-bad",
        "textoverlay" | "ximagesink" | "xvimagesink" => "gstreamer1.0-x",
        "autovideosink" | "autoaudiosink" => "gstreamer1.0-plugins-good",
        _ => "gstreamer1.0-plugins-base",
    }
}

fn missing(factory: &str) -> PlayerError {
    PlayerError::MissingElement { factory: factory.to_string(), package: package_of(factory) }
}

/// An element of `factory`, named `name` (GStreamer picks a name when it is empty).
pub(crate) fn make(factory: &str, name: String) -> Result<gst::Element, PlayerError> {
    let builder = gst::ElementFactory::make(factory);
    let builder = if name.is_empty() { builder } else { builder.name(name) };
    builder.build().map_err(|_| missing(factory))
}

/// The first of `factories` that is installed.
pub(crate) fn make_any(factories: &[&str], name: String) -> Result<gst::Element, PlayerError> {
    for factory in factories {
        if gst::ElementFactory::find(factory).is_some() {
            return make(factory, name);
        }
    }
    Err(missing(factories.first().copied().unwrap_or("?")))
}
