//! `meeting-replay import` on a BigBlueButton raw recording and on LiveKit track egress output
//! written by `tandem_fixtures::layouts` from the committed fixtures' stamped media (cut with
//! ffmpeg), with events.xml and egress JSON in the shapes the real systems write (each name
//! with the source file it comes from). The imported meeting is then read by `tracks`, `play --headless` and
//! `snapshot`; what a snapshot shows is compared with GStreamer's own decode of the source
//! file at the media time the events (or the egress start times) put at that meeting time.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use tandem_fixtures::layouts::bbb::{self, meeting_of, KEPT};
use tandem_fixtures::layouts::livekit;

fn meeting_replay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meeting-replay"))
}

fn run(args: &[&str]) -> Result<Output> {
    meeting_replay()
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .args(args)
        .output()
        .context("running meeting-replay")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The stamp in a PNG written by `snapshot`.
fn png_stamp(path: &Path) -> Result<Option<u32>> {
    Ok(common::png_stamp(path)?.2)
}

/// Every frame of a file as GStreamer decodes it: (media ms, stamp).
fn stamps_of(path: &Path) -> Result<Vec<(u64, u32)>> {
    let frames = tandem_fixtures::decode::decode_video_frames(path)?;
    let mut out = Vec::new();
    for f in frames {
        let stamp = tandem_fixtures::stamp::read_stamp(&f.luma, f.width, f.width, f.height)
            .with_context(|| format!("{}: a frame without a stamp", path.display()))?;
        out.push((f.pts.mseconds(), stamp));
    }
    ensure!(!out.is_empty(), "{}: no frames", path.display());
    Ok(out)
}

/// The stamp a file shows at media time `media_ms`: its last frame at or before it.
fn stamp_at(stamps: &[(u64, u32)], media_ms: u64) -> Option<u32> {
    stamps.iter().filter(|(pts, _)| *pts <= media_ms).max_by_key(|(pts, _)| *pts).map(|(_, s)| *s)
}

/// `snapshot --track` at a meeting time: the stamp shown, or `None` when the track shows
/// nothing there (snapshot fails).
fn snapshot(meeting: &Path, track: &str, at_ms: u64, out: &Path) -> Result<Option<u32>> {
    let png = out.join(format!("{track}-{at_ms}.png"));
    let output =
        run(&["snapshot", &s(meeting), "--at", &format!("{at_ms}ms"), "--track", track, "-o", &s(&png)])?;
    if !output.status.success() {
        return Ok(None);
    }
    png_stamp(&png)
}

/// The snapshot of `track` at meeting time `at_ms` shows the frame `file` holds at `media_ms`
/// (to one frame: 40 ms at 25 fps).
fn check_shows(
    meeting: &Path,
    track: &str,
    at_ms: u64,
    file: &Path,
    media_ms: u64,
    out: &Path,
) -> Result<()> {
    let want = stamp_at(&stamps_of(file)?, media_ms)
        .with_context(|| format!("{} has no frame at {media_ms} ms", file.display()))?;
    let got = snapshot(meeting, track, at_ms, out)?.with_context(|| {
        format!("{track} shows nothing at {at_ms} ms (want {} at {media_ms} ms)", file.display())
    })?;
    ensure!(
        got.abs_diff(want) <= 40,
        "{track} at {at_ms} ms shows stamp {got}; {} at media {media_ms} ms shows {want}",
        file.display()
    );
    Ok(())
}

// ---- BigBlueButton ------------------------------------------------------------------------

#[test]
fn a_bigbluebutton_raw_recording_imports_and_plays_where_its_events_put_it() -> Result<()> {
    let root = tempfile::tempdir()?;
    let bbb = bbb::write(root.path())?;
    let meeting = root.path().join("class-1");
    let output = run(&["import", &s(&bbb.dir), "-o", &s(&meeting)])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "import failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    eprintln!("{stdout}");
    for want in [
        "layout: BigBlueButton",
        "participants: Alice Example, Bob",
        "track Alice_Example_camera video camera Alice Example",
        "track Bob_camera",
        "track Alice_Example_screen",
        "track mixed_audio audio mixed_audio",
    ] {
        ensure!(stdout.contains(want), "import printed no {want:?}:\n{stdout}");
    }
    // The camera that stopped and started is one track in two files; the media is linked or
    // copied into the meeting, and the meeting lists every track.
    let manifest = tandem::manifest::Manifest::load(&meeting)?;
    let alice = manifest.track("Alice_Example_camera").context("alice's camera")?;
    ensure!(alice.files().len() == 2, "alice's camera files: {:?}", alice.files());
    let speakers = manifest.track("speakers").context("the talking events were not kept")?;
    let vtt = std::fs::read_to_string(meeting.join(speakers.file()))?;
    ensure!(
        vtt.contains(&format!(
            "00:00:{:02}.000 --> 00:00:{:02}.000\nAlice Example",
            meeting_of(3000) / 1000,
            meeting_of(6000) / 1000
        )),
        "{vtt}"
    );
    let tracks = run(&["tracks", &s(&meeting)])?;
    let listed = String::from_utf8_lossy(&tracks.stdout);
    ensure!(tracks.status.success(), "tracks failed: {}", String::from_utf8_lossy(&tracks.stderr));
    for t in &manifest.tracks {
        ensure!(listed.contains(&t.name), "tracks does not list {}:\n{listed}", t.name);
    }
    let play = run(&["play", &s(&meeting), "--headless", "--at", "8", "--for", "8"])?;
    let played = String::from_utf8_lossy(&play.stdout);
    ensure!(play.status.success(), "play failed: {}\n{played}", String::from_utf8_lossy(&play.stderr));
    ensure!(played.contains("stopped at 0:16"), "{played}");

    // Every camera and screen file at the meeting time its events give, to the frame: before
    // and after the pause (cut out), the restarted camera, the late one, the screen share.
    let out = root.path().join("png");
    std::fs::create_dir_all(&out)?;
    let cases: [(&str, &Path, i64, i64); 7] = [
        // (track, file, event time of its start, event time shown)
        ("Alice_Example_camera", &bbb.alice_1, 2000, 2500),
        ("Alice_Example_camera", &bbb.alice_1, 2000, 8800),
        ("Alice_Example_camera", &bbb.alice_2, 11_000, 12_500),
        ("Alice_Example_camera", &bbb.alice_2, 11_000, 18_400),
        ("Alice_Example_camera", &bbb.alice_2, 11_000, 24_000),
        ("Bob_camera", &bbb.bob, 20_000, 33_000),
        ("Alice_Example_screen", &bbb.screen, 22_000, 26_000),
    ];
    for (track, file, start, shown) in cases {
        check_shows(&meeting, track, meeting_of(shown), file, (shown - start) as u64, &out)?;
    }
    // Nothing where nothing was recorded: alice between her two files, bob before he started.
    ensure!(
        snapshot(&meeting, "Alice_Example_camera", meeting_of(10_000), &out)?.is_none(),
        "alice's camera shows between its files"
    );
    ensure!(
        snapshot(&meeting, "Bob_camera", meeting_of(19_000), &out)?.is_none(),
        "bob's camera shows before it started"
    );

    // From a peer, each of the camera's two files whole (`fetch --file N`), byte for byte the
    // files the events name; a file the track does not have is refused by its number.
    let keys = tempfile::tempdir()?;
    let served = common::serve(root.path(), keys.path())?;
    let target = format!("{}/class-1/Alice_Example_camera", served.id52);
    let fetch = |file: u32, part: &Path| {
        let file = file.to_string();
        run(&["fetch", &target, "--file", &file, "--range", "0-", "--addr", &served.addr, "-o", &s(part)])
    };
    for (file, source) in [(0, &bbb.alice_1), (1, &bbb.alice_2)] {
        let part = root.path().join(format!("alice-{file}.bin"));
        let fetched = fetch(file, &part)?;
        ensure!(
            fetched.status.success(),
            "fetch --file {file}: {}",
            String::from_utf8_lossy(&fetched.stderr)
        );
        ensure!(
            std::fs::read(&part)? == std::fs::read(source)?,
            "file {file} of alice's camera from the peer is not {}",
            source.display()
        );
    }
    let missing = fetch(2, &root.path().join("alice-2.bin"))?;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    ensure!(!missing.status.success() && stderr.contains("no file 2"), "fetch --file 2: {stderr}");
    Ok(())
}

/// Where the camera's stretch before a recording pause is followed at once by its stretch
/// after it (two adjacent segments of one file), an export (which plays on, where snapshots
/// seek) shows no frame the second segment decodes only as a reference, and no frame early.
#[test]
fn an_export_across_a_recording_pause_shows_each_frame_where_the_events_put_it() -> Result<()> {
    let root = tempfile::tempdir()?;
    let bbb = bbb::write(root.path())?;
    let meeting = root.path().join("class-1");
    let output = run(&["import", &s(&bbb.dir), "-o", &s(&meeting)])?;
    ensure!(output.status.success(), "import failed: {}", String::from_utf8_lossy(&output.stderr));
    let out = root.path().join("png");
    std::fs::create_dir_all(&out)?;
    // An export across the pause shows, in every frame of the restarted camera's file, the
    // frame the events put at that meeting time (clip time + from).
    let clip = out.join("clip.mp4");
    let export = run(&[
        "export",
        &s(&meeting),
        "--from",
        "9",
        "--to",
        "13",
        "--track",
        "Alice_Example_camera",
        "-o",
        &s(&clip),
    ])?;
    ensure!(export.status.success(), "export failed: {}", String::from_utf8_lossy(&export.stderr));
    let alice_2 = stamps_of(&bbb.alice_2)?;
    let mut checked = 0;
    for frame in tandem_fixtures::decode::decode_video_frames(&clip)? {
        let at = 9000 + frame.pts.mseconds() as i64;
        if !(meeting_of(11_000) as i64..13_000).contains(&at) {
            continue;
        }
        // Back to the event clock: before the pause (kept from 1000) or after it (from 18000).
        let event = if at < meeting_of(13_000) as i64 {
            at + KEPT[0].0
        } else {
            at - meeting_of(13_000) as i64 + KEPT[1].0
        };
        let want = stamp_at(&alice_2, (event - 11_000) as u64).context("no frame")?;
        let got = tandem_fixtures::stamp::read_stamp(&frame.luma, frame.width, frame.width, frame.height)
            .with_context(|| format!("clip frame at {at} ms without a stamp"))?;
        ensure!(
            got.abs_diff(want) <= 40,
            "the clip at meeting {at} ms shows {got}, the events put {want} there"
        );
        checked += 1;
    }
    ensure!(checked >= 50, "only {checked} clip frames of the restarted camera");
    Ok(())
}

#[test]
fn a_bigbluebutton_events_file_cut_short_is_refused_with_its_line() -> Result<()> {
    let root = tempfile::tempdir()?;
    let bbb = bbb::write(root.path())?;
    let events = bbb.dir.join("events.xml");
    let text = std::fs::read_to_string(&events)?;
    // Cut at the start of the line of the first stop event, as a full disk would leave it.
    let stop = text.find("eventname=\"StopWebRTCShareEvent\"").context("no stop event")?;
    let cut = &text[..text[..stop].rfind('\n').context("no line")? + 1];
    std::fs::write(&events, cut)?;
    let meeting = root.path().join("cut");
    let output = run(&["import", &s(&bbb.dir), "-o", &s(&meeting)])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(1), "a cut events.xml imported: {stderr}");
    let lines = cut.lines().count();
    ensure!(
        stderr.starts_with("error:")
            && stderr.contains(&format!("events.xml:{lines}:"))
            && stderr.contains("cut short"),
        "{stderr}"
    );
    ensure!(!meeting.exists(), "a failed import left {}", meeting.display());
    // A file an event names but the folder lacks: the event and the file are named.
    std::fs::write(&events, text)?;
    std::fs::remove_file(&bbb.bob)?;
    let output = run(&["import", &s(&bbb.dir), "-o", &s(&meeting)])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1)
            && stderr.contains("StartWebRTCShareEvent")
            && stderr.contains("medium-w_bob"),
        "{stderr}"
    );
    ensure!(!meeting.exists(), "a failed import left {}", meeting.display());
    Ok(())
}

