//! One S3-compatible bucket, as the operator sees it: presigned URLs for the
//! machine (GET, PUT, one per multipart part), and the few calls the operator
//! makes itself (list, head, create and complete a multipart upload). Errors
//! never carry a signed URL.

use std::time::Duration;

use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use url::Url;

/// Credentials read from the session's Secret (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
#[derive(Clone)]
pub struct Keys {
    pub access_key: String,
    pub secret_key: secrecy::SecretString,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("access_key", &self.access_key).finish_non_exhaustive()
    }
}

/// The longest a URL is signed for (S3 refuses more than 7 days).
pub const MAX_URL_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Time allowed to one of the operator's own calls to the store.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    #[error(
        "the store refused the credentials for bucket {bucket} (HTTP {status}): check the Secret's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    Denied { bucket: String, status: u16 },
    #[error("nothing at {what} in bucket {bucket}")]
    NotFound { bucket: String, what: String },
    #[error("cannot reach the store for bucket {bucket}: {message}")]
    Unreachable { bucket: String, message: String },
    #[error("bucket {bucket}: {message}")]
    Invalid { bucket: String, message: String },
}

impl StoreError {
    /// Whether the source (the bucket or its credentials) is at fault, not the network.
    pub fn is_source(&self) -> bool {
        matches!(self, StoreError::Denied { .. } | StoreError::NotFound { .. } | StoreError::Invalid { .. })
    }
}

/// An object found under a prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    pub key: String,
    pub bytes: u64,
    /// The store's ETag without quotes (the MD5 of a single-part object).
    pub etag: Option<String>,
}

pub struct Store {
    bucket: Bucket,
    keys: Credentials,
    http: reqwest::Client,
}

impl Store {
    pub fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        virtual_hosted: bool,
        keys: &Keys,
    ) -> Result<Store, StoreError> {
        let invalid = |message: String| StoreError::Invalid { bucket: bucket.to_string(), message };
        let endpoint = Url::parse(endpoint).map_err(|e| invalid(format!("endpoint: {e}")))?;
        let style = if virtual_hosted { UrlStyle::VirtualHost } else { UrlStyle::Path };
        let bucket =
            Bucket::new(endpoint, style, bucket.to_string(), region.to_string()).map_err(|e| invalid(e.to_string()))?;
        let secret = secrecy::ExposeSecret::expose_secret(&keys.secret_key).to_string();
        let keys = match &keys.session_token {
            Some(token) => Credentials::new_with_token(keys.access_key.clone(), secret, token.clone()),
            None => Credentials::new(keys.access_key.clone(), secret),
        };
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build().expect("http client");
        Ok(Store { bucket, keys, http })
    }

    pub fn name(&self) -> &str {
        self.bucket.name()
    }

    /// `s3://bucket/key`, for status.
    pub fn url_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    pub fn signed_get(&self, key: &str, lifetime: Duration) -> Url {
        self.bucket.get_object(Some(&self.keys), key).sign(lifetime.min(MAX_URL_LIFETIME))
    }

    pub fn signed_put(&self, key: &str, lifetime: Duration) -> Url {
        self.bucket.put_object(Some(&self.keys), key).sign(lifetime.min(MAX_URL_LIFETIME))
    }

    pub fn signed_part(&self, key: &str, part: u16, upload_id: &str, lifetime: Duration) -> Url {
        self.bucket.upload_part(Some(&self.keys), key, part, upload_id).sign(lifetime.min(MAX_URL_LIFETIME))
    }

    fn unreachable(&self, error: reqwest::Error) -> StoreError {
        StoreError::Unreachable { bucket: self.bucket.name().to_string(), message: error.without_url().to_string() }
    }

    fn refused(&self, status: reqwest::StatusCode, what: &str) -> StoreError {
        let bucket = self.bucket.name().to_string();
        match status.as_u16() {
            401 | 403 => StoreError::Denied { bucket, status: status.as_u16() },
            404 => StoreError::NotFound { bucket, what: what.to_string() },
            code => StoreError::Unreachable { bucket, message: format!("{what}: HTTP {code}") },
        }
    }

    /// Every object under `prefix` (the store's pages followed).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.keys));
            action.with_prefix(prefix);
            if let Some(token) = &token {
                action.with_continuation_token(token.as_str());
            }
            let url = action.sign(Duration::from_secs(60));
            let reply = self.http.get(url).send().await.map_err(|e| self.unreachable(e))?;
            if !reply.status().is_success() {
                return Err(self.refused(reply.status(), &format!("prefix {prefix:?}")));
            }
            let text = reply.text().await.map_err(|e| self.unreachable(e))?;
            let page = ListObjectsV2::parse_response(&text).map_err(|e| StoreError::Invalid {
                bucket: self.bucket.name().to_string(),
                message: format!("an unreadable listing: {e}"),
            })?;
            found.extend(page.contents.into_iter().map(|c| Listed {
                key: c.key,
                bytes: c.size.unwrap_or(0),
                etag: c.etag.map(|e| e.trim_matches('"').to_string()),
            }));
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => return Ok(found),
            }
        }
    }

    /// Whether the bucket exists and the credentials are good for it.
    pub async fn check(&self) -> Result<(), StoreError> {
        let url = self.bucket.head_bucket(Some(&self.keys)).sign(Duration::from_secs(60));
        let reply = self.http.head(url).send().await.map_err(|e| self.unreachable(e))?;
        if reply.status().is_success() { Ok(()) } else { Err(self.refused(reply.status(), "the bucket")) }
    }

    /// The object's size and ETag, or `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<Listed>, StoreError> {
        let url = self.bucket.head_object(Some(&self.keys), key).sign(Duration::from_secs(60));
        let reply = self.http.head(url).send().await.map_err(|e| self.unreachable(e))?;
        if reply.status().as_u16() == 404 {
            return Ok(None);
        }
        if !reply.status().is_success() {
            return Err(self.refused(reply.status(), &format!("key {key:?}")));
        }
        let header = |name: &str| reply.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(Some(Listed {
            key: key.to_string(),
            bytes: header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0),
            etag: header("etag").map(|e| e.trim_matches('"').to_string()),
        }))
    }

    /// Starts a multipart upload of `key`; its id.
    pub async fn create_multipart(&self, key: &str) -> Result<String, StoreError> {
        let url = self.bucket.create_multipart_upload(Some(&self.keys), key).sign(Duration::from_secs(60));
        let reply = self.http.post(url).send().await.map_err(|e| self.unreachable(e))?;
        if !reply.status().is_success() {
            return Err(self.refused(reply.status(), &format!("a multipart upload of {key:?}")));
        }
        let text = reply.text().await.map_err(|e| self.unreachable(e))?;
        let answer = CreateMultipartUpload::parse_response(&text).map_err(|e| StoreError::Invalid {
            bucket: self.bucket.name().to_string(),
            message: format!("an unreadable multipart answer: {e}"),
        })?;
        Ok(answer.upload_id().to_string())
    }

    /// Completes a multipart upload from its parts' ETags, in part order.
    pub async fn complete_multipart(&self, key: &str, upload_id: &str, etags: &[String]) -> Result<(), StoreError> {
        let action =
            self.bucket.complete_multipart_upload(Some(&self.keys), key, upload_id, etags.iter().map(String::as_str));
        let url = action.sign(Duration::from_secs(60));
        let reply = self.http.post(url).body(action.body()).send().await.map_err(|e| self.unreachable(e))?;
        if !reply.status().is_success() {
            return Err(self.refused(reply.status(), &format!("completing {key:?}")));
        }
        Ok(())
    }
}
