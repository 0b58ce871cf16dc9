//! The agent's side of the Kubernetes API: finding the cluster, labelling its own Node with
//! server-side apply, and posting Events on it. Everything here talks to the API server; what
//! to send is decided by pure functions ([`labels::plan`], [`events::for_outcome`]).
//!
//! - [`connect`] finds the API server: an explicit kubeconfig, the in-cluster service account,
//!   or `~/.kube/config`; none of them means no cluster (the agent then logs what it would do).
//! - [`node`] watches the agent's own Node by name and applies labels only when they differ.
//! - [`events`] posts core/v1 Events on the Node for binds, refusals, restores and failures.
//! - [`pods`] lists and watches the node's pods and its NodeMaintenance, for giving devices back.
//! - [`slices`] publishes the node's DRA devices as ResourceSlices and keeps them published.
//!
//! Every request has a deadline, failures are retried with capped exponential backoff, and the
//! counters in [`ApiStats`] feed `/metrics`.

pub mod events;
pub mod labels;
pub mod node;
pub mod pods;
pub mod slices;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("read the kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("in-cluster config (service account token and KUBERNETES_SERVICE_HOST): {0}")]
    InCluster(String),
    #[error("build the Kubernetes client for {url}: {message}")]
    Client { url: String, message: String },
    #[error("{operation} {path}: {message}")]
    Request { operation: &'static str, path: String, status: Option<u16>, message: String },
    #[error("{operation} {path}: no answer within {timeout:?}")]
    Timeout { operation: &'static str, path: String, timeout: Duration },
}

impl ClusterError {
    /// The HTTP status the API server answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClusterError::Request { status, .. } => *status,
            _ => None,
        }
    }
}

/// Runs one API call with a deadline, counting it; maps kube's error to one naming the call.
pub(crate) async fn call<T>(
    stats: &ApiStats,
    operation: &'static str,
    path: String,
    timeout: Duration,
    write: bool,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClusterError> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    if write {
        stats.writes.fetch_add(1, Ordering::Relaxed);
    }
    let result = match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ClusterError::Timeout { operation, path, timeout }),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(s))) => {
            let message = if s.message.is_empty() { s.reason.clone() } else { s.message.clone() };
            Err(ClusterError::Request { operation, path, status: Some(s.code), message })
        }
        Ok(Err(e)) => Err(ClusterError::Request { operation, path, status: None, message: e.to_string() }),
    };
    if result.is_err() {
        stats.failures.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// Counters of the agent's API traffic, read by `/metrics`.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// Every request sent (reads, watches and writes).
    pub requests: AtomicU64,
    /// Requests that change something: label applies, Events, ConfigMap writes.
    pub writes: AtomicU64,
    /// Requests that failed (error status, no answer, or no connection).
    pub failures: AtomicU64,
}

impl ApiStats {
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Capped exponential backoff with ±20 % jitter: `initial`, 2×, 4×, … up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = crate::deviceplugin::monitor::random() | 1;
        Backoff { initial, max, attempt: 0, seed }
    }

    /// Pure: the delay before retry number `attempt` (0-based), before jitter.
    pub fn base_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
        initial.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(max)
    }

    /// The next delay; each call doubles the base up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = Backoff::base_delay(self.initial, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift: enough to keep a fleet of agents from retrying in step.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let spread = (self.seed % 401) as f64 / 1000.0 + 0.8; // 0.8 ..= 1.2
        base.mul_f64(spread)
    }

    /// Logs a failed request (`what` was being done) and says when to try again.
    pub fn retry_at(&mut self, what: &str, e: &ClusterError) -> tokio::time::Instant {
        let delay = self.next_delay();
        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what}");
        tokio::time::Instant::now() + delay
    }

    /// Failures so far since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Where the API server was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Kubeconfig(PathBuf),
    InCluster,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Kubeconfig(p) => write!(f, "kubeconfig {}", p.display()),
            Source::InCluster => f.write_str("in-cluster service account"),
        }
    }
}

