#![no_main]
//! Fuzzes the mp4 index: any bytes must give an index or a typed error, never a panic or hang.

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::exercise(tandem::index::Container::Mp4, data);
});
