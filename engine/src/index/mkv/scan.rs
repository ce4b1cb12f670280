//! Finding clusters without Cues: recognising a Cluster at an arbitrary byte offset, the last
//! cluster in the file's tail (for the duration), and seeking by bisection over byte offsets.
//!
//! Live writers (WebRTC recorders, MediaRecorder, GStreamer `webmmux streamable=true`) write
//! neither Cues nor Duration, and a recording can be hours long. Walking clusters from the
//! start costs reads in proportion to the file; here a seek costs O(log(file size)) window
//! reads to find the latest cluster at or before `t`, plus a walk over the group of pictures
//! that ends there, stepping back exponentially when keyframes are sparse (WebRTC sends one
//! only on request, often 10-60 s apart).
//!
//! Bisection assumes cluster timestamps grow with the offset. Every probe halves the interval
//! and the step-back doubles its distance, so both end on any input; when the file breaks the
//! assumption (a timestamp going backwards) or a probe finds no cluster within `SCAN_LIMIT`
//! bytes, the caller falls back to the forward walk, whose answer bisection must equal.

use bytes::Bytes;

use super::ebml::{self, id};
use super::{Flow, MkvIndex, Walker};
use crate::index::{Keyframe, ParseError, ReadPos};
use crate::source::RangeSource;
use crate::time::MediaTime;

/// Bytes read at a bisection point, and first read of a scan for the next cluster.
pub(super) const PROBE_WINDOW: u64 = 64 * 1024;
/// Bisection stops once the interval is this small, and walks forward from its start.
const FINAL_SPAN: u64 = 2 * PROBE_WINDOW;
/// How far one scan looks for a Cluster before the bisection gives up (doubling reads).
const SCAN_LIMIT: u64 = 4 * 1024 * 1024;
/// Bytes after a Cluster ID that validating it may need: Cluster header, CRC-32, Timestamp and
/// the next child's header.
const VALIDATE_LEN: u64 = 64;
/// Tail reads at open for the duration: one window, then once up to 256 KiB from the end when
/// the last cluster starts before that window (GStreamer starts a cluster at each keyframe,
/// so its clusters are whole groups of pictures). Beyond that the duration stays unknown:
/// opening should not cost more than a fraction of a second on a slow link.
const TAIL_READS: [u64; 2] = [PROBE_WINDOW, 256 * 1024];
/// Bisection and step-back steps; each halves or doubles a distance within a u64, so this is
/// never reached on a file that makes sense.
const MAX_STEPS: usize = 128;

const CLUSTER_MAGIC: [u8; 4] = [0x1F, 0x43, 0xB6, 0x75];
/// Cluster children that may follow the Timestamp (or precede it: CRC-32).
const POSITION: u32 = 0xA7;
const PREV_SIZE: u32 = 0xAB;
const SILENT_TRACKS: u32 = 0x5854;

/// A Cluster recognised in bytes read from the middle of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClusterStart {
    pub(super) header: ebml::Header,
    /// The cluster Timestamp, in ticks.
    pub(super) ticks: u64,
    /// Offset in `buf` just after the Timestamp element.
    after_timestamp: usize,
}

