//! A loopback peer serving meeting folders, and a client: the P2P side of the benchmarks.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tandem::net::{Client, FolderProvider, PeerAddr, ServerHandle};
use tandem::player::Meeting;

/// A server for the folders under `root` and a client of it, on loopback (relays and discovery
/// off), driven by `runtime`.
#[derive(Debug)]
pub struct Loopback {
    pub runtime: tokio::runtime::Runtime,
    pub server: ServerHandle,
    pub client: Client,
    pub peer: PeerAddr,
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

impl Loopback {
    pub fn serve(root: &Path) -> Result<Loopback> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let (server, client) = runtime.block_on(async {
            let server = FolderProvider::new(root)?.server_builder().bind(loopback()).spawn().await?;
            anyhow::Ok((server, new_client().await?))
        })?;
        let addr = server.bound_addrs().into_iter().find(SocketAddr::is_ipv4).context("an IPv4 address")?;
        let peer = PeerAddr::new(server.id52(), Some(addr));
        Ok(Loopback { runtime, server, client, peer })
    }

    /// `stream` on the peer, read through `client` (one `stream.get`).
    pub fn meeting(&self, client: &Client, stream: &str) -> Result<Meeting> {
        Ok(self.runtime.block_on(Meeting::from_peer(client, &self.peer, stream))?)
    }

    /// A fresh client (bound, not yet connected).
    pub fn fresh_client(&self) -> Result<Client> {
        self.runtime.block_on(new_client())
    }

    pub fn shutdown(self) {
        self.runtime.block_on(async {
            self.client.close().await;
            self.server.shutdown().await;
        });
    }
}

async fn new_client() -> Result<Client> {
    Ok(Client::builder()
        .bind(loopback())
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(20))
        .spawn()
        .await?)
}
