//! `meeting-replay play` as a person uses it: in a real terminal (tmux) with a real X server
//! (Xvfb). Keys go in with `send-keys`, the screen comes back with `capture-pane`, and the
//! grid window is read back from a screenshot's pixels.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{Screenshot, Tmux, Xvfb};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;

/// The cursor the screen's first line shows (`... | 0:13.4 / 1:00.0 | playing 1.00x`).
fn cursor(screen: &str) -> Result<MediaTime> {
    let first = screen.lines().next().unwrap_or_default();
    let time = first.split(" | ").nth(2).and_then(|t| t.split(" / ").next());
    time.and_then(MediaTime::parse).with_context(|| format!("no cursor in {first:?}"))
}

fn line_of<'a>(screen: &'a str, track: &str) -> &'a str {
    screen.lines().find(|l| l.contains(track)).unwrap_or_default()
}

/// The pane's command line: play, then show the exit status and the terminal's modes.
fn play_command(display: &str, args: &str) -> String {
    format!(
        "DISPLAY={display} {} play {args}; echo EXIT=$?; stty -a; sleep 60",
        env!("CARGO_BIN_EXE_meeting-replay")
    )
}

/// After the program ended: it exited 0, and the terminal is back in cooked mode with echo.
fn restored(screen: &str) -> bool {
    screen.contains("EXIT=0")
        && screen.contains(" icanon")
        && !screen.contains("-icanon")
        && !screen.contains("-echo ")
}

const WAIT: Duration = Duration::from_secs(20);

/// One X server at a time: two started at once were seen to race for a display, and one
/// test's window then failed to open ("Could not initialise X output").
static ONE_DISPLAY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn display() -> Result<(std::sync::MutexGuard<'static, ()>, Xvfb)> {
    let guard = ONE_DISPLAY.lock().unwrap_or_else(|e| e.into_inner());
    Ok((guard, Xvfb::start()?))
}

