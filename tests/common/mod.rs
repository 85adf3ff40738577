//! Test harness: real upstreams, the real gateway binary, and an HTTP client.
#![allow(dead_code)]

pub mod dns;
pub mod echo;
pub mod etcd;
pub mod origin;
pub mod otlp;
pub mod pki;
pub mod ports;
pub mod tokens;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use echo::EchoServer;

/// An HS256 token with key id `k`, signed with `secret`: `claims` plus a 10-minute `exp`.
/// Minted here with jsonwebtoken's encoder, independently of the gateway's verifier.
pub fn hs256_token(secret: &str, mut claims: serde_json::Value) -> String {
    claims["exp"] = serde_json::json!(jsonwebtoken::get_current_timestamp() + 600);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// A gateway with one echo upstream and `routes` (YAML list items) under `extra` sections.
pub async fn echo_gateway(extra: &str, routes: &str) -> (EchoServer, Gateway) {
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  up: {{backends: ['{}']}}\n{extra}routes:\n{routes}",
        up.addr
    ));
    (up, gw)
}

/// A free loopback port reserved for this test process (see [`ports`]).
pub fn free_port() -> u16 {
    ports::reserve()
}

/// An address nothing listens on: bound once, then closed.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_apigateway")
}

/// Writes `yaml` into a fresh directory and returns (dir, path).
pub fn write_config(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (dir, path)
}

/// Runs `apigateway -t -c FILE` and returns (exit success, stdout + stderr).
pub fn check_config(yaml: &str) -> (bool, String, PathBuf) {
    let (dir, path) = write_config(yaml);
    let out = Command::new(binary())
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .expect("run apigateway -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(dir);
    (out.status.success(), text, path)
}

/// The gateway binary running with a test config; killed when dropped.
/// The config file a test gateway runs with: test server settings, the listener, then `body`.
fn config_text(dir: &std::path::Path, port: u16, body: &str) -> String {
    // Tests run in parallel: no admin listener on the fixed default port unless asked.
    let admin = if body.contains("admin:") {
        ""
    } else {
        "admin: {listen: null}\n"
    };
    format!(
        "server:\n  threads: 2\n  pid_file: {d}/gw.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\nlisten: ['127.0.0.1:{port}']\n{admin}{body}",
        d = dir.display()
    )
}

/// The addresses to connect to for the listeners `config` names (`listen:`, `tls.listen:`
/// and `admin.listen:`; an unspecified address by loopback, port 0 aside).
fn listen_addrs(config: &str) -> Vec<std::net::SocketAddr> {
    let doc: serde_yaml::Value = serde_yaml::from_str(config).unwrap_or_default();
    [
        &doc["listen"],
        &doc["tls"]["listen"],
        &doc["admin"]["listen"],
    ]
    .into_iter()
    .flat_map(|l| match l {
        serde_yaml::Value::Sequence(items) => items.iter().collect(),
        one => vec![one],
    })
    .filter_map(|a| a.as_str()?.parse::<std::net::SocketAddr>().ok())
    .filter(|a| a.port() != 0)
    .map(|mut a| {
        if a.ip().is_unspecified() {
            a.set_ip(match a {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        a
    })
    .collect()
}

pub struct Gateway {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway with `body` (everything except `server:` and `listen:`), and waits
    /// until it accepts connections.
    pub fn start(body: &str) -> Gateway {
        Self::start_with_files(body, &[])
    }

    /// Like [`Gateway::start`], with `files` (name, contents) written beside the config first.
    pub fn start_with_files(body: &str, files: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write file");
        }
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, config_text(dir.path(), port, body)).expect("write config");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn apigateway");
        let mut gw = Gateway { child, port, dir };
        gw.wait_ready();
        gw
    }

    /// Stops the process and starts it again on the same config file and port.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("stderr.log"))
            .expect("log file");
        self.child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.path().join("gateway.yaml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn apigateway");
        self.wait_ready();
    }

    /// Rewrites the config file with a new `body` (same server and listen settings).
    pub fn rewrite_config(&self, body: &str) {
        let text = config_text(self.dir.path(), self.port, body);
        std::fs::write(self.dir.path().join("gateway.yaml"), text).expect("write config");
    }

    /// Sends a signal (`HUP`, `QUIT`, ...) to the gateway process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// The gateway's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway's working directory (config, logs).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Waits until every listener of the config accepts: Pingora starts the TLS listener as a
    /// service of its own, which may open after the plaintext one.
    fn wait_ready(&mut self) {
        let config =
            std::fs::read_to_string(self.dir.path().join("gateway.yaml")).expect("config file");
        let mut waiting = listen_addrs(&config);
        // Also when the YAML did not parse here (a test's own quirks): the plaintext port.
        waiting.push(std::net::SocketAddr::from(([127, 0, 0, 1], self.port)));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited early ({status}):\n{}", self.stderr());
            }
            waiting.retain(|addr| TcpStream::connect(addr).is_err());
            if waiting.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "gateway did not listen on {waiting:?} within 20 s:\n{}",
            self.stderr()
        );
    }

    /// The gateway's log output so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(self.dir.path().join("stderr.log"))
            .and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that never reuses connections across tests and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The Prometheus text of the admin listener on `admin_port`.
#[allow(dead_code)]
pub async fn metrics_text(admin_port: u16) -> String {
    client()
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body")
}

/// Sends a request and returns (status, headers, JSON body or Null).
pub async fn send(
    req: reqwest::RequestBuilder,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

/// Polls `f` every 50 ms until it returns true or `limit` passes; returns the last result.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends raw bytes on a fresh connection and returns everything the gateway answers until it
/// closes or 5 s pass. For requests an HTTP client library would refuse or normalize.
pub fn raw_request(port: u16, request: &[u8]) -> String {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One complete response is all these tests need.
                if response_complete(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn response_complete(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..head_end]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    data.len() >= head_end + 4 + length
}

/// A loopback HTTP server answering every request with a replaceable JSON body, counting
/// requests; used as a JWKS endpoint. Stops accepting when dropped or stopped.
pub struct JsonServer {
    pub addr: SocketAddr,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl JsonServer {
    pub async fn start(body: String) -> JsonServer {
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let body = std::sync::Arc::new(std::sync::Mutex::new(body));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let text = b.lock().unwrap().clone();
                        async move {
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(hyper::body::Bytes::from(text)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JsonServer {
            addr,
            body,
            hits,
            task: Some(task),
        }
    }

    pub fn set_body(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops accepting connections (the port then refuses).
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Absolute path of a test fixture.
pub fn fixture(rel: &str) -> String {
    format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// A real `redis-server` on an ephemeral loopback port, without persistence; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    /// (Re)starts the server on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    fn ping(&self) -> bool {
        use std::io::Write;
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client whose connections come from `ip` (any 127.x address works on loopback).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}
