//! A real DNS server for discovery tests: Debian's `dnsmasq` on an ephemeral loopback port,
//! answering from a hosts file the test rewrites (a `SIGHUP` makes it read the file again).

use super::free_port;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct DnsServer {
    pub port: u16,
    hosts: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    /// Starts serving `hosts` (lines of `ip name`) and waits until it accepts connections.
    pub fn start(hosts: &str) -> DnsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        std::fs::write(&path, hosts).expect("write hosts");
        let port = free_port();
        let binary = ["/usr/sbin/dnsmasq", "dnsmasq"]
            .into_iter()
            .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
            .unwrap_or("dnsmasq");
        let child = Command::new(binary)
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .args(["--no-resolv", "--no-hosts", "--bind-interfaces"])
            .arg("--listen-address=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", path.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg("--user=root")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (make test installs dnsmasq-base)");
        let server = DnsServer {
            port,
            hosts: path,
            child: Some(child),
            _dir: dir,
        };
        // dnsmasq listens on TCP and UDP together: a TCP accept means it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `ip:port` for the gateway's `resolver.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the hosts file and makes dnsmasq read it.
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("write hosts");
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Stops the server (the port then refuses queries).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