/// Pure: which source to use, in the order kubectl uses: an explicit kubeconfig (flag, then
/// `KUBECONFIG`), the in-cluster service account (`KUBERNETES_SERVICE_HOST` set), then
/// `~/.kube/config` when it exists; `None` means no cluster.
pub fn pick_source(
    flag: Option<&Path>,
    kubeconfig_env: Option<&str>,
    service_host_env: Option<&str>,
    home_config: Option<&Path>,
) -> Option<Source> {
    if let Some(p) = flag {
        return Some(Source::Kubeconfig(p.to_owned()));
    }
    if let Some(p) = kubeconfig_env.filter(|s| !s.is_empty()) {
        // KUBECONFIG may list several files; the first is the one kubectl writes to.
        let first = p.split(':').find(|s| !s.is_empty()).unwrap_or(p);
        return Some(Source::Kubeconfig(PathBuf::from(first)));
    }
    if service_host_env.is_some_and(|s| !s.is_empty()) {
        return Some(Source::InCluster);
    }
    home_config.filter(|p| p.is_file()).map(|p| Source::Kubeconfig(p.to_owned()))
}

/// The source this process would use (see [`pick_source`]).
pub fn source_from_env(flag: Option<&Path>) -> Option<Source> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config"));
    pick_source(
        flag,
        std::env::var("KUBECONFIG").ok().as_deref(),
        std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
        home.as_deref(),
    )
}

/// The `User-Agent` of every request nodeprep sends the API server.
pub const USER_AGENT: &str = concat!("nodeprep/", env!("CARGO_PKG_VERSION"));

/// Builds a client for `source`. A source that is there but broken is an error, never a quiet
/// fall back to no cluster. kube's own retry layer is off: the callers own retries.
pub async fn connect(source: &Source) -> Result<kube::Client, ClusterError> {
    let mut config = match source {
        Source::Kubeconfig(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ClusterError::Kubeconfig { path: path.clone(), message: e.to_string() })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ClusterError::Kubeconfig { path: path.clone(), message: e.to_string() })?
        }
        Source::InCluster => kube::Config::incluster().map_err(|e| ClusterError::InCluster(e.to_string()))?,
    };
    config.default_retry = false;
    // So the API server's audit log and metrics name nodeprep (kube-rs sends no User-Agent).
    config.headers.push((hyper::header::USER_AGENT, hyper::header::HeaderValue::from_static(USER_AGENT)));
    let url = config.cluster_url.to_string();
    kube::Client::try_from(config).map_err(|e| ClusterError::Client { url, message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (i, m) = (Duration::from_millis(200), Duration::from_secs(30));
        let got: Vec<u128> = (0..10).map(|a| Backoff::base_delay(i, m, a).as_millis()).collect();
        assert_eq!(got, vec![200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        assert_eq!(Backoff::base_delay(i, m, 1000), m);
        let mut b = Backoff::new(i, m);
        for a in 0..12 {
            let d = b.next_delay();
            let base = Backoff::base_delay(i, m, a);
            assert!(d >= base.mul_f64(0.79) && d <= base.mul_f64(1.21), "attempt {a}: {d:?} vs {base:?}");
        }
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert!(b.next_delay() <= i.mul_f64(1.21));
    }

    #[test]
    fn source_order_is_flag_env_incluster_home() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("config");
        std::fs::write(&home, "").expect("write");
        let flag = Path::new("/etc/flag.conf");
        assert_eq!(
            pick_source(Some(flag), Some("/a"), Some("10.0.0.1"), Some(&home)),
            Some(Source::Kubeconfig(flag.into()))
        );
        assert_eq!(pick_source(None, Some("/a:/b"), Some("10.0.0.1"), None), Some(Source::Kubeconfig("/a".into())));
        assert_eq!(pick_source(None, Some(""), Some("10.0.0.1"), Some(&home)), Some(Source::InCluster));
        assert_eq!(pick_source(None, None, None, Some(&home)), Some(Source::Kubeconfig(home.clone())));
        assert_eq!(pick_source(None, None, None, Some(&dir.path().join("missing"))), None);
        assert_eq!(pick_source(None, None, Some(""), None), None);
    }
}
