//! [`S3Location`]: `s3://BUCKET[/PREFIX]`, parsed and checked.

use object_store::path::Path;

use super::S3Error;

/// `s3://BUCKET[/PREFIX]`: where the meetings are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's top.
    pub prefix: String,
}

impl S3Location {
    pub fn parse(location: &str) -> Result<S3Location, S3Error> {
        let invalid =
            |reason: &str| S3Error::InvalidLocation { location: location.to_string(), reason: reason.into() };
        let rest = location.strip_prefix("s3://").ok_or_else(|| invalid("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket"));
        }
        if !bucket.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            return Err(invalid("a bucket name is letters, digits, '-', '.' and '_'"));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() && Path::parse(prefix).is_err() {
            return Err(invalid("the prefix has an empty, '.' or '..' component"));
        }
        Ok(S3Location { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }

    /// `s3://bucket/key` for messages.
    pub(super) fn object(&self, key: &Path) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl std::str::FromStr for S3Location {
    type Err = S3Error;
    fn from_str(s: &str) -> Result<S3Location, S3Error> {
        S3Location::parse(s)
    }
}
