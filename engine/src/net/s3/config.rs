//! [`S3Config`]: where and how to reach the bucket (builder methods or the standard AWS
//! environment variables), and the object store built from it.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::{S3Error, S3Location};

/// Where and how to reach the bucket, and the provider's sizes and times.
#[derive(Clone)]
pub struct S3Config {
    pub(super) location: S3Location,
    /// `http(s)://host:port` of an S3-compatible server; AWS's own endpoint when absent.
    pub(super) endpoint: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    region: Option<String>,
    /// Plain HTTP endpoints are refused unless this is set (`AWS_ALLOW_HTTP=true`).
    allow_http: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_retries: usize,
    pub(super) deadline: Duration,
    pub(super) chunk_size: u64,
    pub(super) cache_bytes: u64,
    pub(super) manifest_ttl: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("S3Config")
            .field("location", &self.location)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("deadline", &self.deadline)
            .field("chunk_size", &self.chunk_size)
            .field("cache_bytes", &self.cache_bytes)
            .field("manifest_ttl", &self.manifest_ttl)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Defaults and nothing from the environment: set the endpoint and credentials yourself.
    pub fn new(location: S3Location) -> S3Config {
        S3Config {
            location,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            region: None,
            allow_http: false,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            max_retries: 2,
            deadline: Duration::from_secs(5),
            chunk_size: 256 * 1024,
            cache_bytes: 64 * 1024 * 1024,
            manifest_ttl: Duration::from_secs(10),
        }
    }

    /// Defaults, with the endpoint, credentials, region and `AWS_ALLOW_HTTP` from the standard
    /// environment variables (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or `AWS_DEFAULT_REGION`).
    pub fn from_env(location: S3Location) -> S3Config {
        let var = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()));
        let mut config = S3Config::new(location);
        config.endpoint = var(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]);
        config.access_key_id = var(&["AWS_ACCESS_KEY_ID"]);
        config.secret_access_key = var(&["AWS_SECRET_ACCESS_KEY"]);
        config.session_token = var(&["AWS_SESSION_TOKEN"]);
        config.region = var(&["AWS_REGION", "AWS_DEFAULT_REGION"]);
        config.allow_http = var(&["AWS_ALLOW_HTTP"]).is_some_and(|v| matches!(v.as_str(), "true" | "1"));
        config
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key.into());
        self
    }
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }
    /// Bound on opening a TCP (and TLS) connection to the endpoint (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Bound on one HTTP attempt (default 3 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Retries of a failed attempt (default 2; object_store's own is 10 over 3 minutes).
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }
    /// Bound on one store operation, retries included (default 5 s): past it the read fails
    /// with [`S3Error::Timeout`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
    /// Reads are widened to chunks of this size (default 256 KiB, at least 4 KiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(4096);
        self
    }
    /// Bytes of chunks kept in memory (default 64 MiB; 0 keeps none, in-flight GETs are
    /// still shared).
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }
    /// How long a resolved meeting (manifest, sizes, ETags) is reused (default 10 s).
    pub fn manifest_ttl(mut self, ttl: Duration) -> Self {
        self.manifest_ttl = ttl;
        self
    }

    pub(super) fn endpoint_label(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| "AWS S3".to_string())
    }

    pub(super) fn build_store(&self) -> Result<Arc<dyn ObjectStore>, S3Error> {
        let bucket = &self.location.bucket;
        let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        let client = ClientOptions::new()
            .with_allow_http(self.allow_http)
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.deadline,
        };
        let store = builder
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| S3Error::Config { bucket: bucket.clone(), message: e.to_string() })?;
        Ok(Arc::new(store))
    }
}