/// If `buf` (lying at absolute `offset`) starts with a plausible Cluster: its header and
/// Timestamp. Plausible means: the Cluster ID, a size ending within `segment_end`, a Timestamp
/// as first child (after an optional CRC-32) within `max_ticks`, and, when `buf` holds it, a
/// next child that a cluster may contain. Random payload bytes pass all of this with
/// vanishing probability.
pub(super) fn cluster_at(buf: &[u8], offset: u64, segment_end: u64, max_ticks: u64) -> Option<ClusterStart> {
    let header = ebml::read_header(buf, offset).ok()?;
    if header.id != id::CLUSTER {
        return None;
    }
    let known_end = header.end();
    if known_end.is_some_and(|e| e > segment_end) || (header.size.is_some() && known_end.is_none()) {
        return None;
    }
    // Bytes of this cluster that lie in `buf`.
    let limit = match header.size {
        Some(size) => usize::try_from(header.len.saturating_add(size)).unwrap_or(usize::MAX).min(buf.len()),
        None => buf.len(),
    };
    let buf = buf.get(..limit)?;
    let mut pos = usize::try_from(header.len).ok()?;
    let mut child = ebml::read_header(buf.get(pos..)?, 0).ok()?;
    if child.id == id::CRC32 && child.size == Some(4) {
        pos = pos.checked_add(child.len as usize + 4)?;
        child = ebml::read_header(buf.get(pos..)?, 0).ok()?;
    }
    let size = usize::try_from(child.size?).ok()?;
    if child.id != id::TIMESTAMP || size > 8 {
        return None;
    }
    let data = pos.checked_add(child.len as usize)?;
    let after_timestamp = data.checked_add(size)?;
    let ticks = ebml::read_uint(buf.get(data..after_timestamp)?)?;
    if ticks > max_ticks {
        return None;
    }
    if let Some(rest) = buf.get(after_timestamp..).filter(|r| !r.is_empty()) {
        match ebml::read_header(rest, 0) {
            Ok(next) => {
                let child_ok = matches!(
                    next.id,
                    id::SIMPLE_BLOCK
                        | id::BLOCK_GROUP
                        | id::VOID
                        | id::CRC32
                        | POSITION
                        | PREV_SIZE
                        | SILENT_TRACKS
                ) && next.size.is_some();
                // An empty unknown-size cluster ends at the next top-level element.
                let ends_empty_cluster = header.size.is_none() && ebml::is_top_level(next.id);
                if !(child_ok || ends_empty_cluster) {
                    return None;
                }
            }
            // The buffer ends inside the next header: accept on what was seen.
            Err(ebml::HeaderError::Incomplete) => {}
            Err(ebml::HeaderError::Invalid) => return None,
        }
    }
    Some(ClusterStart { header, ticks, after_timestamp })
}

/// The last plausible Cluster in `buf` (lying at absolute `offset`).
fn last_cluster_in(buf: &[u8], offset: u64, segment_end: u64) -> Option<(usize, ClusterStart)> {
    let mut end = buf.len();
    while let Some(i) = buf.get(..end)?.windows(4).rposition(|w| w == CLUSTER_MAGIC) {
        let at = offset.saturating_add(i as u64);
        if let Some(c) = cluster_at(buf.get(i..)?, at, segment_end, u64::MAX) {
            return Some((i, c));
        }
        // Keep the first three bytes of the candidate so an overlapping match is still seen.
        end = i + 3;
        if i == 0 {
            break;
        }
    }
    None
}

/// What the file's tail says: the last cluster's Timestamp and where its track's last block
/// ends, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tail {
    pub(super) last_cluster_ticks: u64,
    /// Time of the end of the track's last block in the last cluster: its timestamp plus its
    /// BlockDuration, else DefaultDuration, else nothing. `None` when the last cluster holds no
    /// block of the track.
    pub(super) end_ns: Option<i64>,
}

impl MkvIndex {
    /// Reads the file's tail for the last cluster: one read of `PROBE_WINDOW` bytes, and one
    /// larger read when no cluster starts there. `None` when no cluster is found (the caller
    /// then has no duration; this is not an error).
    pub(super) fn read_tail(&self, src: &dyn RangeSource, head: &Bytes) -> Option<Tail> {
        let mut have_start = self.segment_end;
        let mut have = Bytes::new();
        for window in TAIL_READS {
            let start = self.segment_end.saturating_sub(window).max(self.walk_start);
            if start >= have_start {
                break;
            }
            // Only the bytes before those already read.
            let len = have_start - start;
            let more = if have_start <= head.len() as u64 {
                head.slice(start as usize..have_start as usize)
            } else {
                src.read_range(start, len).ok()?
            };
            have = if have.is_empty() { more } else { Bytes::from([&more[..], &have[..]].concat()) };
            have_start = start;
            if let Some((i, cluster)) = last_cluster_in(&have, start, self.segment_end) {
                return Some(self.tail_of(&have, i, &cluster));
            }
        }
        None
    }

