//! `meeting-replay serve s3://BUCKET[/PREFIX]` against a real S3 server (s3s-fs in-process on
//! loopback, `tandem_tests::s3`), configured the way a person would: the standard `AWS_*`
//! environment. Oracles: the fixture's own files, the same commands against `serve <folder>`
//! and against the folder itself, and the S3 server's request log.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{meeting_replay, Child};
use tandem_tests::fixture_meeting;
use tandem_tests::process::run_bounded;
use tandem_tests::s3::{stalled_endpoint, S3Server};

const BUCKET: &str = "meetings";
const PREFIX: &str = "recordings";

/// The S3 server with the fixture meeting at `s3://meetings/recordings/meeting/`.
fn bucket() -> Result<S3Server> {
    let s3 = S3Server::start()?;
    s3.create_bucket(BUCKET)?;
    s3.upload_folder(BUCKET, &format!("{PREFIX}/meeting"), &fixture_meeting("meeting"))?;
    Ok(s3)
}

/// `meeting-replay serve <root>` on loopback with `env`: the child, its ID52 and address.
fn serve(root: &str, env: &[(&'static str, String)], keys: &Path) -> Result<(Child, String, String)> {
    let mut command = meeting_replay();
    command
        .args(["serve", root, "--no-relay", "--bind", "127.0.0.1:0", "--key"])
        .arg(keys.join("server.key"));
    for (k, v) in env {
        command.env(k, v);
    }
    let (child, id52, lines) = common::start_serve(command)?;
    let addr = lines
        .iter()
        .find_map(|l| l.strip_prefix("listening on 127.0.0.1:").map(|port| format!("127.0.0.1:{port}")))
        .with_context(|| format!("no loopback address in {lines:?}"))?;
    let listed =
        |l: &String| l.strip_prefix("meetings: ").is_some_and(|m| m.split(", ").any(|m| m == "meeting"));
    ensure!(lines.iter().any(listed), "serve did not list the meeting: {lines:?}");
    Ok((child, id52, addr))
}

fn run(args: &[&str]) -> Result<Output> {
    Ok(meeting_replay()
        .args(args)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .output()?)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn tracks() -> Result<Vec<(String, String)>> {
    let manifest = tandem::manifest::Manifest::load(&fixture_meeting("meeting"))?;
    Ok(manifest.tracks.iter().map(|t| (t.name.clone(), t.file().to_string())).collect())
}

#[test]
fn serve_s3_fetch_of_each_track_equals_the_file_and_play_and_snapshot_match_the_folder() -> Result<()> {
    let s3 = bucket()?;
    let keys = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let (_s3_serve, s3_id, s3_addr) = serve(&format!("s3://{BUCKET}/{PREFIX}"), &s3.env(), keys.path())?;
    let fixtures = fixture_meeting("meeting").parent().context("fixtures")?.to_string_lossy().into_owned();
    let folder_keys = tempfile::tempdir()?;
    let (_folder_serve, folder_id, folder_addr) = serve(&fixtures, &[], folder_keys.path())?;

    // (1) every track, whole, through the S3-backed peer: the file's bytes.
    for (name, file) in tracks()? {
        let part = out.path().join(&file);
        let target = format!("{s3_id}/meeting/{name}");
        let fetched =
            run(&["fetch", &target, "--range", "0-", "--addr", &s3_addr, "-o", &part.to_string_lossy()])?;
        ensure!(fetched.status.success(), "fetch {name}: {}", text(&fetched));
        let expected = std::fs::read(fixture_meeting("meeting").join(&file))?;
        ensure!(std::fs::read(&part)? == expected, "{name}: fetched bytes differ from {file}");
    }

    // (2) headless play from either peer: the same start, captions and end.
    let play = |id: &str, addr: &str| -> Result<String> {
        let target = format!("{id}/meeting");
        let played = run(&["play", &target, "--addr", addr, "--headless", "--at", "9", "--for", "3"])?;
        let all = text(&played);
        ensure!(played.status.success(), "play from {addr} failed:\n{all}");
        ensure!(all.contains("at 0:09.000 in"), "{all}");
        ensure!(all.contains("seek benchmark"), "the caption current at 9.6 s was not printed:\n{all}");
        ensure!(all.contains("stopped at 0:12"), "{all}");
        Ok(all)
    };
    play(&s3_id, &s3_addr)?;
    play(&folder_id, &folder_addr)?;

    // Snapshots of the grid and of one track: the S3-backed peer, the folder-backed peer and
    // the folder itself give the same pixels.
    for (at, track) in [("28", None), ("33.5", Some("screen_share")), ("12", Some("alice_video"))] {
        let mut images = Vec::new();
        for (label, target, addr) in [
            ("s3", format!("{s3_id}/meeting"), Some(&s3_addr)),
            ("folder-peer", format!("{folder_id}/meeting"), Some(&folder_addr)),
            ("folder", fixture_meeting("meeting").to_string_lossy().into_owned(), None),
        ] {
            let png = out.path().join(format!("{label}-{at}.png"));
            let png_arg = png.to_string_lossy().into_owned();
            let mut args = vec!["snapshot", target.as_str(), "--at", at, "-o", png_arg.as_str()];
            if let Some(addr) = addr {
                args.extend(["--addr", addr.as_str()]);
            }
            if let Some(track) = track {
                args.extend(["--track", track]);
            }
            let shot = run(&args)?;
            ensure!(shot.status.success(), "snapshot {label} at {at}: {}", text(&shot));
            images.push((label, decode_png(&png)?));
        }
        let (first, rest) = images.split_first().context("images")?;
        for (label, pixels) in rest {
            ensure!(pixels == &first.1, "snapshot at {at} ({track:?}): {label} differs from {}", first.0);
        }
    }

    // The S3 server saw ranged GETs of every object, aligned to the provider's 256 KiB chunks.
    let gets = s3.range_gets();
    for (_, file) in tracks()? {
        ensure!(gets.keys().any(|(path, _)| path.ends_with(&file)), "no GET of {file}: {gets:?}");
    }
    ensure!(
        gets.keys().all(|(_, range)| range.starts_with("bytes=")
            && range[6..]
                .split('-')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s % (256 * 1024) == 0)),
        "unaligned GETs: {gets:?}"
    );
    Ok(())
}

fn decode_png(path: &Path) -> Result<Vec<u8>> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    buf.truncate(info.buffer_size());
    Ok(buf)
}

/// What `serve s3://...` says when the bucket or the endpoint is wrong: one message naming it,
/// exit 1, within the provider's deadline (5 s), not object_store's minutes of retries.
#[test]
fn serve_s3_names_a_missing_bucket_and_gives_up_on_a_stalled_endpoint_in_seconds() -> Result<()> {
    let s3 = bucket()?;
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("server.key");
    let serve_fails = |root: &str, env: &[(&'static str, String)]| -> Result<(String, Duration)> {
        let mut command = meeting_replay();
        command.args(["serve", root, "--no-relay", "--bind", "127.0.0.1:0", "--key"]).arg(&key);
        for (k, v) in env {
            command.env(k, v);
        }
        let started = Instant::now();
        let out = run_bounded(command, Duration::from_secs(30))?;
        let took = started.elapsed();
        ensure!(out.status.code() == Some(1), "serve {root} exited {:?}:\n{}", out.status, text(&out));
        ensure!(!text(&out).contains("panicked"), "{}", text(&out));
        Ok((text(&out), took))
    };

    let (all, _) = serve_fails("s3://no-such-bucket", &s3.env())?;
    ensure!(all.contains("bucket \"no-such-bucket\"") && all.contains("no such bucket"), "{all}");

    let stalled = stalled_endpoint()?;
    let mut env = s3.env();
    let endpoint = format!("http://{}", stalled.addr);
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", endpoint.clone()));
    let (all, took) = serve_fails(&format!("s3://{BUCKET}"), &env)?;
    ensure!(all.contains(&endpoint) && all.contains("no answer"), "{all}");
    ensure!(took < Duration::from_secs(9), "serve gave up after {took:?}:\n{all}");
    println!("stalled endpoint: {} after {took:?}", all.trim());

    // A meeting the bucket lacks: the client is told its name.
    let (_serve, id52, addr) = serve(&format!("s3://{BUCKET}/{PREFIX}"), &s3.env(), keys.path())?;
    let out = run(&["info", &format!("{id52}/retro"), "--addr", &addr])?;
    ensure!(!out.status.success() && text(&out).contains("no stream \"retro\""), "{}", text(&out));
    Ok(())
}
