//! Shaped links between two network namespaces: one-way delay, rate with a bounded queue, random
//! loss and jitter on IP packets, seeded, per direction, so QUIC and TCP alike see the link.
//!
//! ```text
//!   netns <name>-a                 this process                  netns <name>-b
//!   10.99.0.1/32  tdm0 ==fd==> [a->b: loss, queue, delay] ==fd==> tdm0  10.99.0.2/32
//!                      <==fd== [b->a: loss, queue, delay] <==fd==
//! ```
//!
//! Why our own forwarder: the kernel here has no `netem` (only `tbf`, which cannot delay), and
//! a UDP relay would not shape the TCP of the HTTP baseline (a TCP proxy ends the connection, so
//! nginx would see loopback). Why raw `libc` (`setns`, `TUNSETIFF`) rather than a tun crate: the
//! device is one `open` and one `ioctl`, the namespaces need `setns` anyway, and the tun crates
//! bring async runtimes and platform layers we would not use.
//!
//! Each direction is one reader thread (poll, read a packet, drop it at random, queue it
//! behind the packets still being sent at the rate: drop-tail past the bound, then stamp its
//! delivery time) and one writer thread (sleep until the stamp, write). Jitter adds a uniform
//! `[0, jitter]` to the delay but never reorders (a packet leaves no earlier than the one
//! before). Loss is applied before the queue, independently per direction.
//!
//! Code runs inside a namespace as a child process ([`Namespace::command`], `ip netns exec`)
//! or on a thread that has entered it ([`Namespace::spawn`]). A thread's network namespace is
//! inherited by the threads it starts, so a tokio runtime, multi-threaded or not, built on such a
//! thread creates its sockets there (checked by the `link` tests), and so does an iroh endpoint
//! bound from it. The namespaces are deleted when the [`ShapedLink`] is dropped (unwinding
//! included); links left by a killed process are removed by the next one.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What went wrong setting a link up; each names the step and the namespace.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("`{command}` failed ({status}): {stderr} (network namespaces need root and iproute2)")]
    Command { command: String, status: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("meeting {folder}: {reason}")]
    Meeting { folder: String, reason: String },
    #[error("serving {root} in {namespace}: {reason}")]
    Serve { root: String, namespace: String, reason: String },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Io { what, source }
}

/// One direction of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Direction {
    /// Fixed one-way delay, after the queue.
    pub delay: Duration,
    /// Up to this much more delay, uniform; packets keep their order.
    pub jitter: Duration,
    /// The bottleneck rate in bits per second; `None`: no rate limit and no queue.
    pub rate_bps: Option<u64>,
    /// The drop-tail queue bound in bytes; `None`: [`Direction::default_queue`].
    pub queue_bytes: Option<u64>,
    /// Probability that a packet is dropped (0..=1).
    pub loss: f64,
}

impl Direction {
    /// No delay, no rate limit, no loss.
    pub const UNSHAPED: Direction = Direction {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        rate_bps: None,
        queue_bytes: None,
        loss: 0.0,
    };

    /// The queue when none is given: one bandwidth-delay product of the round trip, or 50 ms at
    /// the rate, whichever is larger, and never under 10 full-size packets (15 000 bytes): on the
    /// short link (0.42 Mbit/s, 80 ms) one BDP is 4 200 bytes, under 3 packets, a queue no access
    /// link has, and drop-tail there would measure the queue, not the rate.
    pub fn default_queue(rate_bps: u64, round_trip: Duration) -> u64 {
        let bytes_per_s = rate_bps as f64 / 8.0;
        let bdp = bytes_per_s * round_trip.as_secs_f64();
        let fifty_ms = bytes_per_s * 0.050;
        bdp.max(fifty_ms).max(15_000.0).round() as u64
    }
}

/// Both directions of a link and the seed of its randomness (loss, jitter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Packets sent by namespace a to b.
    pub a_to_b: Direction,
    /// Packets sent by namespace b to a.
    pub b_to_a: Direction,
    pub seed: u64,
}

