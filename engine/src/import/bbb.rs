//! BigBlueButton raw recordings: `/var/bigbluebutton/recording/raw/<internal-meeting-id>/`
//! after the archive step.
//!
//! Taken from BigBlueButton's own sources (bigbluebutton/bigbluebutton):
//! - `record-and-playback/core/scripts/archive/archive.rb`: the folder. `events.xml`;
//!   Kurento/recorder camera files under `video/<meeting_id>/`, screen shares under
//!   `deskshare/`, FreeSWITCH voice under `audio/` (a `.wav` re-encoded to Opus in Ogg,
//!   `AUDIO_ARCHIVE_FORMAT` `-c:a libopus -f ogg`, extension `.opus`, and the `VOICE`
//!   events' `filename` rewritten to that basename; other voice files copied as they are).
//! - `record-and-playback/core/lib/recordandplayback/events_archiver.rb`
//!   (`RedisEventsArchiver#store_events`): `<recording meeting_id=".." bbb_version="..">`,
//!   then one `<event timestamp=".." module=".." eventname="..">` per event, every other
//!   field of the event a child element of that name; events kept in `timestamp` order.
//! - `bbb-webrtc-sfu/lib/bbb/messages/video/WebRTCShareEvent.js`: camera events
//!   `StartWebRTCShareEvent` / `StopWebRTCShareEvent` with `filename` (the recording's path on
//!   the server), `timestamp` (`Utils.hrTime()`, a monotonic clock in ms) and `timestampUTC`
//!   (`Date.now()`, the wall clock); newer versions add `userId`. Screen shares the same with
//!   `StartWebRTCDesktopShareEvent` / `StopWebRTCDesktopShareEvent`.
//! - `akka-bbb-apps/.../record/events/StartRecordingVoiceRecordEvent.scala`: voice
//!   `StartRecordingEvent` / `StopRecordingEvent` (module `VOICE`) with `filename` and
//!   `recordingTimestamp`; `ParticipantTalkingVoiceRecordEvent.scala`:
//!   `ParticipantTalkingEvent` with `participant` (the user id) and `talking`;
//!   `ParticipantJoinRecordEvent.scala`: `ParticipantJoinEvent` with `userId`,
//!   `externalUserId`, `name`, `role`.
//! - `record-and-playback/core/lib/recordandplayback/generators/events.rb`
//!   (`get_start_and_stop_rec_events`, `match_start_and_stop_rec_events`,
//!   `edl_match_recording_marks`): the timeline playback shows. `RecordStatusEvent`s toggle
//!   recording on and off in turn (none: the whole meeting, first to last event; an odd count:
//!   the last runs to the last event); only the recorded stretches are kept, back to back,
//!   the first starting at 0. Every time is an event's `timestamp` relative to the first
//!   event, never `timestampUTC`.
//!
//! Voice files supported: Opus in Ogg (`.opus`, `.ogg`: BigBlueButton 2.3 and later, including
//! 2.6 and 3.0, whose archive step encodes FreeSWITCH's WAV so). WAV and FLAC voice files
//! (older versions, or an archive step that kept them) are listed as skipped: tandem indexes
//! no WAV or native FLAC. Camera and screen files are WebM (VP8/VP9/H.264) as
//! Kurento and bbb-webrtc-recorder write them: live streams without Cues or Duration.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use quick_xml::Reader;

use super::{assemble, Found, ImportError, Layout, Placed, Plan, Skipped, Talk};
use crate::manifest::{Role, TrackKind};

/// The events file at the top of a raw recording folder.
pub const EVENTS_XML: &str = "events.xml";

/// Largest events.xml read (a day-long meeting with chat and whiteboard is tens of MB).
const MAX_EVENTS_XML: u64 = 512 * 1024 * 1024;

/// One `<event>` of events.xml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// Line of its opening tag (1-based), for error messages.
    pub line: usize,
    /// The monotonic `timestamp` attribute, in ms.
    pub timestamp: i64,
    pub module: String,
    pub name: String,
    /// Child elements: field name -> text.
    pub fields: HashMap<String, String>,
}

