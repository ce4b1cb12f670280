//! What the CLI tests share: the binary, child processes that die with the test, a virtual X
//! display and its screenshots, a tmux terminal, and stamps read from pixels.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub fn meeting_replay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meeting-replay"))
}

/// Kills the child when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meeting-replay serve` as `command` starts it (wherever it runs: a network namespace, say),
/// once it has said who it is: the child, its ID52, and every line it printed up to its list
/// of meetings (its addresses among them).
pub fn start_serve(mut command: Command) -> Result<(Child, String, Vec<String>)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting meeting-replay serve")?;
    let stdout = child.stdout.take().context("serve without stdout")?;
    let child = Child(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut id52, mut lines) = (None, Vec::new());
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else { break };
        if let Some(rest) = line.strip_prefix("serving ") {
            id52 = rest.rsplit(" as ").next().map(|id| id.trim().to_string());
        }
        let done = line.starts_with("meetings:");
        lines.push(line);
        if done {
            break;
        }
    }
    match id52 {
        Some(id52) => Ok((child, id52, lines)),
        None => bail!("serve printed no ID52 within 20 s: {lines:?}"),
    }
}

/// A virtual X server on a free display.
pub struct Xvfb {
    _child: Child,
    pub display: String,
}

impl Xvfb {
    pub fn start() -> Result<Xvfb> {
        // Xvfb picks a free display and writes its number to the pipe once it accepts clients.
        let mut xvfb = Command::new("Xvfb")
            // -noreset: by default the server resets when its last client leaves (the
            // readiness probe below), and a window opened during the reset fails.
            .args(["-displayfd", "1", "-screen", "0", "1600x900x24", "-nolisten", "tcp", "-noreset"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting Xvfb (run scripts/install-deps.sh)")?;
        let stdout = xvfb.stdout.take().context("Xvfb without stdout")?;
        let child = Child(xvfb);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let number: u32 = line.trim().parse().with_context(|| format!("Xvfb said {line:?}"))?;
        let display = format!(":{number}");
        // Wait until a client is served.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = Command::new("xwd").args(["-root", "-silent", "-display", &display]).output();
            if probe.is_ok_and(|o| o.status.success()) {
                break;
            }
            ensure!(Instant::now() < deadline, "Xvfb on {display} accepts no clients");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Xvfb { _child: child, display })
    }
}

/// The stamp (DESIGN §6) drawn at (x, y) of a luma plane with blocks of `block` pixels (16 at
/// full size, 8 at half size). A dark tile reads as stamp 0: that counts as no stamp.
pub fn stamp_at(luma: impl Fn(usize, usize) -> u8, x: usize, y: usize, block: usize) -> Option<u32> {
    tandem_fixtures::stamp::read_stamp_at(|x, y| Some(luma(x, y)), x, y, block).filter(|&v| v > 0)
}

/// The width, height and stamp of a PNG written by `snapshot` (luma from RGB, BT.601).
pub fn png_stamp(path: &Path) -> Result<(u32, u32, Option<u32>)> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    ensure!(info.color_type == png::ColorType::Rgb, "not RGB: {:?}", info.color_type);
    let (w, h) = (info.width as usize, info.height as usize);
    let luma: Vec<u8> = buf[..w * h * 3].chunks_exact(3).map(|p| luma_of([p[0], p[1], p[2]])).collect();
    Ok((info.width, info.height, tandem_fixtures::stamp::read_stamp(&luma, w, w, h)))
}

/// BT.601 luma of an RGB pixel.
pub fn luma_of(p: [u8; 3]) -> u8 {
    (0.257 * p[0] as f32 + 0.504 * p[1] as f32 + 0.098 * p[2] as f32 + 16.0) as u8
}

/// An X screenshot (`xwd -root`) as RGB rows.
pub struct Screenshot {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<[u8; 3]>,
}