impl Shape {
    /// The same in both directions: half the round trip each way, the queue as
    /// [`Direction::default_queue`] says.
    pub fn symmetric(round_trip: Duration, rate_bps: Option<u64>, loss: f64) -> Shape {
        let queue_bytes = rate_bps.map(|r| Direction::default_queue(r, round_trip));
        let one_way =
            Direction { delay: round_trip / 2, jitter: Duration::ZERO, rate_bps, queue_bytes, loss };
        Shape { a_to_b: one_way, b_to_a: one_way, seed: 15 }
    }

    /// No shaping: the forwarder alone (about 0.1 ms of round trip).
    pub fn loopback() -> Shape {
        Shape { a_to_b: Direction::UNSHAPED, b_to_a: Direction::UNSHAPED, seed: 15 }
    }

    /// 80 ms round trip, 20 Mbit/s each way, queue 200 000 bytes (one BDP).
    pub fn far() -> Shape {
        Shape::symmetric(Duration::from_millis(80), Some(20_000_000), 0.0)
    }

    /// 200 ms round trip, 2 Mbit/s each way, 1 % loss each way, queue 50 000 bytes (one BDP).
    pub fn lossy() -> Shape {
        Shape::symmetric(Duration::from_millis(200), Some(2_000_000), 0.01)
    }

    /// 80 ms round trip at 0.8x `meeting_bps` (see [`meeting_bitrate`]) each way; for the
    /// committed meeting 0.42 Mbit/s, queue 15 000 bytes (the floor).
    pub fn short(meeting_bps: u64) -> Shape {
        Shape::symmetric(Duration::from_millis(80), Some(meeting_bps * 4 / 5), 0.0)
    }

    /// The same shape with another seed.
    pub fn seed(mut self, seed: u64) -> Shape {
        self.seed = seed;
        self
    }

    /// The round trip of the fixed delays (jitter and queueing excluded).
    pub fn round_trip(&self) -> Duration {
        self.a_to_b.delay + self.b_to_a.delay
    }
}

/// The average bitrate of a meeting folder: the bytes of the media files its segments use,
/// over its duration (`duration_ms`, else the last segment end).
pub fn meeting_bitrate(folder: &Path) -> Result<u64, LinkError> {
    let fail = |reason: String| LinkError::Meeting { folder: folder.display().to_string(), reason };
    let manifest = tandem::manifest::Manifest::load(folder).map_err(|e| fail(e.to_string()))?;
    let mut files: Vec<&str> =
        manifest.tracks.iter().flat_map(|t| t.segments.iter().map(|s| s.file.as_str())).collect();
    files.sort_unstable();
    files.dedup();
    let mut bytes = 0;
    for file in files {
        let path = folder.join(file);
        bytes += std::fs::metadata(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?.len();
    }
    let last_end = manifest.tracks.iter().flat_map(|t| &t.segments).filter_map(|s| s.end_ms).max();
    let duration_ms =
        manifest.duration_ms.or(last_end).filter(|&d| d > 0).ok_or_else(|| fail("no duration".into()))?;
    Ok(bytes * 8 * 1000 / duration_ms)
}

/// Counters of one direction, since the link was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets read from the sending side's device.
    pub packets_in: u64,
    /// Packets written to the receiving side's device, and their bytes.
    pub delivered: u64,
    pub delivered_bytes: u64,
    /// Dropped at random (the loss setting).
    pub lost: u64,
    /// Dropped because the queue was full.
    pub queue_dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    packets_in: AtomicU64,
    delivered: AtomicU64,
    delivered_bytes: AtomicU64,
    lost: AtomicU64,
    queue_dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            packets_in: self.packets_in.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            delivered_bytes: self.delivered_bytes.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            queue_dropped: self.queue_dropped.load(Ordering::Relaxed),
        }
    }
}

/// A network namespace of a link: run commands and threads inside it.
#[derive(Debug, Clone)]
pub struct Namespace {
    name: String,
    addr: Ipv4Addr,
}

