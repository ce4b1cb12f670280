//! Fuzzes the mp4 index: any bytes, read through a source that may lie about its length,
//! return short reads or change its bytes, must give an index or a typed error, never a panic
//! or a hang. Without the `libfuzzer` feature this is a replay driver over files.

#![cfg_attr(feature = "libfuzzer", no_main)]

mod common;

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::exercise(tandem::index::Container::Mp4, data);
});

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    common::replay(tandem::index::Container::Mp4);
}