    /// The end of the track's last block in the cluster found at `buf[i..]`.
    fn tail_of(&self, buf: &[u8], i: usize, cluster: &ClusterStart) -> Tail {
        let mut end_ns: Option<i64> = None;
        let cluster_end = match cluster.header.size {
            Some(size) => i.saturating_add(
                usize::try_from(cluster.header.len.saturating_add(size)).unwrap_or(usize::MAX),
            ),
            None => buf.len(),
        };
        let body = buf.get(i..cluster_end.min(buf.len())).unwrap_or_default();
        let unknown_size = cluster.header.size.is_none();
        let mut pos = cluster.after_timestamp;
        // Each step moves past one complete child; bounded by the bytes.
        while let Some(rest) = body.get(pos..).filter(|r| !r.is_empty()) {
            let Ok(h) = ebml::read_header(rest, 0) else { break };
            if unknown_size && ebml::is_top_level(h.id) {
                break;
            }
            let Some(total) = h.end().and_then(|e| usize::try_from(e).ok()) else { break };
            let Some(data) = rest.get(h.len as usize..total) else { break };
            let block = match h.id {
                id::SIMPLE_BLOCK => Some((data, None)),
                id::BLOCK_GROUP => {
                    let mut block = None;
                    let mut duration = None;
                    for child in ebml::children(data, 0) {
                        let Ok((ch, cb)) = child else { break };
                        match ch.id {
                            id::BLOCK => block = Some(cb),
                            id::BLOCK_DURATION => duration = ebml::read_uint(cb),
                            _ => {}
                        }
                    }
                    block.map(|b| (b, duration))
                }
                _ => None,
            };
            if let Some((data, duration)) = block {
                if let Some(end) = self.block_end(data, cluster.ticks, duration) {
                    end_ns = Some(end_ns.map_or(end, |e| e.max(end)));
                }
            }
            pos = pos.saturating_add(total);
        }
        Tail { last_cluster_ticks: cluster.ticks, end_ns }
    }

    /// Where a block (its bytes from the track number on) of the chosen track ends, in
    /// nanoseconds of media time; `None` for other tracks and malformed blocks.
    fn block_end(&self, data: &[u8], cluster_ticks: u64, duration_ticks: Option<u64>) -> Option<i64> {
        let (number, n) = match ebml::read_vint(data) {
            Ok((Some(number), n)) => (number, n),
            _ => return None,
        };
        if number != self.track {
            return None;
        }
        let rel = i16::from_be_bytes([*data.get(n)?, *data.get(n + 1)?]);
        let ticks = i64::try_from(cluster_ticks).ok()?.checked_add(i64::from(rel))?;
        let start = self.time(ticks).as_nanos();
        let duration = match (duration_ticks, self.default_duration) {
            (Some(d), _) => i64::try_from(d).ok()?.saturating_mul(self.scale),
            (None, Some(d)) => d,
            (None, None) => 0,
        };
        Some(start.saturating_add(duration))
    }

    /// The greatest keyframe at or before `t` (or the first keyframe), found by bisection;
    /// `None` when the file does not let bisection make sense of it and the caller must walk
    /// forward from the start.
    pub(super) fn bisect_seek(
        &self,
        src: &dyn RangeSource,
        t: MediaTime,
    ) -> Result<Option<Keyframe>, ParseError> {
        let Some(lo) = self.bisect(src, t)? else { return Ok(None) };
        let mut w = Walker::new(src, self.segment_end, &self.info.codec);
        if let Some(k) = self.walk_until(&mut w, lo, u64::MAX, t)? {
            return Ok(Some(k));
        }
        // No keyframe at or before t from `lo` on: look at earlier clusters, doubling the
        // distance each step, and walk each newly covered stretch once.
        let mut upper = lo;
        let mut back = PROBE_WINDOW;
        for _ in 0..MAX_STEPS {
            if upper <= self.walk_start {
                // Nothing at or before t: the answer is the first keyframe, which the forward
                // walk reaches at once.
                return Ok(None);
            }
            let from = upper.saturating_sub(back).max(self.walk_start);
            back = back.saturating_mul(2);
            let start = if from == self.walk_start {
                from
            } else {
                match self.find_cluster(src, from, upper, u64::MAX)? {
                    Scan::Found(c) => c.header.offset,
                    Scan::None => continue,
                    Scan::GaveUp => return Ok(None),
                }
            };
            if let Some(k) = self.walk_until(&mut w, start, upper, t)? {
                return Ok(Some(k));
            }
            upper = start;
        }
        Ok(None)
    }