impl Screenshot {
    pub fn take(display: &str) -> Result<Screenshot> {
        let out = Command::new("xwd")
            .args(["-root", "-silent", "-display", display])
            .output()
            .context("running xwd")?;
        ensure!(out.status.success(), "xwd failed: {}", String::from_utf8_lossy(&out.stderr));
        let d = out.stdout;
        let be = |at: usize| -> Result<usize> {
            let b = d.get(at..at + 4).context("short XWD header")?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let (header, width, height) = (be(0)?, be(16)?, be(20)?);
        let (byte_order, bpp, line, ncolors) = (be(28)?, be(44)?, be(48)?, be(76)?);
        let (red, green, blue) = (be(56)? as u32, be(60)? as u32, be(64)? as u32);
        ensure!(bpp == 32, "XWD with {bpp} bits per pixel");
        let data = d.get(header + ncolors * 12..).context("XWD without pixels")?;
        let shift = |mask: u32| mask.trailing_zeros();
        let mut rgb = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                let at = y * line + x * 4;
                let p = data.get(at..at + 4).context("short XWD pixels")?;
                let v = if byte_order == 0 {
                    u32::from_le_bytes([p[0], p[1], p[2], p[3]])
                } else {
                    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
                };
                rgb.push([
                    ((v & red) >> shift(red)) as u8,
                    ((v & green) >> shift(green)) as u8,
                    ((v & blue) >> shift(blue)) as u8,
                ]);
            }
        }
        Ok(Screenshot { width, height, rgb })
    }

    pub fn luma(&self, x: usize, y: usize) -> u8 {
        luma_of(self.rgb.get(y * self.width + x).copied().unwrap_or([0, 0, 0]))
    }

    pub fn stamp_at(&self, x: usize, y: usize, block: usize) -> Option<u32> {
        stamp_at(|x, y| self.luma(x, y), x, y, block)
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path)?;
        let mut encoder =
            png::Encoder::new(std::io::BufWriter::new(file), self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let flat: Vec<u8> = self.rgb.iter().flatten().copied().collect();
        encoder.write_header()?.write_image_data(&flat)?;
        Ok(())
    }
}

/// A terminal: a tmux server of its own running one command in a pane.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `command` (a shell command line) in a `width` x `height` terminal.
    pub fn start(command: &str, width: u16, height: u16) -> Result<Tmux> {
        let socket = format!("tandem-test-{}-{}", std::process::id(), rand_suffix());
        let status = Command::new("tmux")
            .args(["-u", "-L", &socket, "-f", "/dev/null", "new-session", "-d", "-s", "main"])
            .args(["-x", &width.to_string(), "-y", &height.to_string(), command])
            .status()
            .context("starting tmux (run scripts/install-deps.sh)")?;
        ensure!(status.success(), "tmux new-session failed: {status}");
        Ok(Tmux { socket })
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// Sends keys by tmux name (`Space`, `Right`, `q`, `C-c`, ...).
    pub fn keys(&self, keys: &[&str]) -> Result<()> {
        let status = self.tmux().args(["send-keys", "-t", "main"]).args(keys).status()?;
        ensure!(status.success(), "tmux send-keys {keys:?} failed");
        Ok(())
    }

    /// What the pane shows now.
    pub fn capture(&self) -> Result<String> {
        let out = self.tmux().args(["capture-pane", "-p", "-t", "main"]).output()?;
        ensure!(out.status.success(), "tmux capture-pane failed");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the pane shows what `done` looks for; the screen it last saw on timeout.
    pub fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture()?;
            if done(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                bail!("waited {timeout:?} for {what}; the screen shows:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id of the pane's command.
    pub fn pane_pid(&self) -> Result<u32> {
        let out = self.tmux().args(["display-message", "-p", "-t", "main", "#{pane_pid}"]).output()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().context("no pane pid")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// A server started with `meeting-replay serve` on loopback: its ID52 and address.
pub struct Served {
    _child: Child,
    pub id52: String,
    pub addr: String,
}

/// Serves `root` (a folder of meetings) on loopback, no relays.
pub fn serve(root: &Path, key_dir: &Path) -> Result<Served> {
    let mut child = meeting_replay()
        .args(["serve", &root.to_string_lossy(), "--no-relay", "--bind", "127.0.0.1:0", "--key"])
        .arg(key_dir.join("server.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("serve without stdout")?;
    let child = Child(child);
    // The server prints on after the lines read here: keep reading until it ends, or its
    // next print would hit a closed pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut id52, mut addr) = (None, None);
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        if let Some(rest) = line.strip_prefix("serving ") {
            id52 = rest.rsplit(" as ").next().map(str::to_string);
        }
        if let Some(rest) = line.strip_prefix("listening on 127.0.0.1:") {
            addr = Some(format!("127.0.0.1:{rest}"));
        }
        if line.starts_with("meetings:") {
            break;
        }
    }
    match (id52, addr) {
        (Some(id52), Some(addr)) => Ok(Served { _child: child, id52, addr }),
        _ => bail!("serve printed no ID52 or loopback address"),
    }
}
