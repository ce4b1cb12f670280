//! The library's internet path with our own servers: a server publishes its address to a pkarr
//! relay and is reached through a relay, by a client that knows only its ID52. Server and
//! client sit in two network namespaces with no route to each other (see
//! `tandem_tests::internet`), so the bytes can only have come through the relay.

mod net_common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use net_common::{make_root, MEETING};
use tandem::net::{Client, ConnectionType, FolderProvider, PeerAddr, Reach};
use tandem_tests::internet::{enter_netns, in_netns, Hub};

/// A server for `root` in namespace `netns`, on a thread of its own, until `stop` fires.
fn serve_in(
    netns: &str,
    root: std::path::PathBuf,
    reach: Reach,
) -> Result<(String, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<Result<()>>)> {
    let (id_tx, id_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let netns = netns.to_string();
    let thread = std::thread::spawn(move || -> Result<()> {
        enter_netns(&netns)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let server = FolderProvider::new(&root)?.server_builder().reach(reach).spawn().await?;
            let _ = id_tx.send(server.id52().to_string());
            let _ = stop_rx.await;
            server.shutdown().await;
            Ok(())
        })
    });
    let id52 = id_rx.recv_timeout(Duration::from_secs(20)).context("the server did not start")?;
    Ok((id52, stop_tx, thread))
}

#[test]
fn a_client_with_only_an_id52_reads_through_our_own_relay_and_pkarr() -> Result<()> {
    let hub = Hub::start()?;
    let reach = Reach::custom(Some(&hub.relay_url()), Some(&hub.pkarr_url()))?;
    let root = make_root(41);
    let (id52, stop, server) = serve_in(&hub.a.netns, root.root().to_path_buf(), reach.clone())?;
    let published = hub.wait_published(&id52, Duration::from_secs(15))?;
    ensure!(
        published.starts_with(&hub.relay_url()),
        "published relay {published}, expected {}",
        hub.relay_url()
    );

    let before = hub.relayed_bytes();
    let expected = root.bytes("screen").to_vec();
    let (data, path) = in_netns(&hub.b.netns, move || async move {
        let client = Client::builder()
            .reach(reach)
            .connect_timeout(Duration::from_secs(15))
            .request_timeout(Duration::from_secs(20))
            .spawn()
            .await?;
        // No direct address: discovery must find the peer.
        let peer = PeerAddr::new(id52, None);
        let work = async {
            let remote = client.remote_track(&peer, MEETING, "screen").await?;
            let data = remote.read(0, tandem::RangeSource::len(&remote)).await?;
            anyhow::Ok((data, client.path(&peer).await))
        };
        let out =
            tokio::time::timeout(Duration::from_secs(30), work).await.context("the read took over 30 s")?;
        client.close().await;
        out
    })?;
    let relayed = hub.relayed_bytes() - before;
    println!("read {} bytes, the relay passed {relayed}; path {path:?}", data.len());
    let _ = stop.send(());
    server.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))??;

    ensure!(data.as_ref() == expected.as_slice(), "the bytes read differ from the file");
    // `Mixed` is iroh still trying the server's direct address, unconfirmed: here it has no
    // route. Either way no direct path was ever confirmed; the relay's count below is the proof.
    let via = match &path {
        Some(ConnectionType::Relay(url)) | Some(ConnectionType::Mixed(_, url)) => url.as_str(),
        _ => "",
    };
    ensure!(via.starts_with(&hub.relay_url()), "the connection's path is {path:?}, not our relay");
    ensure!(
        relayed >= expected.len() as u64,
        "the relay passed {relayed} bytes, fewer than the {} read",
        expected.len()
    );
    Ok(())
}