#[test]
fn keys_drive_the_player_the_window_shows_the_grid_and_q_restores_the_terminal() -> Result<()> {
    let (_one, x) = display()?;
    let dir = fixture_meeting("meeting");
    let term = Tmux::start(&play_command(&x.display, &format!("{} --at 12", dir.display())), 150, 30)?;
    let screen = term.wait_for("the player", |s| s.contains("playing 1.00x"), WAIT)?;
    if tandem::player::sound_output().is_none() {
        // No sound device here (CI): play goes on and says so.
        ensure!(screen.contains("status: no sound device"), "no word of the missing sound device:\n{screen}");
    }
    for track in ["alice_video", "bob_video", "screen_share", "mixed_audio", "captions"] {
        ensure!(line_of(&screen, track).contains('*'), "{track} is not listed as playing:\n{screen}");
    }

    // The window: alice, bob and the screen share in their tiles, at the same instant. Five
    // screenshots 200 ms apart: the live grid may lag a tile by a few frames for a moment when
    // the machine is loaded, so the typical (median) disagreement must be within a frame and
    // none beyond 150 ms.
    std::thread::sleep(Duration::from_millis(1500));
    let saved = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grid-window.png");
    let mut window = None;
    let mut spreads = Vec::new();
    for _ in 0..5 {
        let shot = Screenshot::take(&x.display)?;
        shot.save_png(&saved)?;
        // alice (640x360) at the window's origin, bob to her right, the screen share (1280x720
        // shown at half size) below her. Find the window by alice's stamp.
        let origin = window.or_else(|| {
            (0..200)
                .flat_map(|y| (0..200).map(move |x| (x, y)))
                .find(|&(x, y)| shot.stamp_at(x, y, 16).is_some_and(|s| (12_000..20_000).contains(&s)))
        });
        let Some((wx, wy)) = origin else {
            anyhow::bail!("no alice tile in the screenshot ({})", saved.display())
        };
        window = Some((wx, wy));
        let stamps =
            (shot.stamp_at(wx, wy, 16), shot.stamp_at(wx + 640, wy, 16), shot.stamp_at(wx, wy + 360, 8));
        eprintln!("window at {wx},{wy}: alice, bob, screen share {stamps:?} ({})", saved.display());
        let (Some(alice), Some(bob), Some(share)) = stamps else {
            anyhow::bail!("a tile without a readable stamp: {stamps:?} ({})", saved.display());
        };
        // The screen share runs at 5 fps: it may show a frame up to 200 ms old.
        ensure!(alice.abs_diff(share) <= 250, "alice {alice} and the screen share {share} disagree");
        spreads.push(alice.abs_diff(bob));
        std::thread::sleep(Duration::from_millis(200));
    }
    spreads.sort();
    ensure!(spreads[2] <= 50 && spreads[4] <= 150, "alice and bob disagree by {spreads:?} ms");
    let (wx, wy) = window.unwrap_or_default();

    // SPACE pauses: the cursor stands still.
    term.keys(&["Space"])?;
    let paused = term.wait_for("pause", |s| s.contains("paused 1.00x"), WAIT)?;
    std::thread::sleep(Duration::from_millis(1000));
    let later = term.capture()?;
    ensure!(cursor(&paused)? == cursor(&later)?, "the cursor moved while paused:\n{paused}\n{later}");

    // Right seeks 5 s ahead.
    // (The status line may show buffering right after a seek: the cursor tells.)
    let before = cursor(&later)?;
    term.keys(&["Right"])?;
    let moved = |s: &str| cursor(s).is_ok_and(|t| t != before);
    let sought = term.wait_for("the seek", moved, WAIT)?;
    let after = cursor(&sought)?;
    ensure!(
        after.saturating_sub(before).as_millis().abs_diff(5000) <= 200,
        "Right went from {before} to {after}:\n{sought}"
    );

    // ] raises the rate; playing again, the cursor runs at it.
    term.keys(&["]", "]", "Space"])?;
    term.wait_for("1.5x", |s| s.contains("playing 1.50x"), WAIT)?;

    // 2 toggles bob off and on.
    term.keys(&["2"])?;
    let off = term.wait_for("bob off", |s| line_of(s, "bob_video").contains("off"), WAIT)?;
    ensure!(!line_of(&off, "bob_video").contains('*'), "bob still marked:\n{off}");
    // The grid re-lays itself for two tracks: two 640x720 tiles side by side, each picture
    // centred in its tile (alice at 640x360, the screen share at half size).
    std::thread::sleep(Duration::from_millis(800));
    let two = Screenshot::take(&x.display)?;
    let (alice, share) = (two.stamp_at(wx, wy + 180, 16), two.stamp_at(wx + 640, wy + 180, 8));
    let (Some(alice), Some(share)) = (alice, share) else {
        two.save_png(&saved)?;
        anyhow::bail!("after bob left: alice {alice:?}, screen share {share:?} ({})", saved.display());
    };
    ensure!(alice.abs_diff(share) <= 250, "alice {alice} and the screen share {share} disagree");
    term.keys(&["2"])?;
    term.wait_for("bob on", |s| line_of(s, "bob_video").contains("* bob_video"), WAIT)?;

    // c hides the captions; g goes to a typed time.
    term.keys(&["c"])?;
    term.wait_for("captions off", |s| s.contains("caption: (captions off)"), WAIT)?;
    term.keys(&["g", "4", "0", "Enter"])?;
    let near_40 = |s: &str| cursor(s).is_ok_and(|t| (40_000..43_000).contains(&t.as_millis()));
    term.wait_for("go to 40", near_40, WAIT)?;

    // q quits and gives the terminal back.
    term.keys(&["q"])?;
    let end = term.wait_for("the exit", restored, WAIT)?;
    ensure!(end.contains("stopped at 0:4"), "no last position:\n{end}");
    Ok(())
}

#[test]
fn a_remote_meeting_shows_the_link_and_sigint_restores_the_terminal() -> Result<()> {
    let (_one, x) = display()?;
    let dir = fixture_meeting("meeting-webrtc");
    let keys = tempfile::tempdir()?;
    let served = common::serve(dir.parent().unwrap_or(Path::new(".")), keys.path())?;
    let target = format!("{}/meeting-webrtc --addr {}", served.id52, served.addr);
    let term = Tmux::start(&play_command(&x.display, &target), 120, 30)?;
    let screen = term.wait_for(
        "the link's figures",
        |s| s.contains("(remote)") && s.contains("playing 1.00x") && s.contains("KB/s, round trip"),
        WAIT,
    )?;
    let link = screen.lines().find(|l| l.starts_with("link: ")).unwrap_or_default();
    ensure!(!link.starts_with("link: 0 KB/s"), "no throughput measured: {link}");
    let shell = term.pane_pid()?;
    let player = children_of(shell).into_iter().next().context("no meeting-replay under the pane's shell")?;
    let out = std::process::Command::new("sh").args(["-c", &format!("kill -INT {player}")]).status()?;
    ensure!(out.success(), "kill -INT {player} failed");
    let end = term.wait_for("the exit", restored, WAIT)?;
    ensure!(end.contains("stopped at"), "{end}");
    Ok(())
}

/// Processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the comm may hold spaces, so count from its ')'.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
            after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}