impl RawEvent {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
    }
}

/// events.xml parsed: the meeting id and the events in file order.
#[derive(Debug, Clone)]
pub struct Events {
    pub meeting_id: Option<String>,
    pub meeting_name: Option<String>,
    pub events: Vec<RawEvent>,
}

fn line_of(text: &str, offset: u64) -> usize {
    let end = usize::try_from(offset).unwrap_or(usize::MAX).min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Parses events.xml text (`file` names it in errors). Malformed XML, an events file cut
/// short and events without a numeric timestamp are errors naming the line.
pub fn parse_events(file: &Path, text: &str) -> Result<Events, ImportError> {
    let xml_error =
        |line: usize, message: String| ImportError::Xml { file: file.to_path_buf(), line, message };
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut events = Events { meeting_id: None, meeting_name: None, events: Vec::new() };
    // Open elements: (name, line).
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut current: Option<RawEvent> = None;
    let mut field: Option<(String, String)> = None;
    let mut seen_root = false;
    loop {
        let at = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| xml_error(line_of(text, reader.error_position()), e.to_string()))?;
        let line = line_of(text, at);
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(event, Event::Empty(_));
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                let mut attrs: HashMap<String, String> = HashMap::new();
                for attr in e.attributes() {
                    let attr = attr.map_err(|e| xml_error(line, e.to_string()))?;
                    let value = attr
                        .decode_and_unescape_value(reader.decoder())
                        .map_err(|e| xml_error(line, e.to_string()))?;
                    attrs.insert(String::from_utf8_lossy(attr.key.as_ref()).into_owned(), value.into_owned());
                }
                match (open.len(), name.as_str()) {
                    (0, "recording") => {
                        seen_root = true;
                        events.meeting_id = attrs.get("meeting_id").cloned();
                    }
                    (0, other) => {
                        return Err(xml_error(
                            line,
                            format!("the root element is <{other}>, not <recording>"),
                        ))
                    }
                    (1, "meeting") => events.meeting_name = attrs.get("name").cloned(),
                    (1, "event") => {
                        let event_name = attrs.get("eventname").cloned().unwrap_or_default();
                        let timestamp = attrs.get("timestamp").ok_or_else(|| ImportError::Event {
                            file: file.to_path_buf(),
                            line,
                            event: event_name.clone(),
                            message: "no timestamp attribute".into(),
                        })?;
                        let timestamp = timestamp.trim().parse::<i64>().map_err(|_| ImportError::Event {
                            file: file.to_path_buf(),
                            line,
                            event: event_name.clone(),
                            message: format!("timestamp {timestamp:?} is not a whole number of ms"),
                        })?;
                        let raw = RawEvent {
                            line,
                            timestamp,
                            module: attrs.get("module").cloned().unwrap_or_default(),
                            name: event_name,
                            fields: HashMap::new(),
                        };
                        if is_empty {
                            events.events.push(raw);
                        } else {
                            current = Some(raw);
                        }
                    }
                    (2, _) if current.is_some() && !is_empty => field = Some((name.clone(), String::new())),
                    _ => {}
                }
                if !is_empty {
                    open.push((name, line));
                }
            }
            Event::Text(t) => {
                if let Some((_, value)) = field.as_mut() {
                    value.push_str(&t.decode().map_err(|e| xml_error(line, e.to_string()))?);
                }
            }
            Event::CData(t) => {
                if let Some((_, value)) = field.as_mut() {
                    value.push_str(&t.decode().map_err(|e| xml_error(line, e.to_string()))?);
                }
            }
            Event::GeneralRef(r) => {
                if let Some((_, value)) = field.as_mut() {
                    let resolved = match r.resolve_char_ref().map_err(|e| xml_error(line, e.to_string()))? {
                        Some(c) => c.to_string(),
                        None => {
                            let name = r.decode().map_err(|e| xml_error(line, e.to_string()))?;
                            quick_xml::escape::resolve_predefined_entity(&name)
                                .map(str::to_string)
                                .ok_or_else(|| xml_error(line, format!("unknown entity &{name};")))?
                        }
                    };
                    value.push_str(&resolved);
                }
            }
            Event::End(_) => {
                open.pop();
                match open.len() {
                    2 => {
                        if let (Some((name, value)), Some(event)) = (field.take(), current.as_mut()) {
                            event.fields.insert(name, value);
                        }
                    }
                    1 => {
                        if let Some(event) = current.take() {
                            events.events.push(event);
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => {
                if let Some((name, opened)) = open.last() {
                    return Err(xml_error(
                        line_of(text, text.trim_end().len() as u64),
                        format!(
                            "the file ends inside <{name}> opened at line {opened}: events.xml is cut short"
                        ),
                    ));
                }
                if !seen_root {
                    return Err(xml_error(1, "no <recording> element".into()));
                }
                return Ok(events);
            }
            _ => {}
        }
    }
}

/// Recorded stretches of the event clock, and the mapping from it to the meeting timeline.
#[derive(Debug, Clone)]
struct Cuts {
    /// (start, stop) on the event clock, in order.
    kept: Vec<(i64, i64)>,
}

impl Cuts {
    /// From `RecordStatusEvent`s, as `generators/events.rb` pairs them.
    fn new(events: &[RawEvent]) -> Cuts {
        let first = events.first().map_or(0, |e| e.timestamp);
        let last = events.last().map_or(0, |e| e.timestamp);
        let mut marks: Vec<i64> =
            events.iter().filter(|e| e.name == "RecordStatusEvent").map(|e| e.timestamp).collect();
        if marks.is_empty() {
            marks.push(first);
        }
        if marks.len() % 2 == 1 {
            marks.push(last);
        }
        marks.sort_unstable();
        Cuts { kept: marks.chunks(2).map(|pair| (pair[0], pair[1])).filter(|(a, b)| b > a).collect() }
    }

    /// Meeting time (ms) of event time `t`, which must lie in a kept stretch.
    fn meeting(&self, t: i64) -> u64 {
        let mut before = 0i64;
        for &(a, b) in &self.kept {
            if t <= b {
                return (before + (t - a).max(0)).max(0) as u64;
            }
            before += b - a;
        }
        before.max(0) as u64
    }

    fn duration(&self) -> u64 {
        self.kept.iter().map(|(a, b)| b - a).sum::<i64>().max(0) as u64
    }

    /// The stretches of a file recorded from event time `from` to `to` that playback shows.
    fn place(&self, source: &Path, from: i64, to: i64) -> Vec<Placed> {
        let mut out = Vec::new();
        for &(a, b) in &self.kept {
            let (s, e) = (from.max(a), to.min(b));
            if e > s {
                out.push(Placed {
                    source: source.to_path_buf(),
                    start_ms: self.meeting(s),
                    media_start_ms: (s - from) as u64,
                    end_ms: Some(self.meeting(s) + (e - s) as u64),
                });
            }
        }
        out
    }
}

/// What a start event records, and where the archive step put its files.
struct MediaKind {
    start: &'static str,
    stop: &'static str,
    kind: TrackKind,
    role: Role,
}

const MEDIA: [MediaKind; 3] = [
    MediaKind {
        start: "StartWebRTCShareEvent",
        stop: "StopWebRTCShareEvent",
        kind: TrackKind::Video,
        role: Role::Camera,
    },
    MediaKind {
        start: "StartWebRTCDesktopShareEvent",
        stop: "StopWebRTCDesktopShareEvent",
        kind: TrackKind::Video,
        role: Role::Screen,
    },
    MediaKind {
        start: "StartRecordingEvent",
        stop: "StopRecordingEvent",
        kind: TrackKind::Audio,
        role: Role::MixedAudio,
    },
];

/// Where archive.rb puts a file an event of `role` names.
fn archived(dir: &Path, meeting_id: &str, role: &Role, filename: &str) -> PathBuf {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    match role {
        Role::Camera => dir.join("video").join(meeting_id).join(base),
        Role::Screen => dir.join("deskshare").join(base),
        _ => dir.join("audio").join(base),
    }
}

/// Reads a raw recording folder into a plan.
pub fn plan(dir: &Path) -> Result<Plan, ImportError> {
    let file = dir.join(EVENTS_XML);
    let size = std::fs::metadata(&file).map_err(super::io_error(&file))?.len();
    if size > MAX_EVENTS_XML {
        return Err(ImportError::Io {
            path: file,
            message: format!("{size} bytes: larger than the {MAX_EVENTS_XML} bytes the importer reads"),
        });
    }
    let bytes = std::fs::read(&file).map_err(super::io_error(&file))?;
    let text = String::from_utf8(bytes).map_err(|e| ImportError::Xml {
        file: file.clone(),
        line: 0,
        message: format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
    })?;
    let parsed = parse_events(&file, &text)?;
    let meeting_id = parsed
        .meeting_id
        .clone()
        .or_else(|| dir.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .unwrap_or_default();
    let events = &parsed.events;
    if events.is_empty() {
        return Err(ImportError::Empty {
            dir: dir.to_path_buf(),
            why: format!("{} has no events", file.display()),
        });
    }
    let cuts = Cuts::new(events);
    let last = events.last().map_or(0, |e| e.timestamp);

    // Participants: user id -> display name, in order of joining.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut participants: Vec<String> = Vec::new();
    for e in events.iter().filter(|e| e.name == "ParticipantJoinEvent") {
        if let (Some(id), Some(name)) = (e.field("userId"), e.field("name")) {
            names.insert(id.to_string(), name.to_string());
            if !participants.iter().any(|p| p == name) {
                participants.push(name.to_string());
            }
        }
    }
    // Whose file: the event's userId (newer versions), else a user id the file name contains
    // (bbb-webrtc-sfu names camera recordings `<profile>-<userId>-<time>`), the longest.
    let owner = |e: &RawEvent, filename: &str| -> Option<String> {
        if let Some(name) = e.field("userId").and_then(|id| names.get(id)) {
            return Some(name.clone());
        }
        let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
        names
            .iter()
            .filter(|(id, _)| base.contains(id.as_str()))
            .max_by_key(|(id, _)| id.len())
            .map(|(_, n)| n.clone())
    };

    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for media in &MEDIA {
        for (i, start) in events.iter().enumerate().filter(|(_, e)| e.name == media.start) {
            let filename = start.field("filename").ok_or_else(|| ImportError::Event {
                file: file.clone(),
                line: start.line,
                event: media.start.into(),
                message: "no filename field".into(),
            })?;
            let source = archived(dir, &meeting_id, &media.role, filename);
            let ext = source.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            if media.kind == TrackKind::Audio && matches!(ext.as_str(), "wav" | "flac") {
                skipped.push(Skipped {
                    what: format!("{} (line {})", source.display(), start.line),
                    why: format!(
                        "a {} voice file (BigBlueButton before 2.3, or an archive step that kept it): tandem reads Opus in Ogg, as 2.3 and later archive voice",
                        ext.to_uppercase()
                    ),
                });
                continue;
            }
            if !source.is_file() {
                return Err(ImportError::MissingFile {
                    file: file.clone(),
                    line: start.line,
                    event: media.start.into(),
                    missing: source,
                });
            }
            let stop = events[i + 1..]
                .iter()
                .find(|e| e.name == media.stop && e.field("filename") == Some(filename))
                .map_or(last, |e| e.timestamp);
            let stretches = cuts.place(&source, start.timestamp, stop);
            if stretches.is_empty() {
                skipped.push(Skipped {
                    what: format!("{} (line {})", source.display(), start.line),
                    why: "recorded only while the recording was paused".into(),
                });
                continue;
            }
            let participant = match media.role {
                Role::MixedAudio => None,
                _ => owner(start, filename),
            };
            found.push(Found { participant, kind: media.kind, role: media.role.clone(), stretches });
        }
    }

    // Who talked when, on the meeting timeline (cut like everything else).
    let mut talking = Vec::new();
    let mut since: HashMap<String, i64> = HashMap::new();
    for e in events.iter().filter(|e| e.name == "ParticipantTalkingEvent") {
        let Some(who) = e.field("participant") else { continue };
        let name = names.get(who).cloned().unwrap_or_else(|| who.to_string());
        match e.field("talking") {
            Some("true") => {
                since.entry(name).or_insert(e.timestamp);
            }
            _ => {
                if let Some(from) = since.remove(&name) {
                    for p in cuts.place(Path::new(""), from, e.timestamp) {
                        talking.push(Talk {
                            participant: name.clone(),
                            start_ms: p.start_ms,
                            end_ms: p.end_ms.unwrap_or(p.start_ms),
                        });
                    }
                }
            }
        }
    }

    Ok(Plan {
        layout: Layout::BigBlueButton,
        participants,
        tracks: assemble(found),
        skipped,
        notes: Vec::new(),
        talking,
        duration_ms: Some(cuts.duration()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Events, ImportError> {
        parse_events(Path::new("events.xml"), text)
    }

    #[test]
    fn events_carry_their_line_timestamp_and_fields() {
        let events = parse(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<recording meeting_id=\"m-1\" bbb_version=\"3.0\">\n  <meeting id=\"m-1\" name=\"Class &amp; co\"/>\n  <event timestamp=\"100\" module=\"PARTICIPANT\" eventname=\"ParticipantJoinEvent\">\n    <name>Ann &amp; &#66;ob</name>\n    <userId>w_1</userId>\n  </event>\n</recording>\n",
        )
        .expect("valid");
        assert_eq!(events.meeting_id.as_deref(), Some("m-1"));
        assert_eq!(events.meeting_name.as_deref(), Some("Class & co"));
        let e = &events.events[0];
        assert_eq!((e.line, e.timestamp, e.name.as_str()), (4, 100, "ParticipantJoinEvent"));
        assert_eq!((e.field("name"), e.field("userId")), (Some("Ann & Bob"), Some("w_1")));
    }

    #[test]
    fn malformed_and_cut_short_files_name_the_line() {
        let cut = "<recording>\n<event timestamp=\"1\" module=\"m\" eventname=\"e\">\n<filename>a";
        let err = parse(cut).expect_err("cut short");
        assert!(matches!(err, ImportError::Xml { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("cut short"), "{err}");
        let mismatched = "<recording>\n<event timestamp=\"1\">\n</evnt>\n</recording>";
        assert!(
            matches!(parse(mismatched), Err(ImportError::Xml { line: 3, .. })),
            "{:?}",
            parse(mismatched)
        );
        let no_time =
            "<recording>\n<event module=\"m\" eventname=\"StartWebRTCShareEvent\"></event></recording>";
        assert!(matches!(parse(no_time), Err(ImportError::Event { line: 2, .. })));
        let bad_time = "<recording><event timestamp=\"soon\" eventname=\"X\"/></recording>";
        assert!(parse(bad_time).expect_err("bad").to_string().contains("soon"));
    }

    #[test]
    fn pauses_are_cut_out_of_the_timeline() {
        let event = |t: i64, name: &str| RawEvent {
            line: 1,
            timestamp: t,
            module: String::new(),
            name: name.into(),
            fields: HashMap::new(),
        };
        // Recording from 1000 to 5000 and from 9000 to the last event (12000).
        let events = vec![
            event(0, "CreatePresentationPodEvent"),
            event(1000, "RecordStatusEvent"),
            event(5000, "RecordStatusEvent"),
            event(9000, "RecordStatusEvent"),
            event(12_000, "EndAndKickAllEvent"),
        ];
        let cuts = Cuts::new(&events);
        assert_eq!(cuts.kept, vec![(1000, 5000), (9000, 12_000)]);
        assert_eq!(cuts.duration(), 7000);
        // A file recorded from 3000 to 10000: 3000-5000 shows at 2000-4000, its media from
        // 6000 (event time 9000) at 4000-5000.
        let placed = cuts.place(Path::new("f"), 3000, 10_000);
        let spans: Vec<(u64, u64, Option<u64>)> =
            placed.iter().map(|p| (p.start_ms, p.media_start_ms, p.end_ms)).collect();
        assert_eq!(spans, vec![(2000, 0, Some(4000)), (4000, 6000, Some(5000))]);
    }
}
