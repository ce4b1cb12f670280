//! `meeting-replay` over our own relay and pkarr relay, as a person without n0 would run it:
//! `serve --relay URL --pkarr URL` on one side, `play <id52>/<meeting>` with the same flags and
//! no `--addr` on the other. The two sides run in network namespaces with no route to each
//! other (`tandem_tests::internet`), so the client finds the server through the pkarr relay
//! only, and every byte of the meeting crosses the relay, whose own counters say how many.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::Child;
use tandem_tests::internet::{Hub, Peer};
use tandem_tests::process::run_bounded;

const BIN: &str = env!("CARGO_BIN_EXE_meeting-replay");

/// `meeting-replay args` in `peer`, killed if it runs past `limit`.
fn run_in(hub: &Hub, peer: &Peer, args: &[&str], limit: Duration) -> Result<Output> {
    let mut command = hub.command(peer, BIN);
    command.args(args).env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
    run_bounded(command, limit).with_context(|| format!("meeting-replay {args:?}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Starts `serve` in peer a and returns it with its ID52 (from its first line).
fn serve(hub: &Hub, root: &Path, key: &Path) -> Result<(Child, String)> {
    let (relay, pkarr) = (hub.relay_url(), hub.pkarr_url());
    let mut command = hub.command(&hub.a, BIN);
    command
        .args(["serve", &root.to_string_lossy(), "--key", &key.to_string_lossy()])
        .args(["--relay", &relay, "--pkarr", &pkarr]);
    let (child, id52, _) = common::start_serve(command)?;
    Ok((child, id52))
}

#[test]
fn play_by_id52_alone_finds_the_server_through_pkarr_and_plays_through_the_relay() -> Result<()> {
    let hub = Hub::start()?;
    let fixtures = tandem_tests::fixture_meeting("meeting").parent().context("fixtures")?.to_path_buf();
    let tmp = tempfile::tempdir()?;
    let (_server, id52) = serve(&hub, &fixtures, &tmp.path().join("server.key"))?;
    let published = hub.wait_published(&id52, Duration::from_secs(15))?;
    ensure!(published.starts_with(&hub.relay_url()), "serve published relay {published}");

    // The direct path does not exist: b has no route to a.
    let route = hub.command(&hub.b, "ip").args(["route", "get", &hub.a.addr.to_string()]).output()?;
    ensure!(!route.status.success(), "b has a route to a: {}", text(&route));

    let (relay, pkarr) = (hub.relay_url(), hub.pkarr_url());
    let target = format!("{id52}/meeting");
    let before = hub.relayed_bytes();
    let args =
        ["play", &target, "--headless", "--at", "5", "--for", "4", "--relay", &relay, "--pkarr", &pkarr];
    let out = run_in(&hub, &hub.b, &args, Duration::from_secs(30))?;
    let all = text(&out);
    ensure!(out.status.success(), "play through the relay failed:\n{all}");
    ensure!(all.contains("at 0:05.000 in"), "play did not start at 0:05:\n{all}");
    ensure!(all.contains("stopped at 0:09"), "play did not reach 0:09:\n{all}");
    let relayed = hub.relayed_bytes() - before;
    // Four seconds of the meeting's tracks at 0.52 Mbit/s, plus their indexes: well over 200 kB.
    ensure!(relayed > 200_000, "the relay passed only {relayed} bytes while playing:\n{all}");
    println!("play: the relay passed {relayed} bytes");

    // A whole track, byte for byte, and the client's own word on the path it took.
    let part = tmp.path().join("bob.webm");
    let before = hub.relayed_bytes();
    let track = format!("{target}/bob_video");
    let args = [
        "fetch",
        &track,
        "--range",
        "0-",
        "-o",
        &part.to_string_lossy(),
        "--relay",
        &relay,
        "--pkarr",
        &pkarr,
    ];
    let out = run_in(&hub, &hub.b, &args, Duration::from_secs(20))?;
    let all = text(&out);
    ensure!(out.status.success(), "fetch through the relay failed:\n{all}");
    let fetched = std::fs::read(&part)?;
    ensure!(fetched == std::fs::read(fixtures.join("meeting/bob_video.webm"))?, "fetched bytes differ");
    // `relay(URL)`, or `mixed(udp: ADDR, relay: URL)` while iroh still tries a's address, which
    // has no route from b: never `direct(..)`.
    let via_relay = all.contains(&format!("path relay({relay}")) || all.contains(&format!("relay: {relay}"));
    ensure!(via_relay && !all.contains("path direct("), "fetch did not report the relay path:\n{all}");
    let relayed = hub.relayed_bytes() - before;
    ensure!(
        relayed >= fetched.len() as u64,
        "the relay passed {relayed} bytes for a {} byte track",
        fetched.len()
    );
    println!(
        "fetch: {} bytes, the relay passed {relayed}; {}",
        fetched.len(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[test]
fn bad_relay_and_pkarr_urls_are_named() -> Result<()> {
    for (flag, value) in [("--relay", "relay.example.org"), ("--pkarr", "ftp://dns.example.org")] {
        let out = common::meeting_replay()
            .args(["info", "KEEP5JK4BQP4BZIAVCTFRB2IRVOITJA6VC0HHB9NO7A4GJOUI6BG/meeting", flag, value])
            .output()?;
        let all = text(&out);
        ensure!(out.status.code() == Some(1), "{flag} {value}: exited {:?}:\n{all}", out.status);
        ensure!(
            all.contains(&format!("{value:?}")) && all.contains("URL"),
            "{flag} {value}: unclear error:\n{all}"
        );
    }
    Ok(())
}
