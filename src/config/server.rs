//! The `server:` section: the Pingora process settings a user can set.

use serde::Deserialize;

/// The subset of Pingora's `ServerConf` a user can set, with defaults that fit systemd.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Worker threads for the proxy; 0 means one per CPU core.
    pub threads: usize,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// File for the error log when running as a daemon (stderr otherwise).
    pub error_log: Option<String>,
    /// Run in the background (same as `-d`).
    pub daemon: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Seconds between the shutdown signal and closing listeners. Pingora defaults to 300 s,
    /// longer than systemd's stop timeout, so we default to 10.
    pub grace_period_seconds: u64,
    /// Seconds in-flight requests get to finish after listeners close.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Idle connections kept per upstream pool.
    pub upstream_keepalive_pool_size: usize,
    /// Let idle worker threads steal tasks from busy ones. Off by default: one single-threaded
    /// runtime per thread avoids cross-thread wake-ups and measured faster on our benchmarks.
    pub work_stealing: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 0,
            pid_file: "/tmp/apigateway.pid".into(),
            upgrade_sock: "/tmp/apigateway_upgrade.sock".into(),
            error_log: None,
            daemon: false,
            user: None,
            group: None,
            grace_period_seconds: 10,
            graceful_shutdown_timeout_seconds: 10,
            upstream_keepalive_pool_size: 128,
            work_stealing: false,
        }
    }
}

impl ServerSettings {
    /// Converts to Pingora's `ServerConf`.
    pub fn to_server_conf(&self) -> pingora::server::configuration::ServerConf {
        let mut conf = pingora::server::configuration::ServerConf {
            threads: if self.threads == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                self.threads
            },
            pid_file: self.pid_file.clone(),
            upgrade_sock: self.upgrade_sock.clone(),
            error_log: self.error_log.clone(),
            daemon: self.daemon,
            user: self.user.clone(),
            group: self.group.clone(),
            grace_period_seconds: Some(self.grace_period_seconds),
            graceful_shutdown_timeout_seconds: Some(self.graceful_shutdown_timeout_seconds),
            upstream_keepalive_pool_size: self.upstream_keepalive_pool_size,
            work_stealing: self.work_stealing,
            ..Default::default()
        };
        // Retries are decided per service in the proxy; this is only Pingora's outer bound.
        conf.max_retries = 16;
        conf
    }
}
