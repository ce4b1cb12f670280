//! The internet path on one machine: our own relay and discovery servers, and two peers that
//! can reach each other only through them.
//!
//! [`Hub::start`] creates three network namespaces. In `hub` this process runs the real
//! servers, as a person would run them for their own network: an `iroh-relay` serving plain
//! HTTP (what `iroh-relay --dev` does) and an `iroh-dns-server` whose pkarr relay takes and
//! hands out signed address records over HTTP. Peers `a` and `b` are each joined to the hub by
//! a veth pair and have one route: to the hub's service address. Neither has a route to the
//! other, so whatever a and b exchange goes through the relay; a direct path cannot exist.
//! Commands run inside a peer with [`Hub::command`] (`ip netns exec`).
//!
//! Why namespaces: on loopback iroh finds the direct path by itself within a second, and iroh
//! 0.91's relay-only switch exists only under its `test-utils` feature, which a shipped binary
//! does not have. A network in which the direct path is missing proves the relay path as users
//! meet it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// The hub's service address, on its loopback interface; both peers route to it.
pub const HUB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The relay's port (`iroh-relay --dev` uses 3340).
pub const RELAY_PORT: u16 = 3340;
/// The pkarr relay's HTTP port.
pub const PKARR_PORT: u16 = 8080;
/// The DNS port of the same `iroh-dns-server` (unused by tandem, but the server needs one).
const DNS_PORT: u16 = 5300;

/// One peer namespace: its name and address.
#[derive(Debug, Clone)]
pub struct Peer {
    pub netns: String,
    pub addr: Ipv4Addr,
}

/// Running relay and pkarr servers in a namespace of their own, and two peer namespaces that
/// reach them but not each other. Dropping it stops the servers and deletes the namespaces.
#[derive(Debug)]
pub struct Hub {
    pub netns: String,
    pub a: Peer,
    pub b: Peer,
    servers: Option<RelayServers>,
}

/// iroh's relay and pkarr servers, run by this process on one address inside a namespace
/// (a thread there with its own runtime), until dropped.
#[derive(Debug)]
pub struct RelayServers {
    netns: String,
    addr: Ipv4Addr,
    relay_metrics: Arc<iroh_relay::server::Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// Moves the calling thread into network namespace `netns`: sockets it (and threads it starts)
/// open from now on live there.
pub fn enter_netns(netns: &str) -> Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("opening netns {netns}"))?;
    // SAFETY: setns on a valid namespace fd; it changes only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns into {netns}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Runs `f` on a thread of its own inside `netns`, with a current-thread tokio runtime.