impl Namespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This side's address (the other side reaches it through the link).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `program` run inside the namespace (`ip netns exec <name> program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a new thread inside the namespace; threads it starts are inside too.
    pub fn spawn<F, R>(&self, f: F) -> Result<JoinHandle<R>, LinkError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.open()?;
        let name = self.name.clone();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("in {name}"))
            .spawn(move || {
                let entered = enter(&ns);
                drop(ns);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                // The closure never runs outside the namespace; the caller gets the error.
                if !ok {
                    std::panic::resume_unwind(Box::new(()));
                }
                f()
            })
            .map_err(io_error(format!("starting a thread for {}", self.name)))?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(source)) => Err(LinkError::Io { what: format!("setns into {name}"), source }),
            Err(_) => Err(LinkError::Io {
                what: format!("setns into {name}"),
                source: std::io::Error::other("the thread ended before entering"),
            }),
        }
    }

    /// Runs `f` on a thread inside the namespace and waits for its result.
    pub fn run<F, R>(&self, f: F) -> Result<R, LinkError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn(f)?.join().map_err(|_| LinkError::Io {
            what: format!("a thread in {}", self.name),
            source: std::io::Error::other("panicked"),
        })
    }

    /// Moves the calling thread into the namespace for good (threads it starts afterwards are
    /// inside too): for a bench whose every part runs on one side.
    pub fn enter_current_thread(&self) -> Result<(), LinkError> {
        let ns = self.open()?;
        enter(&ns).map_err(io_error(format!("setns into {}", self.name)))
    }

    fn open(&self) -> Result<File, LinkError> {
        let path = Path::new("/run/netns").join(&self.name);
        File::open(&path).map_err(io_error(format!("opening {}", path.display())))
    }
}

fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns on a valid namespace fd; it changes only the calling thread's namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `ip args...`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), LinkError> {
    let out =
        Command::new("ip").args(args).output().map_err(io_error(format!("running ip {}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LinkError::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

const TUN_NAME: &str = "tdm0";
const NAME_PREFIX: &str = "tdm-";

/// Opens a TUN device named [`TUN_NAME`] inside `ns` (a thread enters it to create the device;
/// the fd then works from anywhere).
fn open_tun(ns: &Namespace) -> Result<OwnedFd, LinkError> {
    ns.run(|| -> std::io::Result<OwnedFd> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..TUN_NAME.len()].copy_from_slice(TUN_NAME.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes, which IfReq is).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from(file))
    })?
    .map_err(io_error(format!("creating {TUN_NAME} in {}", ns.name)))
}

/// Deletes the links of processes that are gone (killed before their drop ran), once.
fn remove_stale_namespaces() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(NAME_PREFIX).and_then(|r| r.split('-').next()) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = ip(&["netns", "delete", &name]);
            }
        }
    });
}

/// Two namespaces joined by the shaping forwarder; everything is removed on drop.
#[derive(Debug)]
pub struct ShapedLink {
    a: Namespace,
    b: Namespace,
    shape: Arc<Mutex<Shape>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    counters: [Arc<Counters>; 2],
}

impl ShapedLink {
    /// Creates the namespaces `tdm-<pid>-<n>-a` and `-b`, their devices and addresses
    /// (10.99.0.1 in a, 10.99.0.2 in b: each namespace has its own, so links do not clash),
    /// and starts the forwarder.
    pub fn new(shape: Shape) -> Result<ShapedLink, LinkError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        remove_stale_namespaces();
        let base = format!("{NAME_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let a = Namespace { name: format!("{base}-a"), addr: Ipv4Addr::new(10, 99, 0, 1) };
        let b = Namespace { name: format!("{base}-b"), addr: Ipv4Addr::new(10, 99, 0, 2) };
        let mut link = ShapedLink {
            a,
            b,
            shape: Arc::new(Mutex::new(shape)),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            counters: [Arc::default(), Arc::default()],
        };
        // From here on, a failure drops `link`, which deletes whatever was made.
        let tun_a = File::from(link.make_side(true)?);
        let tun_b = File::from(link.make_side(false)?);
        let clone =
            |f: &File, what: &str| f.try_clone().map_err(io_error(format!("duplicating {what}'s fd")));
        let (a_in, a_out, b_in, b_out) = (clone(&tun_a, "a")?, tun_a, clone(&tun_b, "b")?, tun_b);
        link.start_direction(true, a_in, b_out)?;
        link.start_direction(false, b_in, a_out)?;
        Ok(link)
    }

