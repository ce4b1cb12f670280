//! A real S3 server for the tests, in-process: `s3s-fs` (S3 over HTTP with SigV4
//! authentication, objects kept in a folder) on a loopback port, behind a layer that records
//! every request it receives (method, path, `Range` header): the oracle for how many GETs the
//! provider made.
//!
//! The server runs on a runtime of its own in a thread of its own, so sync tests (which start
//! `meeting-replay serve` as a child) and async ones use it alike; dropping it stops it.
//! [`stalled_endpoint`] is its opposite: a loopback port that accepts connections and never
//! answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

/// The test credentials: the server refuses any other signature.
pub const ACCESS_KEY: &str = "tandem-test";
pub const SECRET_KEY: &str = "tandem-test-secret-key";
pub const REGION: &str = "us-east-1";

/// One request as the S3 server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    /// `/bucket/key` (path-style), percent-encoded as sent.
    pub path: String,
    /// The `Range` header, when present.
    pub range: Option<String>,
}

/// An S3 server on 127.0.0.1; stopped when dropped.
pub struct S3Server {
    pub addr: SocketAddr,
    /// Where s3s-fs keeps the buckets (one folder each).
    pub root: tempfile::TempDir,
    log: Arc<Mutex<Vec<Received>>>,
    /// Milliseconds every ranged GET waits before it is answered (a far bucket).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl S3Server {
    pub fn start() -> Result<S3Server> {
        let root = tempfile::tempdir()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let fs = s3s_fs::FileSystem::new(root.path()).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
        let service = {
            let mut builder = s3s::service::S3ServiceBuilder::new(fs);
            builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            builder.build()
        };
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let counted = log.clone();
        let delay_ms: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let delay = delay_ms.clone();
        let thread = std::thread::Builder::new().name("s3s-fs".into()).spawn(move || {
            let Ok(runtime) =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    let socket = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => socket,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => break,
                    };
                    let (service, log, delay) = (service.clone(), counted.clone(), delay.clone());
                    let counting =
                        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let received = Received {
                                method: request.method().to_string(),
                                path: request.uri().path().to_string(),
                                range: request
                                    .headers()
                                    .get(hyper::header::RANGE)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string),
                            };
                            let wait = if received.method == "GET" && received.range.is_some() {
                                delay.load(std::sync::atomic::Ordering::SeqCst)
                            } else {
                                0
                            };
                            log.lock().unwrap_or_else(PoisonError::into_inner).push(received);
                            let service = service.clone();
                            async move {
                                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                                hyper::service::Service::call(&service, request).await
                            }
                        });
                    let connection = http.serve_connection(TokioIo::new(socket), counting).into_owned();
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
            });
            runtime.shutdown_background();
        })?;
        Ok(S3Server { addr, root, log, delay_ms, stop: Some(stop), thread: Some(thread) })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment `meeting-replay serve s3://...` needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// An empty bucket (s3s-fs keeps one folder per bucket).
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        std::fs::create_dir_all(self.root.path().join(bucket)).context("creating the bucket's folder")
    }

    /// Uploads every file of `folder` to `bucket` under `prefix/` through S3 PUTs (so the
    /// server keeps their ETags as a real upload would).
    pub fn upload_folder(&self, bucket: &str, prefix: &str, folder: &Path) -> Result<usize> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
            .with_allow_http(true)
            .build()?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(folder)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                files.push((entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path())?));
            }
        }
        let count = files.len();
        // On a thread and a runtime of its own: callers may be inside a runtime already.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(async {
                        for (name, data) in files {
                            let key = ObjectPath::from(format!("{}/{name}", prefix.trim_matches('/')));
                            store
                                .put(&key, PutPayload::from(data))
                                .await
                                .with_context(|| format!("PUT {key}"))?;
                        }
                        anyhow::Ok(())
                    })
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the upload thread panicked"))?
        })?;
        Ok(count)
    }

    /// Makes every ranged GET wait `delay` before it is answered, as a far bucket would.
    pub fn set_get_delay(&self, delay: std::time::Duration) {
        self.delay_ms.store(delay.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Ranged GETs received, by object path and range: how often each chunk was fetched.
    pub fn range_gets(&self) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for r in self.received() {
            if r.method == "GET" {
                if let Some(range) = r.range {
                    *out.entry((r.path, range)).or_insert(0) += 1;
                }
            }
        }
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback port that accepts TCP connections and never answers: an S3 endpoint that
/// stalls. The kernel completes the handshakes into the listen backlog and nobody reads them.
/// Closed when dropped.
#[derive(Debug)]
pub struct StalledEndpoint {
    pub addr: SocketAddr,
    _listener: std::net::TcpListener,
}

pub fn stalled_endpoint() -> Result<StalledEndpoint> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(StalledEndpoint { addr: listener.local_addr()?, _listener: listener })
}
