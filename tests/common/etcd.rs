//! A real etcd server (Debian's `etcd-server`) on ephemeral loopback ports in a temporary
//! directory, and `etcdctl` as an independent client.

use super::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdServer {
    pub port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `root:PASSWORD` once authentication is on.
    user: Option<String>,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        let mut e = EtcdServer {
            port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            user: None,
        };
        e.restart();
        e
    }

    /// `127.0.0.1:PORT`, as a gateway's `endpoints` lists it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts etcd on the same ports and data, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (make test installs etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ctl(&["endpoint", "health"], None).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not become healthy on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `etcdctl ARGS` (value on stdin when given); stdout, or stderr as the error.
    pub fn ctl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(), "--dial-timeout", "1s"])
            .args(self.user.iter().flat_map(|u| ["--user", u.as_str()]))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl (make test installs etcd-client)");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// Turns authentication on, with a `root` user of `password`.
    #[allow(dead_code)]
    pub fn enable_auth(&mut self, password: &str) {
        let add = ["user", "add", "root", "--interactive=false"];
        self.ctl(&add, Some(&format!("{password}\n")))
            .expect("user add");
        self.ctl(&["user", "grant-role", "root", "root"], None)
            .expect("grant");
        self.ctl(&["auth", "enable"], None).expect("auth enable");
        self.user = Some(format!("root:{password}"));
    }

    /// Puts `value` at `key`.
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key], Some(value)).expect("etcdctl put");
    }

    /// The values under `prefix`.
    pub fn values(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", "--print-value-only", prefix], None)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
