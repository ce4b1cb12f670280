//! WebVTT and SRT captions: every cue is a sample and a seek point.
//!
//! Caption files are small (a two-hour meeting has well under a megabyte of text), so opening
//! reads the whole file once and keeps each cue's times and byte range. Hand-written because the
//! subtitle crates return parsed text without the byte offsets a range-fetching client needs,
//! and the grammar we need (timing lines, blocks separated by blank lines) is a few lines.

use bytes::Bytes;

use super::{
    Codec, Container, ContainerIndex, Keyframe, ParseError, ReadPos, Reader, Sample, SampleBatch, TrackInfo,
};
use crate::source::RangeSource;
use crate::time::MediaTime;

/// Caption files larger than this are refused rather than read into memory.
const MAX_CAPTION_FILE: u64 = 64 * 1024 * 1024;

pub(crate) fn is_webvtt(head: &[u8]) -> bool {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    head.starts_with(b"WEBVTT") && matches!(head.get(6), None | Some(b' ' | b'\t' | b'\n' | b'\r'))
}

pub(crate) fn is_srt(head: &[u8]) -> bool {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let text = String::from_utf8_lossy(&head[..head.len().min(512)]);
    let mut lines = text.lines().map(str::trim).skip_while(|l| l.is_empty());
    let counter = lines.next().unwrap_or("");
    let timing = lines.next().unwrap_or("");
    !counter.is_empty() && counter.chars().all(|c| c.is_ascii_digit()) && parse_timing(timing, ',').is_some()
}

/// One cue: its span on the media timeline and the bytes of its block in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cue {
    start: MediaTime,
    end: MediaTime,
    offset: u64,
    size: u64,
}

#[derive(Debug)]
pub(crate) struct SubtitleIndex {
    info: TrackInfo,
    /// Sorted by start time.
    cues: Vec<Cue>,
}

impl SubtitleIndex {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        let len = reader.len();
        if len > MAX_CAPTION_FILE {
            return Err(ParseError::TooLarge {
                element: "caption file",
                offset: 0,
                size: len,
                limit: MAX_CAPTION_FILE,
            });
        }
        // The head read for detection is the file's start: fetch only the rest.
        let head = reader.head();
        let data = if len <= head.len() as u64 {
            head.slice(..len as usize)
        } else {
            let rest = reader.read(head.len() as u64, len - head.len() as u64, "caption file")?;
            let mut all = bytes::BytesMut::with_capacity(head.len() + rest.len());
            all.extend_from_slice(head);
            all.extend_from_slice(&rest);
            all.freeze()
        };
        let webvtt = is_webvtt(&data);
        let mut cues = parse_cues(&data, if webvtt { '.' } else { ',' }, webvtt)?;
        cues.sort_by_key(|c| (c.start, c.offset));
        let duration = cues.iter().map(|c| c.end).max();
        let (container, codec) =
            if webvtt { (Container::WebVtt, Codec::WebVtt) } else { (Container::Srt, Codec::Srt) };
        let info = TrackInfo {
            container,
            codec,
            codec_config: None,
            timescale: 1000,
            duration,
            video: None,
            audio: None,
        };
        Ok(SubtitleIndex { info, cues })
    }

    fn keyframe(&self, i: usize) -> Option<Keyframe> {
        let cue = self.cues.get(i)?;
        Some(Keyframe {
            pts: cue.start,
            offset: cue.offset,
            size: cue.size,
            pos: ReadPos { offset: cue.offset, sample: i as u64 },
        })
    }
}

impl ContainerIndex for SubtitleIndex {
    fn info(&self) -> &TrackInfo {
        &self.info
    }

    fn keyframes(&self, _src: &dyn RangeSource) -> Result<Vec<Keyframe>, ParseError> {
        Ok((0..self.cues.len()).filter_map(|i| self.keyframe(i)).collect())
    }

    /// The earliest cue still showing at `t`, so overlapping cues are all shown after a seek;
    /// else the last cue that started before `t`; else the first cue.
    fn seek(&self, _src: &dyn RangeSource, t: MediaTime) -> Result<Keyframe, ParseError> {
        let active = self.cues.iter().position(|c| c.start <= t && t < c.end);
        let before = self.cues.iter().rposition(|c| c.start <= t);
        active
            .or(before)
            .or((!self.cues.is_empty()).then_some(0))
            .and_then(|i| self.keyframe(i))
            .ok_or(ParseError::NoSamples)
    }

