//! nginx on loopback serving a folder: the HTTP range server of the GStreamer baseline.
//!
//! A temporary config (one static `location`, ranges on, logs in the temp dir) and
//! `nginx -c <conf> -g 'daemon off;'` as a child process, stopped on drop.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running nginx (one process: `master_process off`); killed by its pid when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    host: Ipv4Addr,
    port: u16,
    dir: tempfile::TempDir,
}

fn nginx_binary() -> Result<PathBuf> {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(candidate).exists() {
            return Ok(candidate.into());
        }
    }
    bail!("nginx not found; run scripts/install-deps.sh")
}

impl Nginx {
    /// Serves `root` on a free loopback port.
    pub fn serve(root: &Path) -> Result<Nginx> {
        Nginx::serve_on(root, Ipv4Addr::LOCALHOST, |binary| Command::new(binary))
    }

    /// Serves `root` on `host`, nginx started by `launch(nginx binary)` (`ip netns exec ...`
    /// for a server on the far side of a shaped link); the calling thread must reach `host`.
    pub fn serve_on(root: &Path, host: Ipv4Addr, launch: impl FnOnce(&Path) -> Command) -> Result<Nginx> {
        let binary = nginx_binary()?;
        // A port free here; the far side's namespace has nothing else listening.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let t = dir.path().display();
        let root = root.canonicalize()?;
        let conf = format!(
            "master_process off;\n\
             pid {t}/nginx.pid;\n\
             error_log {t}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               access_log {t}/access.log;\n\
               client_body_temp_path {t}/body;\n\
               proxy_temp_path {t}/proxy;\n\
               fastcgi_temp_path {t}/fastcgi;\n\
               uwsgi_temp_path {t}/uwsgi;\n\
               scgi_temp_path {t}/scgi;\n\
               types {{ video/mp4 mp4; video/webm webm; video/x-matroska mkv; audio/ogg ogg; audio/mpeg mp3; }}\n\
               sendfile on;\n\
               server {{\n\
                 listen {host}:{port};\n\
                 root {};\n\
               }}\n\
             }}\n",
            root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = launch(&binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .arg("-g")
            .arg("daemon off;")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx { child, host, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&(host, port).into(), Duration::from_secs(2)).is_err() {
            if let Some(status) = nginx.child.try_wait()? {
                let log = std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// `http://<host>:<port>/` followed by `path` (relative to the served root).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}/{path}", self.host, self.port)
    }

    /// Requests served so far and the bytes of their bodies (from the access log).
    pub fn served(&self) -> (u64, u64) {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let mut requests = 0;
        let mut bytes = 0;
        for line in log.lines() {
            // Combined format: ... "GET /x HTTP/1.1" 206 <bytes> "-" "agent"
            let Some((_, after)) = line.split_once("\" ") else { continue };
            let mut fields = after.split_whitespace();
            let _status = fields.next();
            requests += 1;
            bytes += fields.next().and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
        }
        (requests, bytes)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
