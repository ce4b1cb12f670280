//! [`ServerHandle`]: a running server's identity and addresses, and its explicit shutdown.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use iroh::{Endpoint, NodeAddr, NodeId};
use tokio::sync::watch;

/// A running server. Dropping it leaves the server running until the runtime ends; call
/// [`ServerHandle::shutdown`] to stop it cleanly.
#[derive(Debug)]
pub struct ServerHandle {
    pub(super) id52: String,
    pub(super) endpoint: Endpoint,
    pub(super) shutdown_tx: watch::Sender<bool>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The server's public identity.
    pub fn id52(&self) -> &str {
        &self.id52
    }

    pub fn node_id(&self) -> NodeId {
        self.endpoint.node_id()
    }

    /// The local UDP sockets the endpoint is bound to.
    pub fn bound_addrs(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    /// Addresses a client on this machine or LAN can dial: the bound sockets, with an
    /// unspecified IP replaced by loopback, plus whatever interface addresses iroh has found.
    pub fn direct_addrs(&self) -> Vec<SocketAddr> {
        use iroh::Watcher as _;
        let mut out: Vec<SocketAddr> = Vec::new();
        for mut addr in self.endpoint.bound_sockets() {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        if let Some(found) = self.endpoint.direct_addresses().get() {
            for d in found {
                if !out.contains(&d.addr) {
                    out.push(d.addr);
                }
            }
        }
        out
    }

    /// Node id plus [`Self::direct_addrs`].
    pub fn node_addr(&self) -> NodeAddr {
        NodeAddr::new(self.node_id()).with_direct_addresses(self.direct_addrs())
    }

    /// Stops accepting, lets in-flight requests finish (up to the shutdown timeout), closes
    /// every connection and the endpoint.
    ///
    /// Returns once the UDP ports are free again (up to two seconds), so a restarted server
    /// can bind the same address.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.task.await;
        let sockets = self.endpoint.bound_sockets();
        self.endpoint.close().await;
        drop(self.endpoint);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for addr in sockets {
            while std::net::UdpSocket::bind(addr).is_err() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