    fn samples(&self, _src: &dyn RangeSource, from: ReadPos, max: usize) -> Result<SampleBatch, ParseError> {
        let start = usize::try_from(from.sample).unwrap_or(usize::MAX).min(self.cues.len());
        let end = start.saturating_add(max).min(self.cues.len());
        let samples = self.cues[start..end]
            .iter()
            .map(|c| Sample {
                pts: c.start,
                dts: c.start,
                duration: c.end.saturating_sub(c.start),
                offset: c.offset,
                size: c.size,
                keyframe: true,
                follows_damage: false,
            })
            .collect();
        let next = self.cues.get(end).map(|c| ReadPos { offset: c.offset, sample: end as u64 });
        Ok(SampleBatch { samples, next })
    }
}

/// Splits the file into blank-line separated blocks and keeps those with a timing line.
fn parse_cues(data: &Bytes, decimal: char, webvtt: bool) -> Result<Vec<Cue>, ParseError> {
    let mut cues = Vec::new();
    let mut pos = 0usize;
    let mut first_block = true;
    while pos < data.len() {
        // Skip blank lines between blocks.
        let (line, next) = line_at(data, pos);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            pos = next;
            continue;
        }
        let block_start = pos;
        let mut block_end = pos;
        let mut lines = Vec::new();
        let mut at = pos;
        while at < data.len() {
            let (line, next) = line_at(data, at);
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                break;
            }
            lines.push(line);
            block_end = at + line.len();
            at = next;
        }
        pos = at;
        if webvtt && first_block {
            first_block = false;
            continue; // the WEBVTT header block
        }
        first_block = false;
        let timing_line = lines.iter().take(2).position(|l| String::from_utf8_lossy(l).contains("-->"));
        let Some(timing_index) = timing_line else {
            // NOTE, STYLE and REGION blocks in WebVTT; junk in SRT.
            continue;
        };
        let text = String::from_utf8_lossy(lines[timing_index]);
        let Some((start, end)) = parse_timing(&text, decimal) else {
            return Err(ParseError::malformed(
                if webvtt { "WebVTT cue" } else { "SRT cue" },
                block_start as u64,
                format!("unreadable timing line {:?}", text.trim()),
            ));
        };
        if end < start {
            return Err(ParseError::malformed(
                if webvtt { "WebVTT cue" } else { "SRT cue" },
                block_start as u64,
                format!("cue ends ({end}) before it starts ({start})"),
            ));
        }
        cues.push(Cue { start, end, offset: block_start as u64, size: (block_end - block_start) as u64 });
    }
    Ok(cues)
}

/// The line starting at `pos` (without its terminator) and where the next line starts.
/// Accepts `\n`, `\r\n` and `\r`.
fn line_at(data: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = &data[pos..];
    match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(i) => {
            let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
            (&rest[..i], pos + i + skip)
        }
        None => (rest, data.len()),
    }
}

/// `00:01:02.500 --> 00:01:04.000 align:start` (WebVTT, hours optional) or
/// `00:01:02,500 --> 00:01:04,000` (SRT).
fn parse_timing(line: &str, decimal: char) -> Option<(MediaTime, MediaTime)> {
    let (start, rest) = line.split_once("-->")?;
    let end = rest.split_whitespace().next()?;
    Some((parse_timestamp(start.trim(), decimal)?, parse_timestamp(end.trim(), decimal)?))
}

fn parse_timestamp(text: &str, decimal: char) -> Option<MediaTime> {
    let (clock, frac) = text.split_once(decimal).or_else(|| text.split_once('.'))?;
    if frac.len() != 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let parts: Vec<&str> = clock.split(':').collect();
    let (h, m, s) = match parts.as_slice() {
        [h, m, s] => (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?, s.parse::<i64>().ok()?),
        [m, s] => (0, m.parse::<i64>().ok()?, s.parse::<i64>().ok()?),
        _ => return None,
    };
    if m >= 60 || s >= 60 || h < 0 || m < 0 || s < 0 {
        return None;
    }
    let ms = h.checked_mul(3_600_000)?.checked_add(m * 60_000 + s * 1000 + frac.parse::<i64>().ok()?)?;
    Some(MediaTime::from_millis(ms))
}

