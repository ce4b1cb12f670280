#![no_main]
//! Fuzzes the mkv index: any bytes must give an index or a typed error, never a panic or hang.

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::exercise(tandem::index::Container::Matroska, data);
});
