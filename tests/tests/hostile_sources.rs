//! Hostile sources and crafted files: every parser, on every fixture and on files made to cost
//! as much as possible, returns a typed error or a correct index, within a bounded time and a
//! bounded peak of allocated memory.
//!
//! The sources lie the ways an embedder's `RangeSource` (an HTTP source, a peer) can: a length
//! of terabytes, short reads, different bytes on a second read. The crafted files are the ones
//! issue 7 names: a fixed-size `stsz` of `u32::MAX` samples, a `moof` of many tiny `trun`s, an
//! Ogg file of 27-byte pages, and a stretch of fake `OggS` capture patterns.
//!
//! Peak allocation is measured with a counting global allocator (the only `unsafe` in the
//! workspace's tests, confined to this file). Tests in this binary take one lock so that each
//! measures only its own allocations. Figures are printed (`--nocapture`) for the record.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem::index::{Container, IndexError, ParseError, TrackIndex};
use tandem::manifest::Manifest;
use tandem::source::{check_range, RangeSource, SourceError};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// A single allocation above this is refused (the test then aborts with an allocation error)
/// instead of letting a parser that lost its bounds swap the CI machine.
const REFUSE_ABOVE: usize = 2 << 30;

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are atomics and never affect the returned pointers.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time measures.
static MEASURING: Mutex<()> = Mutex::new(());

/// The most any exercise may allocate above what was live when it started.
const PEAK_LIMIT: usize = 64 << 20;
/// The longest any exercise may take (debug build, 2-core CI).
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// What one exercise cost.
#[derive(Debug, Clone, Copy)]
struct Cost {
    peak: usize,
    time: Duration,
}

/// Runs `work` on its own thread, bounded in time; returns its result and what it cost.
/// Panics (failing the test) when it panics or overruns [`TIME_LIMIT`].
fn measured<T: Send + 'static>(label: &str, work: impl FnOnce() -> T + Send + 'static) -> (T, Cost) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    let out = match rx.recv_timeout(TIME_LIMIT) {
        Ok(out) => out,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{label}: did not finish within {TIME_LIMIT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = worker.join();
            panic!("{label}: panicked")
        }
    };
    let _ = worker.join();
    let cost = Cost { peak: PEAK.load(Ordering::Relaxed).saturating_sub(base), time: started.elapsed() };
    assert!(cost.peak <= PEAK_LIMIT, "{label}: peak allocation {} MiB", cost.peak >> 20);
    (out, cost)
}

/// Reads like `data`, but claims to be `claimed` bytes long; past the real bytes it returns
/// what it has (an HTTP server asked for a range past the end does the same).
struct Lying {
    data: Bytes,
    claimed: u64,
}

impl RangeSource for Lying {
    fn len(&self) -> u64 {
        self.claimed
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        check_range(start, len, self.claimed)?;
        let have = self.data.len() as u64;
        let from = start.min(have);
        let to = start.saturating_add(len).min(have);
        Ok(self.data.slice(from as usize..to as usize))
    }
}

/// `data` followed by zeros up to `claimed` bytes: a sparse file (or a source that pads) of
/// terabytes, for crafted files whose boxes are checked against the source's length.
struct Sparse {
    data: Bytes,
    claimed: u64,
}

impl RangeSource for Sparse {
    fn len(&self) -> u64 {
        self.claimed
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        check_range(start, len, self.claimed)?;
        let mut out = vec![
            0u8;
            usize::try_from(len).map_err(|_| SourceError::OutOfRange {
                start,
                len,
                size: self.claimed
            })?
        ];
        let have = self.data.len() as u64;
        if start < have {
            let to = start.saturating_add(len).min(have);
            out[..(to - start) as usize].copy_from_slice(&self.data[start as usize..to as usize]);
        }
        Ok(Bytes::from(out))
    }
}

/// Returns half of every read longer than one byte.
struct Short(Bytes);

impl RangeSource for Short {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        let data = self.0.read_range(start, len)?;
        Ok(data.slice(..data.len() - data.len() / 2))
    }
}

/// Returns different bytes each time: after the first read, every read has one byte flipped
/// somewhere in it.
struct Shifting {
    data: Bytes,
    reads: AtomicU64,
}

impl RangeSource for Shifting {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        let data = self.data.read_range(start, len)?;
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        if n == 0 || data.is_empty() {
            return Ok(data);
        }
        let mut bytes = data.to_vec();
        let at = (n as usize).wrapping_mul(7919) % bytes.len();
        bytes[at] ^= 0xFF;
        Ok(Bytes::from(bytes))
    }
}