#[test]
fn import_refuses_an_output_that_exists() -> Result<()> {
    let root = tempfile::tempdir()?;
    let bbb = bbb::write(root.path())?;
    let meeting = root.path().join("taken");
    std::fs::create_dir(&meeting)?;
    std::fs::write(meeting.join("keep.txt"), "mine")?;
    let output = run(&["import", &s(&bbb.dir), "-o", &s(&meeting)])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1) && stderr.starts_with("error:") && stderr.contains("already exists"),
        "{stderr}"
    );
    ensure!(
        std::fs::read_to_string(meeting.join("keep.txt"))? == "mine"
            && !meeting.join("meeting.json").exists(),
        "the existing folder was touched"
    );
    Ok(())
}

// ---- LiveKit ------------------------------------------------------------------------------

#[test]
fn livekit_track_egress_imports_by_each_files_media_start() -> Result<()> {
    let root = tempfile::tempdir()?;
    let layout = livekit::write(root.path())?;
    let (dir, cam, screen) = (&layout.dir, &layout.cam, &layout.screen);
    let meeting = root.path().join("standup");
    let output = run(&["import", &s(dir), "-o", &s(&meeting)])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "import failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    eprintln!("{stdout}");
    for want in [
        "layout: LiveKit track egress",
        "participants:",
        "track carol_camera video camera carol",
        "track carol_screen video screen carol",
        "track dave_mic audio microphone dave",
        "note: TR_AMic3",
    ] {
        ensure!(stdout.contains(want), "import printed no {want:?}:\n{stdout}");
    }
    // Zero is the earliest start: the microphone's request time (it has no EgressInfo).
    let zero = layout.mic_requested_ns;
    let at = |ns: i128| ((ns - zero) / 1_000_000) as u64;
    let out = root.path().join("png");
    std::fs::create_dir_all(&out)?;
    for (track, file, media_start, shown_ms) in [
        ("carol_camera", cam, layout.cam_start_ns, 3_000u64),
        ("carol_camera", cam, layout.cam_start_ns, 17_250),
        ("carol_screen", screen, layout.screen_start_ns, 9_000),
    ] {
        let start = at(media_start);
        check_shows(&meeting, track, shown_ms, file, shown_ms - start, &out)?;
    }
    ensure!(
        snapshot(&meeting, "carol_screen", at(layout.screen_start_ns) - 200, &out)?.is_none(),
        "the screen shows before its media starts"
    );
    let play = run(&["play", &s(&meeting), "--headless", "--at", "2", "--for", "3"])?;
    ensure!(play.status.success(), "play failed: {}", String::from_utf8_lossy(&play.stderr));
    Ok(())
}