/// The text of one cue block (what follows its timing line), as the file has it.
pub fn cue_body(block: &str) -> String {
    let body: Vec<&str> = block.lines().skip_while(|l| !l.contains("-->")).skip(1).collect();
    body.join("\n").trim().to_string()
}

/// A cue's text as people write it, on one line: a WebVTT voice tag becomes `name: `, other
/// tags (`<i>`, `<c.loud>`, timestamps) go, lines join with ` / `. For terminals, search and
/// burnt-in captions alike.
pub fn plain_caption(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let tag = &rest[open + 1..open + close];
        // `<v alice>` or `<v.loud alice>`: the name follows the first space.
        if let Some(voice) = tag.strip_prefix('v').filter(|r| r.starts_with([' ', '.'])) {
            let name = voice.split_once(' ').map_or("", |(_, n)| n).trim();
            if !name.is_empty() {
                out.push_str(name);
                out.push_str(": ");
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" / ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn voice_tags_become_names_and_other_tags_go() {
        assert_eq!(plain_caption("<v alice>Good morning, <i>all</i></v>"), "alice: Good morning, all");
        assert_eq!(plain_caption("<v.loud bob>Hi\nthere"), "bob: Hi / there");
        assert_eq!(plain_caption("plain text"), "plain text");
        assert_eq!(plain_caption("a < b"), "a < b");
        assert_eq!(
            cue_body("3\n00:01.000 --> 00:02.000 align:start\n<v bob>Hi\nthere\n"),
            "<v bob>Hi\nthere"
        );
    }

    use super::*;
    use crate::index::TrackIndex;

    const VTT: &str = "WEBVTT - meeting\n\nNOTE a comment\n\n1\n00:00.500 --> 00:02.000\n<v alice>Hello\n\n\
                       00:01:30.000 --> 00:01:31.250 align:start\r\nSecond\r\nline\r\n\r\n";
    const SRT: &str = "1\n00:00:01,000 --> 00:00:02,500\nHi\n\n2\n00:00:03,000 --> 00:00:04,000\nBye\n";

    #[test]
    fn webvtt_cues_have_times_and_byte_ranges() {
        let src = Bytes::from_static(VTT.as_bytes());
        let index = TrackIndex::open("captions", &src).expect("opens");
        assert_eq!(index.info().container, Container::WebVtt);
        let keyframes = index.keyframes(&src).expect("cues");
        assert_eq!(keyframes.iter().map(|k| k.pts.as_millis()).collect::<Vec<_>>(), vec![500, 90_000]);
        let first = &src[keyframes[0].offset as usize..(keyframes[0].offset + keyframes[0].size) as usize];
        assert_eq!(first, b"1\n00:00.500 --> 00:02.000\n<v alice>Hello");
        assert_eq!(index.info().duration, Some(MediaTime::from_millis(91_250)));
        let at = index.seek(&src, MediaTime::from_millis(1_000)).expect("seek");
        assert_eq!(at.pts.as_millis(), 500);
        let batch = index.samples(&src, at.pos, 10).expect("samples");
        assert_eq!(batch.samples.len(), 2);
        assert_eq!(batch.samples[1].duration.as_millis(), 1_250);
        assert_eq!(batch.next, None);
    }

    #[test]
    fn srt_is_detected_by_content() {
        let src = Bytes::from_static(SRT.as_bytes());
        let index = TrackIndex::open("captions", &src).expect("opens");
        assert_eq!(index.info().container, Container::Srt);
        let times: Vec<i64> =
            index.keyframes(&src).expect("cues").iter().map(|k| k.pts.as_millis()).collect();
        assert_eq!(times, vec![1000, 3000]);
    }

    #[test]
    fn malformed_timing_is_a_typed_error() {
        let src = Bytes::from_static(b"WEBVTT\n\n00:00.5 --> 00:02.000\nx\n");
        let err = TrackIndex::open("captions", &src).expect_err("bad timing");
        assert!(
            matches!(err.source, ParseError::Malformed { element: "WebVTT cue", offset: 8, .. }),
            "{err}"
        );
        let src = Bytes::from_static(b"WEBVTT\n\n00:05.000 --> 00:02.000\nx\n");
        assert!(TrackIndex::open("captions", &src).is_err());
        assert!(!is_webvtt(b"WEBVTTX"));
        assert!(!is_srt(b"1\nnot a timing\n"));
    }
}