/// Uses every entry point of an index opened with `container`'s parser on `src`.
fn exercise(src: &dyn RangeSource, container: Container) -> Result<usize, IndexError> {
    let index = TrackIndex::open_as("hostile", src, container)?;
    let keyframes = index.keyframes(src)?;
    for ms in [0, 2_500, 30_000] {
        let keyframe = index.seek(src, MediaTime::from_millis(ms))?;
        let batch = index.samples(src, keyframe.pos, 32)?;
        for sample in batch.samples.iter().take(4) {
            index.sample_data(src, sample)?;
        }
    }
    Ok(keyframes.len())
}

const PARSERS: [Container; 5] =
    [Container::Mp4, Container::Matroska, Container::Ogg, Container::Mp3, Container::WebVtt];

fn fixture_files() -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    for meeting in ["meeting", "meeting-webrtc"] {
        let folder = fixture_meeting(meeting);
        let manifest = Manifest::load(&folder).unwrap_or_else(|e| panic!("{meeting}: {e}"));
        for track in &manifest.tracks {
            let data = std::fs::read(folder.join(track.file())).expect("read fixture");
            out.push((format!("{meeting}/{}", track.name), Bytes::from(data)));
        }
    }
    out
}

/// The hostile sources over `data`, by name.
fn hostile(data: &Bytes) -> Vec<(&'static str, Box<dyn RangeSource>)> {
    vec![
        ("claims 4 TiB", Box::new(Lying { data: data.clone(), claimed: 4 << 40 })),
        ("short reads", Box::new(Short(data.clone()))),
        ("changing bytes", Box::new(Shifting { data: data.clone(), reads: AtomicU64::new(0) })),
    ]
}

#[test]
fn every_parser_on_every_fixture_through_lying_sources_is_bounded() {
    let _one = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    let mut worst = Cost { peak: 0, time: Duration::ZERO };
    for (label, data) in fixture_files() {
        for container in PARSERS {
            for (how, src) in hostile(&data) {
                let name = format!("{label} as {container:?}, {how}");
                let (result, cost) = measured(&name, move || exercise(&*src, container).map(|_| ()));
                worst.peak = worst.peak.max(cost.peak);
                worst.time = worst.time.max(cost.time);
                if let Err(e) = result {
                    assert_eq!(&*e.track, "hostile", "{name}");
                }
            }
        }
    }
    eprintln!(
        "fixtures through hostile sources: worst peak {} KiB, worst time {:?}",
        worst.peak >> 10,
        worst.time
    );
}

#[test]
fn a_short_read_is_a_typed_error_not_a_panic() {
    let _one = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    for (label, data) in fixture_files() {
        let container = tandem::index::detect(&data[..data.len().min(4096)]).expect("fixture format");
        let (result, _) = measured(&label, move || exercise(&Short(data), container));
        let err = result.expect_err("half of every read cannot make an index");
        assert!(
            matches!(err.source, ParseError::Source(SourceError::ShortRead { .. })),
            "{label}: {}",
            err.source
        );
    }
}

#[test]
fn a_source_that_claims_terabytes_gives_a_typed_error_naming_the_short_read() {
    let _one = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    // Opening an Ogg file reads its end for the duration: past the real bytes here.
    let data =
        Bytes::from(std::fs::read(fixture_meeting("meeting").join("mixed_audio.ogg")).expect("fixture"));
    let (result, _) = measured("Ogg claiming 4 TiB", move || {
        exercise(&Lying { data, claimed: 4 << 40 }, Container::Ogg).map(|_| ())
    });
    let err = result.expect_err("the tail lies past the real bytes");
    assert!(matches!(err.source, ParseError::Source(SourceError::ShortRead { .. })), "{}", err.source);
}

// ---- crafted files -------------------------------------------------------------------------

fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out
}