pub fn in_netns<T, F, Fut>(netns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let inside = netns.to_string();
    std::thread::spawn(move || {
        enter_netns(&inside)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {netns} panicked"))?
}

impl Hub {
    /// Creates the namespaces and starts the servers (a second or less).
    pub fn start() -> Result<Hub> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let id = format!("tdm{}x{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
        let hub = format!("{id}hub");
        let a = Peer { netns: format!("{id}a"), addr: Ipv4Addr::new(10, 77, 1, 2) };
        let b = Peer { netns: format!("{id}b"), addr: Ipv4Addr::new(10, 77, 2, 2) };
        // From here on Drop cleans up whatever was made.
        let mut this = Hub { netns: hub.clone(), a: a.clone(), b: b.clone(), servers: None };
        for ns in [&hub, &a.netns, &b.netns] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &hub, "addr", "add", &format!("{HUB_ADDR}/32"), "dev", "lo"])?;
        for (peer, link, subnet) in [(&a, "to_a", 1), (&b, "to_b", 2)] {
            let gateway = format!("10.77.{subnet}.1");
            ip(&[
                "-n",
                &hub,
                "link",
                "add",
                link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &peer.netns,
            ])?;
            ip(&["-n", &hub, "addr", "add", &format!("{gateway}/24"), "dev", link])?;
            ip(&["-n", &hub, "link", "set", link, "up"])?;
            ip(&["-n", &peer.netns, "addr", "add", &format!("{}/24", peer.addr), "dev", "eth0"])?;
            ip(&["-n", &peer.netns, "link", "set", "eth0", "up"])?;
            // The hub only: no default route, so the other peer's subnet is unreachable.
            ip(&["-n", &peer.netns, "route", "add", &format!("{HUB_ADDR}/32"), "via", &gateway])?;
        }
        this.servers = Some(RelayServers::start(&hub, HUB_ADDR)?);
        Ok(this)
    }

    /// The relay's URL, as both peers reach it.
    pub fn relay_url(&self) -> String {
        self.servers().relay_url()
    }

    /// The pkarr relay's URL (publish and resolve).
    pub fn pkarr_url(&self) -> String {
        self.servers().pkarr_url()
    }

    /// Bytes of packets the relay has passed from one client to another.
    pub fn relayed_bytes(&self) -> u64 {
        self.servers().relayed_bytes()
    }

    /// `program args` inside `peer`'s namespace.
    pub fn command(&self, peer: &Peer, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &peer.netns]).arg(program);
        c
    }

    /// Waits until `id52` is published with a home relay; returns that relay's URL.
    pub fn wait_published(&self, id52: &str, timeout: Duration) -> Result<String> {
        self.servers().wait_published(id52, timeout)
    }

    fn servers(&self) -> &RelayServers {
        self.servers.as_ref().expect("a started hub has its servers")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // The servers stop before their namespace goes.
        drop(self.servers.take());
        for ns in [&self.a.netns, &self.b.netns, &self.netns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl RelayServers {
    /// Starts both servers on `addr` (which must be an address of namespace `netns`): the
    /// relay on [`RELAY_PORT`], the pkarr relay on [`PKARR_PORT`]; a second or less.
    pub fn start(netns: &str, addr: Ipv4Addr) -> Result<RelayServers> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let inside = netns.to_string();
        let thread = std::thread::spawn(move || {
            let served = ready_tx.clone();
            let run = move || -> Result<()> {
                enter_netns(&inside)?;
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async move {
                    let relay = spawn_relay(addr).await?;
                    let dns = spawn_pkarr(addr).await?;
                    let _ = served.send(Ok(relay.metrics().server.clone()));
                    let _ = stop_rx.await;
                    let _ = dns.shutdown().await;
                    let _ = relay.shutdown().await;
                    Ok(())
                })
            };
            if let Err(e) = run() {
                let _ = ready_tx.send(Err(e));
            }
        });
        // From here on Drop stops the thread, whatever happens.
        let mut this = RelayServers {
            netns: netns.to_string(),
            addr,
            relay_metrics: Arc::default(),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        this.relay_metrics = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .context("the relay and pkarr servers did not start within 20 s")??;
        Ok(this)
    }

    /// The relay's URL.
    pub fn relay_url(&self) -> String {
        format!("http://{}:{RELAY_PORT}", self.addr)
    }

    /// The pkarr relay's URL (publish and resolve).
    pub fn pkarr_url(&self) -> String {
        format!("http://{}:{PKARR_PORT}/pkarr", self.addr)
    }

    /// Bytes of packets the relay has passed from one client to another (QUIC and iroh's
    /// path messages alike).
    pub fn relayed_bytes(&self) -> u64 {
        self.relay_metrics.bytes_sent.get()
    }

    /// Waits until `id52`'s signed record on the pkarr relay names a home relay (what a
    /// client needs to reach it), resolving as a client would; returns that relay's URL.
    pub fn wait_published(&self, id52: &str, timeout: Duration) -> Result<String> {
        let node = tandem::net::identity::id52_to_node_id(id52)?;
        let url: url::Url = self.pkarr_url().parse()?;
        let id52 = id52.to_string();
        in_netns(&self.netns, move || async move {
            let client = iroh::discovery::pkarr::PkarrRelayClient::new(url);
            let deadline = Instant::now() + timeout;
            let mut last = String::from("nothing published");
            while Instant::now() < deadline {
                match client.resolve(node).await {
                    Ok(packet) => match iroh::node_info::NodeInfo::from_pkarr_signed_packet(&packet) {
                        Ok(info) => match info.relay_url() {
                            Some(relay) => return Ok(relay.to_string()),
                            None => last = format!("a record without relay: {info:?}"),
                        },
                        Err(e) => last = format!("an unreadable record: {e}"),
                    },
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("{id52} was not published with a relay within {timeout:?}: {last}")
        })
    }
}

impl Drop for RelayServers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `iroh-relay --dev`: relaying over plain HTTP, no TLS, no QUIC address discovery.
async fn spawn_relay(addr: Ipv4Addr) -> Result<iroh_relay::server::Server> {
    use iroh_relay::server::{AccessConfig, RelayConfig, Server, ServerConfig};
    let config: ServerConfig<(), ()> = ServerConfig {
        relay: Some(RelayConfig {
            http_bind_addr: SocketAddr::new(IpAddr::V4(addr), RELAY_PORT),
            tls: None,
            limits: Default::default(),
            key_cache_capacity: Some(1024),
            access: AccessConfig::Everyone,
        }),
        quic: None,
        metrics_addr: None,
    };
    Server::spawn(config).await.map_err(|e| anyhow::anyhow!("starting iroh-relay: {e}"))
}

/// `iroh-dns-server` with an in-memory store: its pkarr relay over HTTP, its DNS on UDP.
async fn spawn_pkarr(addr: Ipv4Addr) -> Result<iroh_dns_server::server::Server> {
    use iroh_dns_server::config::{Config, MetricsConfig};
    use iroh_dns_server::dns::DnsConfig;
    use iroh_dns_server::http::{HttpConfig, RateLimitConfig};
    let defaults = Config::default();
    let config = Config {
        http: Some(HttpConfig { port: PKARR_PORT, bind_addr: Some(IpAddr::V4(addr)) }),
        https: None,
        dns: DnsConfig { port: DNS_PORT, bind_addr: Some(IpAddr::V4(addr)), ..defaults.dns },
        metrics: Some(MetricsConfig::disabled()),
        pkarr_put_rate_limit: RateLimitConfig::Disabled,
        ..defaults
    };
    let store = iroh_dns_server::ZoneStore::in_memory(Default::default(), Default::default())
        .map_err(|e| anyhow::anyhow!("iroh-dns-server store: {e}"))?;
    iroh_dns_server::server::Server::spawn(config, store, Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("starting iroh-dns-server: {e}"))
}