// ---- Any other recorder -------------------------------------------------------------------

#[test]
fn files_of_any_recorder_import_at_the_offsets_given() -> Result<()> {
    let root = tempfile::tempdir()?;
    let fixtures = tandem_tests::fixture_meeting("meeting");
    let cam = fixtures.join("bob_video.webm");
    let meeting = root.path().join("by-hand");
    let output = run(&[
        "import",
        "-o",
        &s(&meeting),
        "--track",
        &format!("cam={}@1:02.5", s(&cam)),
        "--track",
        &format!("room={}@1500ms", s(&fixtures.join("mixed_audio.ogg"))),
        "--participant",
        "cam=Erin",
    ])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "import failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    ensure!(
        stdout.contains("track cam video camera Erin") && stdout.contains("track room audio microphone"),
        "{stdout}"
    );
    let out = root.path().join("png");
    std::fs::create_dir_all(&out)?;
    check_shows(&meeting, "cam", 70_000, &cam, 70_000 - 62_500, &out)?;
    ensure!(snapshot(&meeting, "cam", 62_000, &out)?.is_none(), "the camera shows before its offset");
    let bad =
        run(&["import", "-o", &s(&root.path().join("bad")), "--track", &format!("cam={}@soon", s(&cam))])?;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        bad.status.code() == Some(1) && stderr.starts_with("error:") && stderr.contains("soon"),
        "{stderr}"
    );
    Ok(())
}