    /// Namespace a (or b), its device, address and route to the other side.
    fn make_side(&self, side_a: bool) -> Result<OwnedFd, LinkError> {
        let (ns, peer) = if side_a { (&self.a, &self.b) } else { (&self.b, &self.a) };
        ip(&["netns", "add", &ns.name])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        let tun = open_tun(ns)?;
        let (own, other) = (format!("{}/32", ns.addr), format!("{}/32", peer.addr));
        ip(&["-n", &ns.name, "addr", "add", &own, "dev", TUN_NAME])?;
        ip(&["-n", &ns.name, "link", "set", TUN_NAME, "up"])?;
        ip(&["-n", &ns.name, "route", "add", &other, "dev", TUN_NAME])?;
        Ok(tun)
    }

    /// The side that plays (the client's).
    pub fn a(&self) -> &Namespace {
        &self.a
    }

    /// The side that serves.
    pub fn b(&self) -> &Namespace {
        &self.b
    }

    pub fn shape(&self) -> Shape {
        *self.shape.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the shape for the packets read from now on (those queued keep their times).
    pub fn set_shape(&self, shape: Shape) {
        *self.shape.lock().unwrap_or_else(|e| e.into_inner()) = shape;
    }

    /// The counters of (a to b, b to a).
    pub fn stats(&self) -> (DirectionStats, DirectionStats) {
        (self.counters[0].snapshot(), self.counters[1].snapshot())
    }

    fn start_direction(&mut self, a_to_b: bool, from: File, to: File) -> Result<(), LinkError> {
        let label = if a_to_b { "a->b" } else { "b->a" };
        // Bounds the packets between the queue and the delivery (in flight on the wire):
        // 20 Mbit/s x 100 ms is about 170 full packets; unshaped links drain at once.
        let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(16_384);
        let counters = self.counters[usize::from(!a_to_b)].clone();
        let (shape, stop) = (self.shape.clone(), self.stop.clone());
        let reader_counters = counters.clone();
        let reader = std::thread::Builder::new()
            .name(format!("link {label} in"))
            .spawn(move || read_side(from, tx, shape, a_to_b, stop, reader_counters))
            .map_err(io_error("starting the forwarder"))?;
        self.threads.push(reader);
        let writer = std::thread::Builder::new()
            .name(format!("link {label} out"))
            .spawn(move || write_side(to, rx, counters))
            .map_err(io_error("starting the forwarder"))?;
        self.threads.push(writer);
        Ok(())
    }
}

/// Reads packets, applies loss and the queue, and hands each on with its delivery time.
fn read_side(
    mut from: File,
    tx: SyncSender<(Instant, Vec<u8>)>,
    shape: Arc<Mutex<Shape>>,
    a_to_b: bool,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let mut seed = shape.lock().map(|s| s.seed).unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed ^ u64::from(a_to_b));
    // When the bottleneck finishes sending what is queued, and the last delivery time.
    let mut free_at = Instant::now();
    let mut last_delivery = Instant::now();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut poll = libc::pollfd { fd: from.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a 50 ms timeout so `stop` is seen.
        let ready = unsafe { libc::poll(&mut poll, 1, 50) };
        if ready <= 0 {
            continue;
        }
        let Ok(len) = from.read(&mut buf) else { continue };
        if len == 0 {
            continue;
        }
        counters.packets_in.fetch_add(1, Ordering::Relaxed);
        let current = *shape.lock().unwrap_or_else(|e| e.into_inner());
        if current.seed != seed {
            seed = current.seed;
            rng = StdRng::seed_from_u64(seed ^ u64::from(a_to_b));
        }
        let dir = if a_to_b { current.a_to_b } else { current.b_to_a };
        if dir.loss > 0.0 && rng.gen::<f64>() < dir.loss {
            counters.lost.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = Instant::now();
        let sent = match dir.rate_bps.filter(|&r| r > 0) {
            Some(rate) => {
                free_at = free_at.max(now);
                let backlog = (free_at - now).as_secs_f64() * rate as f64 / 8.0;
                let bound = dir.queue_bytes.unwrap_or_else(|| Direction::default_queue(rate, dir.delay * 2));
                if backlog + len as f64 > bound as f64 {
                    counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                free_at += Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
                free_at
            }
            None => now,
        };
        let jitter = if dir.jitter.is_zero() { Duration::ZERO } else { dir.jitter.mul_f64(rng.gen::<f64>()) };
        let delivery = (sent + dir.delay + jitter).max(last_delivery);
        last_delivery = delivery;
        match tx.try_send((delivery, buf[..len].to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Writes each packet at its delivery time; ends when the reader has ended.
fn write_side(mut to: File, rx: Receiver<(Instant, Vec<u8>)>, counters: Arc<Counters>) {
    loop {
        let (delivery, packet) = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        if delivery > now {
            std::thread::sleep(delivery - now);
        }
        // A write fails only when the receiving side is going away; the packet is lost then.
        if to.write(&packet).is_ok() {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            counters.delivered_bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
        }
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for ns in [&self.a, &self.b] {
            if Path::new("/run/netns").join(&ns.name).exists() {
                if let Err(e) = ip(&["netns", "delete", &ns.name]) {
                    eprintln!("shaped link: {e}");
                }
            }
        }
    }
}

/// A tandem server for the meeting folders under a root, running inside a namespace (its
/// runtime on a thread there), until dropped.
#[derive(Debug)]
pub struct ServedPeer {
    pub id52: String,
    /// Where the other side dials it (the namespace's address).
    pub addr: std::net::SocketAddr,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServedPeer {
    /// Serves `root` on the namespace's address (relays and discovery off).
    pub fn start(ns: &Namespace, root: &Path) -> Result<ServedPeer, LinkError> {
        ServedPeer::start_on(ns, root, std::net::SocketAddr::from((ns.addr, 0)), tandem::net::Reach::direct())
    }

    /// Serves `root` bound to `bind` (an address of the namespace), reached as `reach` says.
    pub fn start_on(
        ns: &Namespace,
        root: &Path,
        bind: std::net::SocketAddr,
        reach: tandem::net::Reach,
    ) -> Result<ServedPeer, LinkError> {
        let fail = {
            let (root, namespace) = (root.display().to_string(), ns.name.clone());
            move |reason: String| LinkError::Serve {
                root: root.clone(),
                namespace: namespace.clone(),
                reason,
            }
        };
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let root_owned = root.to_path_buf();
        let thread = ns.spawn(move || {
            let runtime =
                match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                    Ok(r) => r,
                    Err(e) => return drop(started_tx.send(Err(e.to_string()))),
                };
            let server = runtime.block_on(async {
                let provider = tandem::net::FolderProvider::new(&root_owned)?;
                provider.server_builder().bind(bind).reach(reach).spawn().await
            });
            let server = match server {
                Ok(s) => s,
                Err(e) => return drop(started_tx.send(Err(e.to_string()))),
            };
            let addr = server.bound_addrs().into_iter().find(|a| a.ip() == bind.ip());
            let _ = started_tx.send(
                addr.map(|a| (server.id52().to_string(), a))
                    .ok_or_else(|| format!("bound to {:?}, not {}", server.bound_addrs(), bind.ip())),
            );
            // Until dropped (or the sender is gone).
            let _ = stop_rx.recv();
            runtime.block_on(server.shutdown());
        })?;
        let started =
            started_rx.recv_timeout(Duration::from_secs(20)).map_err(|e| fail(format!("no start: {e}")))?;
        let (id52, addr) = started.map_err(fail)?;
        Ok(ServedPeer { id52, addr, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// The peer as a client dials it.
    pub fn peer(&self) -> tandem::net::PeerAddr {
        tandem::net::PeerAddr::new(self.id52.clone(), Some(self.addr))
    }
}

impl Drop for ServedPeer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
