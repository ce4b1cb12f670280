//! Each error a person can run into, provoked: `meeting-replay` says what is wrong (and where,
//! and what to install) in one message, exits non-zero, and prints no backtrace even with
//! `RUST_BACKTRACE=1`.

mod common;

use std::path::Path;

use anyhow::{ensure, Result};
use common::meeting_replay;
use tandem_tests::fixture_meeting;

/// Runs `meeting-replay args`, expects a failure, and returns what it printed.
fn fails(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let mut command = meeting_replay();
    command.args(args).env("RUST_BACKTRACE", "1").env_remove("DISPLAY");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let all = format!("{}{stderr}", String::from_utf8_lossy(&output.stdout));
    ensure!(output.status.code() == Some(1), "{args:?} exited {:?}:\n{all}", output.status);
    ensure!(stderr.contains("error: "), "{args:?}: no error message:\n{all}");
    ensure!(
        !all.contains("backtrace") && !all.contains("panicked") && !all.contains(" at ./"),
        "{args:?} printed a backtrace or panicked:\n{all}"
    );
    Ok(all)
}

fn expect(all: &str, parts: &[&str]) -> Result<()> {
    for part in parts {
        ensure!(all.contains(part), "the message lacks {part:?}:\n{all}");
    }
    Ok(())
}

#[test]
fn a_wrong_id52_an_unknown_folder_and_an_unknown_track_are_named() -> Result<()> {
    let all = fails(&["play", "notanid52/standup", "--headless"], &[])?;
    expect(&all, &["\"notanid52\" is not an ID52"])?;
    let all = fails(&["play", "/no/such/meeting", "--headless"], &[])?;
    expect(&all, &["/no/such/meeting: no such meeting folder"])?;
    let dir = fixture_meeting("meeting");
    let dir = dir.to_string_lossy();
    let all = fails(&["play", &dir, "--track", "carol_video", "--headless"], &[])?;
    expect(&all, &["no track \"carol_video\"", "alice_video"])?;
    let all = fails(
        &["export", &dir, "--from", "1", "--to", "2", "--track", "carol_video", "-o", "/tmp/x.mp4"],
        &[],
    )?;
    expect(&all, &["no track named \"carol_video\""])?;
    Ok(())
}

#[test]
fn a_meeting_the_peer_lacks_and_an_unreachable_peer_are_named() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let keys = tempfile::tempdir()?;
    let served = common::serve(dir.parent().unwrap_or(Path::new(".")), keys.path())?;
    let all = fails(&["play", &format!("{}/retro", served.id52), "--addr", &served.addr, "--headless"], &[])?;
    expect(&all, &["no stream \"retro\""])?;
    let (id52, addr) = (served.id52.clone(), served.addr.clone());
    drop(served);
    let all = fails(&["play", &format!("{id52}/meeting"), "--addr", &addr, "--headless"], &[])?;
    expect(&all, &["connecting to", "no answer"])?;
    Ok(())
}

#[test]
fn a_corrupt_file_names_the_track_what_is_wrong_and_the_byte() -> Result<()> {
    let out = tempfile::tempdir()?;
    let copy = out.path().join("meeting");
    std::fs::create_dir(&copy)?;
    for entry in std::fs::read_dir(fixture_meeting("meeting"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), copy.join(entry.file_name()))?;
    }
    // alice's sample table claims four billion samples.
    let path = copy.join("alice_video.mp4");
    let mut bytes = std::fs::read(&path)?;
    let at = bytes.windows(4).position(|w| w == b"stsz").ok_or_else(|| anyhow::anyhow!("no stsz"))?;
    bytes[at + 12..at + 16].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    std::fs::write(&path, bytes)?;
    let stsz_count_at = (at + 12).to_string();
    let copy = copy.to_string_lossy();
    let all = fails(
        &["export", &copy, "--from", "1", "--to", "2", "-o", &format!("{}/x.mp4", out.path().display())],
        &[],
    )?;
    expect(&all, &["alice_video", "stsz", &format!("byte {stsz_count_at}")])?;
    // play goes on with the other tracks, says which one it lost and why, and exits 1.
    let all = fails(&["play", &copy, "--for", "1"], &[])?;
    expect(&all, &["track alice_video failed", "stsz", "without alice_video", "stopped at"])?;
    Ok(())
}

#[test]
fn a_missing_gstreamer_plugin_names_the_debian_package() -> Result<()> {
    // A plugin folder with GStreamer's core and base plugins only: no libav, no good plugins.
    let out =
        std::process::Command::new("pkg-config").args(["--variable=pluginsdir", "gstreamer-1.0"]).output()?;
    let system = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(out.status.success() && !system.is_empty(), "pkg-config knows no GStreamer plugin folder");
    let plugins = tempfile::tempdir()?;
    for name in
        ["coreelements", "app", "videoconvertscale", "audioconvert", "audioresample", "typefindfunctions"]
    {
        let file = format!("libgst{name}.so");
        std::os::unix::fs::symlink(Path::new(&system).join(&file), plugins.path().join(&file))?;
    }
    let registry = plugins.path().join("registry.bin");
    let env = [
        ("GST_PLUGIN_SYSTEM_PATH_1_0", plugins.path().to_str().unwrap_or_default()),
        ("GST_PLUGIN_PATH_1_0", ""),
        ("GST_REGISTRY_1_0", registry.to_str().unwrap_or_default()),
    ];
    let dir = fixture_meeting("meeting");
    let all = fails(&["play", &dir.to_string_lossy(), "--headless", "--for", "1"], &env)?;
    expect(&all, &["GStreamer element avdec_h264 is missing", "gstreamer1.0-libav"])?;
    Ok(())
}
