//! The committed fixture meetings served over loopback: every track byte-identical, and indexes
//! built over the network equal to local ones (same info, keyframes, bytes and reads).
//! Fails loudly when `fixtures/meeting` or `fixtures/meeting-webrtc` is missing.

mod net_common;

use net_common::*;
use rand::{Rng, SeedableRng};
use tandem::index::TrackIndex;
use tandem::net::RemoteTrack;
use tandem::{FileSource, RangeSource};

const MEETINGS: &[&str] = &["meeting", "meeting-webrtc"];

/// Every (meeting, remote track, local file source) of the fixtures.
async fn fixture_tracks() -> (tandem::net::ServerHandle, Vec<(String, RemoteTrack, FileSource)>) {
    let root = fixture_root(MEETINGS);
    let server = serve(&root).await;
    let client = client().await;
    let peer = peer_of(&server);
    let mut out = Vec::new();
    for meeting in MEETINGS {
        let info = client.get(&peer, meeting).await.expect("get fixture meeting");
        let manifest = tandem::manifest::Manifest::load(&root.join(meeting)).expect("manifest");
        assert_eq!(info.tracks.len(), manifest.tracks.len());
        for track in &manifest.tracks {
            let remote = RemoteTrack::new(client.clone(), peer.clone(), &info, &track.name).expect("remote");
            let local = FileSource::open(root.join(meeting).join(track.file())).expect("local file");
            assert_eq!(remote.len(), local.len(), "{meeting}/{}", track.name);
            out.push((format!("{meeting}/{}", track.name), remote, local));
        }
    }
    (server, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_track_reads_byte_identical() {
    bounded(120, async {
        let (server, tracks) = fixture_tracks().await;
        assert!(!tracks.is_empty());
        tokio::task::spawn_blocking(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(11);
            for (name, remote, local) in &tracks {
                let size = local.len();
                assert_eq!(
                    remote.read_range(0, size).expect("whole"),
                    local.read_range(0, size).expect("local"),
                    "{name}"
                );
                for _ in 0..30 {
                    let start = rng.gen_range(0..size);
                    let len = rng.gen_range(1..=(size - start).min(300_000));
                    assert_eq!(
                        remote.read_range(start, len).expect("remote"),
                        local.read_range(start, len).expect("local"),
                        "{name} {start}+{len}"
                    );
                }
            }
        })
        .await
        .expect("reads");
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_built_over_the_network_equals_the_local_one() {
    bounded(180, async {
        let (server, tracks) = fixture_tracks().await;
        tokio::task::spawn_blocking(move || {
            for (name, remote, local) in &tracks {
                let over_net = TrackIndex::open(name, remote).expect("remote index");
                let on_disk = TrackIndex::open(name, local).expect("local index");
                assert_eq!(over_net.info(), on_disk.info(), "{name}");
                assert_eq!(over_net.open_cost(), on_disk.open_cost(), "{name}: same bytes and reads");
                assert_eq!(
                    over_net.keyframes(remote).expect("remote keyframes"),
                    on_disk.keyframes(local).expect("local keyframes"),
                    "{name}"
                );
            }
        })
        .await
        .expect("indexes");
        server.shutdown().await;
    })
    .await;
}
