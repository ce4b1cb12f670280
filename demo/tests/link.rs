//! `meeting-replay serve` and `fetch` as a person runs them on two machines, here two network
//! namespaces joined by a shaped link (`tandem_tests::link`): the bytes arrive whole, and the
//! far link costs whole round trips (issue 15 counted about 9 for a one-byte fetch).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use common::Child;
use tandem_tests::link::{Namespace, Shape, ShapedLink};

/// `meeting-replay serve <root>` inside `ns` on its address: the child, its ID52 and address.
fn serve_in(ns: &Namespace, root: &Path, key: &Path) -> Result<(Child, String, String)> {
    let mut command = ns.command(env!("CARGO_BIN_EXE_meeting-replay"));
    command
        .args([
            "serve",
            &root.to_string_lossy(),
            "--no-relay",
            "--bind",
            &format!("{}:0", ns.addr()),
            "--key",
        ])
        .arg(key);
    let (child, id52, lines) = common::start_serve(command)?;
    let prefix = format!("listening on {}:", ns.addr());
    match lines.iter().find(|l| l.starts_with(&prefix)) {
        Some(line) => Ok((child, id52, line.trim_start_matches("listening on ").to_string())),
        None => bail!("serve printed no address on {}: {lines:?}", ns.addr()),
    }
}

/// `meeting-replay fetch <id52>/meeting/alice_video --range 0-0` inside `ns`: its wall time
/// and the bytes it wrote.
fn fetch_in(ns: &Namespace, id52: &str, addr: &str, out: &Path) -> Result<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let output = ns
        .command(env!("CARGO_BIN_EXE_meeting-replay"))
        .args(["fetch", &format!("{id52}/meeting/alice_video"), "--range", "0-0", "--addr", addr, "-o"])
        .arg(out)
        .output()?;
    let took = start.elapsed();
    ensure!(output.status.success(), "fetch failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok((took, std::fs::read(out)?))
}

#[test]
fn fetch_through_a_far_link_costs_round_trips() -> Result<()> {
    let root = tandem_tests::workspace_root().join("fixtures");
    let first = std::fs::read(root.join("meeting/alice_video.mp4"))?[..1].to_vec();
    let dir = tempfile::tempdir()?;
    let link = ShapedLink::new(Shape::loopback())?;
    let (_server, id52, addr) = serve_in(link.b(), &root, &dir.path().join("server.key"))?;
    let out = dir.path().join("part.bin");
    let (on_loopback, bytes) = fetch_in(link.a(), &id52, &addr, &out)?;
    ensure!(bytes == first, "fetched {bytes:?}, the file starts with {first:?}");

    link.set_shape(Shape::far());
    let rtt = Shape::far().round_trip();
    let (on_far, bytes) = fetch_in(link.a(), &id52, &addr, &out)?;
    ensure!(bytes == first, "fetched {bytes:?} through the far link, the file starts with {first:?}");
    let round_trips = (on_far.as_secs_f64() - on_loopback.as_secs_f64()) / rtt.as_secs_f64();
    println!(
        "meeting-replay fetch --range 0-0: unshaped {:.0} ms, far {:.0} ms: {round_trips:.1} round trips of {} ms more",
        on_loopback.as_secs_f64() * 1e3,
        on_far.as_secs_f64() * 1e3,
        rtt.as_millis()
    );
    // The QUIC handshake, `stream.get` and the read: at least 3 round trips.
    ensure!(on_far >= on_loopback + rtt * 3, "the far link took {on_far:?}, loopback {on_loopback:?}");
    Ok(())
}
