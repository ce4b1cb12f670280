//! Shared helpers for the `net_*` tests: a meeting folder of pseudo-random files, a loopback
//! server and client, and a bound on every test's run time.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tandem::net::{Client, FolderProvider, PeerAddr, ServerHandle};

pub const MEETING: &str = "m1";

/// A served root with one meeting, `m1`, and the bytes of each of its tracks.
pub struct TestRoot {
    pub dir: tempfile::TempDir,
    pub tracks: BTreeMap<String, Vec<u8>>,
}

impl TestRoot {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn bytes(&self, track: &str) -> &[u8] {
        self.tracks.get(track).map(Vec::as_slice).unwrap_or_default()
    }
}

/// Track name and size: 0.5-3 MiB, odd sizes so the last range is short, plus a tiny file.
pub const TRACK_SIZES: &[(&str, usize)] =
    &[("cam_a", 512 * 1024 + 17), ("cam_b", 1_300_000), ("screen", 3 * 1024 * 1024 - 5), ("captions", 1000)];

pub fn make_root(seed: u64) -> TestRoot {
    let dir = tempfile::tempdir().expect("tempdir");
    let meeting = dir.path().join(MEETING);
    std::fs::create_dir(&meeting).expect("meeting dir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tracks = BTreeMap::new();
    let mut entries = Vec::new();
    for (i, (name, size)) in TRACK_SIZES.iter().enumerate() {
        let mut bytes = vec![0u8; *size];
        rng.fill(&mut bytes[..]);
        let file = format!("{name}.bin");
        std::fs::write(meeting.join(&file), &bytes).expect("write track");
        let kind = if *name == "captions" { "captions" } else { "video" };
        entries.push(serde_json::json!({
            "name": name, "kind": kind, "role": "camera", "participant": format!("p{i}"),
            "segments": [{"file": file, "start_ms": i as u64 * 1000}],
        }));
        tracks.insert(name.to_string(), bytes);
    }
    let manifest = serde_json::json!({"name": MEETING, "duration_ms": 60_000, "tracks": entries});
    std::fs::write(meeting.join("meeting.json"), manifest.to_string()).expect("manifest");
    TestRoot { dir, tracks }
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A loopback server for `root` (relays and discovery off).
pub async fn serve(root: &Path) -> ServerHandle {
    FolderProvider::new(root)
        .expect("provider")
        .server_builder()
        .bind(loopback())
        .spawn()
        .await
        .expect("server")
}

/// A loopback client.
pub async fn client() -> Client {
    Client::builder()
        .bind(loopback())
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(20))
        .spawn()
        .await
        .expect("client")
}

/// The server's ID52 and its IPv4 loopback address.
pub fn peer_of(server: &ServerHandle) -> PeerAddr {
    let addr = server.bound_addrs().into_iter().find(SocketAddr::is_ipv4).expect("an IPv4 socket");
    PeerAddr::new(server.id52(), Some(addr))
}

/// Runs a test body with a deadline so nothing hangs forever.
pub async fn bounded<F: Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body).await.expect("test exceeded its time bound");
}

/// The committed fixture root (`<workspace>/fixtures`), failing loudly when a meeting is missing.
pub fn fixture_root(meetings: &[&str]) -> PathBuf {
    let root = tandem_tests::workspace_root().join("fixtures");
    for m in meetings {
        let manifest = root.join(m).join("meeting.json");
        assert!(
            manifest.is_file(),
            "fixture {} is missing: generate the committed fixtures (fixtures/{m}) first",
            manifest.display()
        );
    }
    root
}