    /// The offset of a cluster at or before `t` (or the walk start) such that no cluster
    /// after it and more than `FINAL_SPAN` bytes away is at or before `t`; `None` when
    /// timestamps go backwards.
    fn bisect(&self, src: &dyn RangeSource, t: MediaTime) -> Result<Option<u64>, ParseError> {
        let mut lo = self.walk_start;
        let mut lo_ticks = self.first_cluster_ticks.unwrap_or(0);
        // Every cluster starting at or after `hi` is later than t.
        let mut hi = self.segment_end;
        let max_ticks = self.last_cluster_ticks.unwrap_or(u64::MAX);
        for _ in 0..MAX_STEPS {
            if hi.saturating_sub(lo) <= FINAL_SPAN {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            match self.find_cluster(src, mid, hi, max_ticks)? {
                Scan::Found(c) => {
                    if c.ticks < lo_ticks {
                        return Ok(None);
                    }
                    if self.time(i64::try_from(c.ticks).unwrap_or(i64::MAX)) <= t {
                        lo = c.header.offset;
                        lo_ticks = c.ticks;
                    } else {
                        // No cluster starts between mid and this one, and later ones are
                        // later still.
                        hi = mid;
                    }
                }
                Scan::None => hi = mid,
                Scan::GaveUp => break,
            }
        }
        Ok(Some(lo))
    }

    /// The first plausible Cluster starting in `from..before`, reading forward from `from` in
    /// doubling windows up to `SCAN_LIMIT` bytes.
    fn find_cluster(
        &self,
        src: &dyn RangeSource,
        from: u64,
        before: u64,
        max_ticks: u64,
    ) -> Result<Scan, ParseError> {
        let end = self.segment_end.min(src.len());
        let mut at = from;
        let mut window = PROBE_WINDOW;
        let mut scanned = 0u64;
        while at < before.min(end) {
            if scanned >= SCAN_LIMIT {
                return Ok(Scan::GaveUp);
            }
            // Nothing past `before` is wanted but the bytes that validate a cluster before it.
            let len = window.min(end - at).min(before.saturating_add(VALIDATE_LEN).saturating_sub(at));
            let chunk = src.read_range(at, len)?;
            let complete = at.saturating_add(chunk.len() as u64) >= end;
            // Candidates whose validation bytes are all in this chunk; the rest are looked at
            // again at the start of the next one.
            let usable =
                if complete { chunk.len() } else { chunk.len().saturating_sub(VALIDATE_LEN as usize) };
            let mut i = 0;
            while let Some(found) = chunk.get(i..).and_then(|c| c.windows(4).position(|w| w == CLUSTER_MAGIC))
            {
                let pos = i + found;
                if pos >= usable {
                    break;
                }
                let offset = at + pos as u64;
                if offset >= before {
                    return Ok(Scan::None);
                }
                if let Some(c) = chunk.get(pos..).and_then(|b| cluster_at(b, offset, end, max_ticks)) {
                    return Ok(Scan::Found(c));
                }
                i = pos + 1;
            }
            if complete || usable == 0 {
                break;
            }
            at += usable as u64;
            scanned = scanned.saturating_add(usable as u64);
            window = window.saturating_mul(2);
        }
        Ok(Scan::None)
    }

    /// Walks clusters from `pos` (stopping before `stop_at`, or at the first block of the track
    /// later than `t`) and returns the greatest keyframe at or before `t`, exactly as the
    /// forward walk lists it (a cluster holding one is walked to its end for its size).
    fn walk_until(
        &self,
        w: &mut Walker<'_>,
        mut pos: u64,
        stop_at: u64,
        t: MediaTime,
    ) -> Result<Option<Keyframe>, ParseError> {
        let mut best: Option<Keyframe> = None;
        while let Some(cluster) = w.next_cluster(pos)? {
            if cluster.offset >= stop_at {
                break;
            }
            let mut found: Vec<(MediaTime, u64)> = Vec::new();
            let mut past = false;
            let is_video = self.is_video;
            let walked = w.walk_cluster(&cluster, self.track, &mut |_, block| {
                let pts = self.time(block.ticks);
                if pts > t {
                    past = true;
                    return Ok(if found.is_empty() { Flow::Abort } else { Flow::Done });
                }
                if block.keyframe {
                    found.push((pts, block.offset));
                }
                Ok(Flow::more_if(is_video || found.is_empty()))
            })?;
            let size = walked.saturating_sub(cluster.offset);
            for (pts, block_offset) in found {
                if best.is_none_or(|b| pts >= b.pts) {
                    let rel = block_offset.saturating_sub(cluster.data_start());
                    best = Some(Keyframe {
                        pts,
                        offset: cluster.offset,
                        size,
                        pos: ReadPos {
                            offset: cluster.offset,
                            sample: super::encode_resume(rel, 0).unwrap_or(0),
                        },
                    });
                }
            }
            if past || walked <= pos {
                break;
            }
            pos = walked;
        }
        Ok(best)
    }
}

/// What a scan for a cluster found.
#[derive(Debug)]
enum Scan {
    Found(ClusterStart),
    /// No cluster starts in the range.
    None,
    /// `SCAN_LIMIT` bytes without a cluster: bisection cannot use this file.
    GaveUp,
}