fn full(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    bx(kind, &[&[0u8, 0, 0, 0][..], body].concat())
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// A one-track movie whose stsz says every one of `count` samples is `fixed` bytes, with stts
/// and stsc agreeing, and one chunk.
fn fixed_stsz_movie(count: u32, fixed: u32, extra_mvex: bool) -> Vec<u8> {
    let mdhd = full(b"mdhd", &u32s(&[0, 0, 1000, 1000, 0]));
    let stsd = full(b"stsd", &u32s(&[0]));
    let stts = full(b"stts", &u32s(&[1, count, 1]));
    let stsz = full(b"stsz", &u32s(&[fixed, count]));
    let stsc = full(b"stsc", &u32s(&[1, 1, count, 1]));
    let stco = full(b"stco", &u32s(&[1, 64]));
    let stbl = bx(b"stbl", &[stsd, stts, stsz, stsc, stco].concat());
    let mdia = bx(b"mdia", &[mdhd, bx(b"minf", &stbl)].concat());
    let trak = bx(b"trak", &[full(b"tkhd", &u32s(&[0, 0, 1, 0, 0])), mdia].concat());
    let mvhd = full(b"mvhd", &u32s(&[0, 0, 1000, 1000]));
    let mut moov = vec![mvhd, trak];
    if extra_mvex {
        moov.push(bx(b"mvex", &full(b"trex", &u32s(&[1, 1, 1000, 100, 0]))));
    }
    [bx(b"ftyp", b"isom\0\0\0\0"), bx(b"moov", &moov.concat())].concat()
}

fn report(label: &str, cost: Cost, result: &Result<usize, IndexError>) {
    let outcome = match result {
        Ok(n) => format!("index with {n} keyframes"),
        Err(e) => format!("error: {}", e.source),
    };
    eprintln!("{label}: peak {} KiB, {:?}, {outcome}", cost.peak >> 10, cost.time);
}

#[test]
fn a_fixed_size_stsz_of_u32_max_samples_is_refused_before_allocating() {
    let _one = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    let file = Bytes::from(fixed_stsz_movie(u32::MAX, 1, false));
    assert!(file.len() < 400, "the whole file is {} bytes", file.len());
    let label = "fixed-size stsz, u32::MAX samples, sparse source of 4 TiB";
    let (result, cost) =
        measured(label, move || exercise(&Sparse { data: file, claimed: 4 << 40 }, Container::Mp4));
    report(label, cost, &result);
    let err = result.expect_err("no such track");
    assert!(
        matches!(&err.source, ParseError::Malformed { element: "stsz", reason, .. } if reason.contains("exceed the limit")),
        "{}",
        err.source
    );
    assert!(cost.peak < 1 << 20, "peak {} KiB", cost.peak >> 10);
}

#[test]
fn a_moof_of_tiny_truns_is_capped_by_its_size() {
    let _one = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    // Fragmented: an empty moov table, then one moof whose traf holds 4096 runs of a million
    // default-sized samples each (20 bytes a run), and a small mdat.
    let mut file = fixed_stsz_movie(0, 0, true);
    let tfhd = bx(b"tfhd", &[&[0u8, 2, 0, 0][..], &u32s(&[1])].concat());
    let runs: Vec<u8> = (0..4096).flat_map(|_| full(b"trun", &u32s(&[1_000_000]))).collect();
    let traf = bx(b"traf", &[tfhd, runs].concat());
    file.extend(bx(b"moof", &[full(b"mfhd", &u32s(&[1])), traf].concat()));
    file.extend(bx(b"mdat", &[0u8; 256]));
    let file = Bytes::from(file);
    let label = "moof of 4096 runs of 10^6 samples, sparse source of 4 TiB";
    let (result, cost) =
        measured(label, move || exercise(&Sparse { data: file, claimed: 4 << 40 }, Container::Mp4));
    report(label, cost, &result);
    let err = result.expect_err("no such fragment");
    assert!(
        matches!(&err.source, ParseError::Malformed { element: "trun", reason, .. } if reason.contains("may hold")),
        "{}",
        err.source
    );
}

/// CRC-32 as Ogg computes it (polynomial 0x04c11db7, MSB first, zero init), bit by bit: an
/// implementation independent of the engine's table.
fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
        }
    }
    crc
}

fn ogg_page(header_type: u8, granule: i64, serial: u32, seq: u32, lacing: &[u8], body: &[u8]) -> Vec<u8> {
    let mut p = b"OggS\0".to_vec();
    p.push(header_type);
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(lacing.len() as u8);
    p.extend_from_slice(lacing);
    p.extend_from_slice(body);
    let crc = ogg_crc(&p);
    p[22..26].copy_from_slice(&crc.to_le_bytes());
    p
}

/// OpusHead and OpusTags pages of stream 1.
fn opus_headers() -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1, 2, 0x38, 0x01, 0x80, 0xBB, 0, 0, 0, 0, 0]);
    let tags = b"OpusTags\0\0\0\0\0\0\0\0".to_vec();
    [ogg_page(2, 0, 1, 0, &[head.len() as u8], &head), ogg_page(0, 0, 1, 1, &[tags.len() as u8], &tags)]
        .concat()
}

