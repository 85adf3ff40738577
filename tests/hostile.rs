//! Slow and hostile clients over raw sockets: a trickled request head or body, idle keep-alive
//! connections, more connections than allowed, and thousands of idle ones. Deadlines are
//! lowered to a second so each case ends in a few seconds; timings are asserted with wide
//! margins (the machine is shared) but each case fails if the deadline is not enforced.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

async fn site(client: &str) -> (EchoServer, Gateway) {
    let open = EchoServer::start("open", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "client: {client}\nservices:\n  open: {{backends: ['{}']}}\n\
         routes:\n  - {{path: /api/open, service: open}}\n",
        open.addr
    ));
    (open, gw)
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    stream
}

/// Reads until the gateway closes the connection (8 s at most).
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `head` then one byte of `trickle` every 100 ms from another thread, until the gateway
/// closes or the bytes run out; returns what the gateway answered and when it closed.
fn trickle(port: u16, head: &str, trickle: &'static [u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = connect(port);
    stream.write_all(head.as_bytes()).expect("write head");
    let mut writer = stream.try_clone().expect("clone");
    let feeder = std::thread::spawn(move || {
        for byte in trickle {
            std::thread::sleep(Duration::from_millis(100));
            if writer.write_all(std::slice::from_ref(byte)).is_err() {
                return;
            }
        }
    });
    let answer = read_until_closed(&mut stream);
    let closed = started.elapsed();
    drop(stream);
    let _ = feeder.join();
    (answer, closed)
}

const LONG_TRICKLE: &[u8] = &[b'a'; 80];

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_head_is_cut_at_the_header_deadline_while_others_are_served() {
    let (open, gw) = site("{header_timeout: 1s}").await;
    let port = gw.port;
    let slow = tokio::task::spawn_blocking(move || {
        trickle(
            port,
            "GET /api/open/slow HTTP/1.1\r\nHost: t\r\nX-Pad: ",
            LONG_TRICKLE,
        )
    });
    // Other clients are served normally while the slow head trickles.
    for _ in 0..5 {
        let (status, _, _) = send(client().get(gw.url("/api/open/fast"))).await;
        assert_eq!(status, 200);
    }
    let (answer, closed) = slow.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""error":"Request timed out""#),
        "{answer}"
    );
    // Each byte arrived well within Pingora's per-read timeout; only a whole-head deadline
    // stops this before the 8 s the trickle lasts.
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    assert_eq!(
        open.requests(),
        5,
        "the slow request must never reach the upstream"
    );

    // A connection that sends nothing at all is closed at the same deadline, silently.
    let started = Instant::now();
    let mut idle = connect(gw.port);
    assert_eq!(read_until_closed(&mut idle), "");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_or_trickled_body_is_cut_with_408() {
    let (_open, gw) = site("{body_timeout: 1s, body_deadline: 2s}").await;
    let port = gw.port;
    // Stalled: 10 of 100 bytes, then nothing; the per-read body timeout fires.
    let stalled = tokio::task::spawn_blocking(move || {
        trickle(
            port,
            "POST /api/open/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789",
            &[],
        )
    })
    .await
    .unwrap();
    assert!(stalled.0.starts_with("HTTP/1.1 408"), "{}", stalled.0);
    assert!(stalled.1 < Duration::from_secs(4), "{:?}", stalled.1);

    // Trickled: a byte every 100 ms never trips the per-read timeout; the body deadline does.
    let trickled = tokio::task::spawn_blocking(move || {
        trickle(
            port,
            "POST /api/open/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 80\r\n\r\n",
            LONG_TRICKLE,
        )
    })
    .await
    .unwrap();
    assert!(trickled.0.starts_with("HTTP/1.1 408"), "{}", trickled.0);
    assert!(
        trickled.1 >= Duration::from_millis(1900),
        "{:?}",
        trickled.1
    );
    assert!(trickled.1 < Duration::from_secs(5), "{:?}", trickled.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connections_are_closed_after_the_keepalive_timeout() {
    let (_open, gw) = site("{keepalive_timeout: 1s}").await;
    let mut stream = connect(gw.port);
    stream
        .write_all(b"GET /api/open/a HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Still open and reusable right after the answer...
    stream
        .write_all(b"GET /api/open/b HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let n = stream.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // ...and closed by the gateway once idle for the keep-alive timeout.
    let idle_from = Instant::now();
    assert_eq!(stream.read(&mut buf).unwrap_or(0), 0);
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(900), "{idle:?}");
    assert!(idle < Duration::from_secs(4), "{idle:?}");
}

/// Opens `n` keep-alive connections that each completed one request, so the gateway holds them.
fn idle_connections(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = connect(port);
            s.write_all(b"GET /api/open/x HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_get_503_and_slots_free_up() {
    let (_open, gw) = site("{max_connections: 5}").await;
    let port = gw.port;
    let mut held = tokio::task::spawn_blocking(move || idle_connections(port, 5))
        .await
        .unwrap();
    let answer = raw_request(gw.port, b"GET /api/open/x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(
        answer.contains(r#""error":"Too many connections""#),
        "{answer}"
    );
    held.pop();
    let freed = eventually(Duration::from_secs(5), || async {
        let answer = raw_request(
            port,
            b"GET /api/open/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        answer.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(freed, "a closed connection must free its slot");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// struct rlimit on Linux.
#[repr(C)]
struct Rlimit {
    cur: u64,
    max: u64,
}

unsafe extern "C" {
    fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
    fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
}

/// Raises this process's open-file soft limit towards `want` (as far as the hard limit
/// allows; the gateway started afterwards inherits it) and returns the soft limit in force.
fn raise_open_files(want: u64) -> u64 {
    const RLIMIT_NOFILE: i32 = 7;
    let mut lim = Rlimit { cur: 0, max: 0 };
    // SAFETY: plain libc calls with a correctly laid out struct rlimit.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.cur < want {
            let raised = Rlimit {
                cur: want.min(lim.max),
                max: lim.max,
            };
            if setrlimit(RLIMIT_NOFILE, &raised) == 0 {
                lim.cur = raised.cur;
            }
        }
    }
    lim.cur
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_idle_connections_cost_bounded_memory() {
    // 2,000 connections need 2,000 descriptors here and in the gateway, which inherits this
    // limit; 300 stay spare for tests running in parallel. A low hard limit tests fewer.
    let n = (raise_open_files(4096).saturating_sub(300) as usize).min(2000);
    assert!(n >= 500, "open-file limit too low for this test");
    let (_open, gw) = site("{}").await;
    let port = gw.port;
    let warm = tokio::task::spawn_blocking(move || idle_connections(port, 50))
        .await
        .unwrap();
    let before = rss_kib(gw.pid());
    let held = tokio::task::spawn_blocking(move || idle_connections(port, n))
        .await
        .unwrap();
    let after = rss_kib(gw.pid());
    let per_connection = (after.saturating_sub(before)) as f64 / n as f64;
    // A connection holds its socket, its task and a 4 KiB head buffer at most.
    assert!(
        per_connection < 24.0,
        "{per_connection:.1} KiB per idle connection"
    );
    let (status, _, _) = send(client().get(gw.url("/api/open/still"))).await;
    assert_eq!(status, 200);
    drop((warm, held));
}
