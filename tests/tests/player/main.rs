//! The player, judged from decoded output alone (GStreamer's decode of the same files as the
//! oracle): seeks, sync, tracks joining and leaving, damaged tracks, slow links.

mod common;
mod failures;
#[path = "../net_common/mod.rs"]
mod net_common;
mod seeks;
mod slow_links;
mod sync;
mod tracks;