/// Opus audio pages of stream 1: 50 packets of 20 ms per page.
fn opus_audio(pages: u32, first_seq: u32, first_granule: i64) -> Vec<u8> {
    let packet = [0x78u8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut out = Vec::new();
    for p in 0..pages {
        let body: Vec<u8> = (0..50).flat_map(|_| packet).collect();
        let granule = first_granule + i64::from(p + 1) * 50 * 960;
        out.extend(ogg_page(0, granule, 1, first_seq + p, &[10; 50], &body));
    }
    out
}

#[test]
fn an_ogg_of_27_byte_pages_opens_in_linear_time() {
    let _one = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    // Stream 1's OpusHead, then 4 MiB of empty 27-byte pages of another stream before its
    // OpusTags would come: opening walks them all looking for it.
    let mut file = ogg_page(2, 0, 1, 0, &[19], b"OpusHead\x01\x02\x38\x01\x80\xBB\0\0\0\0\0");
    let empty = ogg_page(0, 0, 7, 0, &[], &[]);
    assert_eq!(empty.len(), 27);
    while file.len() < 4 << 20 {
        file.extend_from_slice(&empty);
    }
    let file = Bytes::from(file);
    let label = "Ogg of 27-byte pages (4 MiB)";
    let (result, cost) = measured(label, move || exercise(&file, Container::Ogg));
    report(label, cost, &result);
    assert!(result.is_err(), "no second header: no index");
    assert!(cost.time < Duration::from_secs(10), "{:?}", cost.time);
}

/// `n` fake pages, one every 27 bytes: each a header that claims 255 segments whose lacing
/// values are the next fake headers' bytes (mostly 0xFF), so each claims about 50 KiB and a
/// CRC check of it fails.
fn fake_capture_patterns(bytes: usize) -> Vec<u8> {
    let mut unit = b"OggS\0".to_vec();
    unit.push(0);
    unit.extend_from_slice(&[0xFF; 20]); // granule, serial, sequence, CRC
    unit.push(0xFF); // 255 segments
    assert_eq!(unit.len(), 27);
    unit.iter().copied().cycle().take(bytes).collect()
}

#[test]
fn a_window_of_fake_capture_patterns_costs_linear_crc_work() {
    let _one = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    // A real Opus stream with 2 MiB of fake capture patterns in the middle.
    let mut file = opus_headers();
    file.extend(opus_audio(20, 2, 0));
    file.extend(fake_capture_patterns(2 << 20));
    file.extend(opus_audio(20, 22, 20 * 50 * 960));
    let file = Bytes::from(file);
    let label = "Opus with 2 MiB of fake OggS patterns";
    let (result, cost) = measured(label, {
        let file = file.clone();
        move || {
            let index = TrackIndex::open("hostile", &file)?;
            let mut seeks = Vec::new();
            for s in [5, 15, 25, 35] {
                seeks.push(index.seek(&file, MediaTime::from_secs(s)).map(|k| k.pts));
            }
            Ok::<_, IndexError>((index.info().duration, seeks, index.keyframes(&file).map(|k| k.len())))
        }
    });
    eprintln!("{label}: peak {} KiB, {:?}, {result:?}", cost.peak >> 10, cost.time);
    let (duration, seeks, keyframes) = result.expect("headers and tail are intact");
    // Pages hold one second each; times are shifted by the 312-sample pre-skip (6.5 ms).
    let page_time = |s: i64| MediaTime::from_nanos(s * 1_000_000_000 - 6_500_000);
    assert_eq!(duration, Some(page_time(40)));
    // Before the fake stretch a seek lands on its page; after it, on its page or (the search
    // having given up in the fakes) a typed error.
    assert_eq!(seeks[0], Ok(page_time(5)), "{seeks:?}");
    assert_eq!(seeks[1], Ok(page_time(15)), "{seeks:?}");
    for (seek, s) in seeks[2..].iter().zip([25, 35]) {
        match seek {
            Ok(t) => assert_eq!(*t, page_time(s)),
            Err(e) => assert!(matches!(e.source, ParseError::Malformed { .. }), "{e}"),
        }
    }
    match keyframes {
        Ok(n) => assert_eq!(n, 40),
        Err(e) => assert!(matches!(e.source, ParseError::Malformed { .. }), "{e}"),
    }
    assert!(cost.time < Duration::from_secs(10), "{:?}", cost.time);
}
