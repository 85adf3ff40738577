//! HTTP/2 robustness against an independent client that writes raw frames (h2c with prior
//! knowledge): a bad preface, and the known floods — rapid reset (CVE-2023-44487),
//! CONTINUATION without END_HEADERS (CVE-2024-27316 family), PING and SETTINGS floods, and a
//! zero-window stall. Each must be closed or bounded while the gateway's CPU and memory stay
//! bounded and other clients are still served. Every loop is bounded.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://a/`: static-table indexes for :method, :scheme, :path and a literal
/// :authority (written by hand: an independent encoder, not the gateway's).
fn get_block() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a']
}

struct Site {
    _up: EchoServer,
    gw: Gateway,
}

async fn site() -> Site {
    let (up, gw) = echo_gateway(
        "h2c: true\nclient: {send_timeout: 2s}\n",
        "  - {path: /, service: up}\n",
    )
    .await;
    Site { _up: up, gw }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Writes `frames` as fast as the socket takes them; how many bytes went before the
/// gateway closed or stopped reading (bounded by `frames`' length).
fn flood(stream: &mut TcpStream, frames: &[u8]) -> usize {
    let mut sent = 0;
    for chunk in frames.chunks(64 * 1024) {
        match stream.write_all(chunk) {
            Ok(()) => sent += chunk.len(),
            Err(_) => break,
        }
    }
    sent
}

/// Reads until the gateway closes (or 5 s pass); whether a GOAWAY frame came.
fn closed_with_goaway(stream: &mut TcpStream) -> bool {
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    // Walk the frames; a GOAWAY is type 7.
    let mut at = 0;
    while at + 9 <= all.len() {
        let len = ((all[at] as usize) << 16) | ((all[at + 1] as usize) << 8) | all[at + 2] as usize;
        if all[at + 3] == 7 {
            return true;
        }
        at += 9 + len;
    }
    false
}

/// A normal HTTP/1.1 request still gets its answer quickly.
async fn others_are_served(gw: &Gateway) {
    let started = Instant::now();
    let (status, _, _) = send(client().get(gw.url("/ok"))).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_preface_is_refused() {
    let site = site().await;
    let mut s = connect(site.gw.port);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    // Closed without serving: no HEADERS frame (type 1) in what came back.
    assert!(
        !got.windows(2).any(|w| w == [HEADERS, END_HEADERS]),
        "{got:?}"
    );
    others_are_served(&site.gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_bounded() {
    let site = site().await;
    let pid = site.gw.pid();
    let mut s = connect(site.gw.port);
    let mut frames = PREFACE.to_vec();
    frames.extend(frame(SETTINGS, 0, 0, &[]));
    // 20,000 streams opened and cancelled at once (RST_STREAM CANCEL = 8).
    for i in 0..20_000u32 {
        let id = 2 * i + 1;
        frames.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &get_block()));
        frames.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let cpu = cpu_seconds(pid);
    flood(&mut s, &frames);
    assert!(
        closed_with_goaway(&mut s),
        "the connection was not closed with GOAWAY"
    );
    let used = cpu_seconds(pid) - cpu;
    assert!(used < 3.0, "rapid reset cost {used:.2} s of CPU");
    others_are_served(&site.gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_without_end_headers_is_bounded() {
    let site = site().await;
    let pid = site.gw.pid();
    let rss = rss_mib(pid);
    let mut s = connect(site.gw.port);
    let mut frames = PREFACE.to_vec();
    frames.extend(frame(SETTINGS, 0, 0, &[]));
    frames.extend(frame(HEADERS, END_STREAM, 1, &get_block()));
    // 64 MiB of header block in CONTINUATION frames, never ending the headers: literal
    // headers with new names, each ~16 KiB.
    let mut fragment = vec![0x00, 0x05, b'x', b'-', b'p', b'a', b'd', 0x7f, 0x81, 0x7f];
    fragment.resize(16 * 1024, b'a');
    for _ in 0..4096 {
        frames.extend(frame(CONTINUATION, 0, 1, &fragment));
    }
    let sent = flood(&mut s, &frames);
    let _ = closed_with_goaway(&mut s);
    assert!(
        sent < frames.len(),
        "the gateway read all {} bytes of an endless header block",
        frames.len()
    );
    let grown = rss_mib(pid) - rss;
    assert!(grown < 64.0, "memory grew by {grown:.1} MiB");
    others_are_served(&site.gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_are_bounded() {
    let site = site().await;
    let pid = site.gw.pid();
    for kind in [PING, SETTINGS] {
        let rss = rss_mib(pid);
        let cpu = cpu_seconds(pid);
        let mut s = connect(site.gw.port);
        let mut frames = PREFACE.to_vec();
        frames.extend(frame(SETTINGS, 0, 0, &[]));
        // 200,000 frames, never reading the acknowledgements.
        let payload: &[u8] = if kind == PING { &[0; 8] } else { &[] };
        for _ in 0..200_000 {
            frames.extend(frame(kind, 0, 0, payload));
        }
        flood(&mut s, &frames);
        drop(s);
        let grown = rss_mib(pid) - rss;
        let used = cpu_seconds(pid) - cpu;
        assert!(grown < 64.0, "kind {kind}: memory grew by {grown:.1} MiB");
        assert!(used < 5.0, "kind {kind}: {used:.2} s of CPU");
        others_are_served(&site.gw).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_stream_is_reset_after_the_send_timeout() {
    let site = site().await;
    let mut s = connect(site.gw.port);
    let mut frames = PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 0: no response body may be sent until a window
    // update, which never comes.
    frames.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    frames.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()));
    s.write_all(&frames).unwrap();
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    // Bounded: until the stream is reset (RST_STREAM on stream 1), the connection goes away
    // (GOAWAY or close), or 15 s pass.
    'read: while started.elapsed() < Duration::from_secs(15) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let mut at = 0;
        while at + 9 <= got.len() {
            let len =
                ((got[at] as usize) << 16) | ((got[at + 1] as usize) << 8) | got[at + 2] as usize;
            let stream = u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]]);
            if got[at + 3] == 7 || (got[at + 3] == RST_STREAM && stream == 1) {
                break 'read;
            }
            at += 9 + len;
        }
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "a stalled reader held on for {waited:?}"
    );
    others_are_served(&site.gw).await;
}

/// Sends `frames` after the preface and a SETTINGS, and reads what comes back until the
/// gateway closes or goes quiet; the GOAWAY error code, or the RST_STREAM code on stream 1.
fn exchange(port: u16, frames: &[u8]) -> (Option<u32>, Option<u32>) {
    let mut s = connect(port);
    let mut all = PREFACE.to_vec();
    all.extend(frame(SETTINGS, 0, 0, &[]));
    all.extend_from_slice(frames);
    s.write_all(&all).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let (mut goaway, mut reset) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && goaway.is_none() && reset.is_none() {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let mut at = 0;
        while at + 9 <= got.len() {
            let len =
                ((got[at] as usize) << 16) | ((got[at + 1] as usize) << 8) | got[at + 2] as usize;
            if at + 9 + len > got.len() {
                break;
            }
            let body = &got[at + 9..at + 9 + len];
            let stream = u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]]);
            match got[at + 3] {
                7 if body.len() >= 8 => {
                    goaway = Some(u32::from_be_bytes([body[4], body[5], body[6], body[7]]))
                }
                3 if stream == 1 && body.len() >= 4 => {
                    reset = Some(u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
                }
                _ => {}
            }
            at += 9 + len;
        }
    }
    (goaway, reset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_stream_state_and_header_size_errors_are_protocol_errors() {
    let site = site().await;
    let p = site.gw.port;
    // An HPACK index far past both tables: a connection error (RFC 9113 §4.3 names
    // COMPRESSION_ERROR (9); the h2 crate answers PROTOCOL_ERROR (1)).
    let bad_index = frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &[0xff, 0xff, 0xff, 0x7f],
    );
    let goaway = exchange(p, &bad_index).0;
    assert!(matches!(goaway, Some(1) | Some(9)), "{goaway:?}");
    // DATA on a stream never opened (idle): PROTOCOL_ERROR (1) for the connection.
    let idle_data = frame(0, END_STREAM, 3, b"x");
    assert_eq!(exchange(p, &idle_data).0, Some(1));
    // A header list over the limit: refused (the stream reset, or the connection closed),
    // never forwarded.
    let mut block = get_block();
    block.extend([0x00, 0x05]);
    block.extend(b"x-big");
    block.extend([0x7f, 0x81, 0xff, 0x03]); // value length 127 + 0x81 + 0x7f*128... ≈ 65 KiB
    block.resize(block.len() + 65 * 1024, b'a');
    let mut big = Vec::new();
    for (i, chunk) in block.chunks(16 * 1024).enumerate() {
        let last = (i + 1) * 16 * 1024 >= block.len();
        let (kind, flags) = if i == 0 {
            (HEADERS, END_STREAM)
        } else {
            (CONTINUATION, 0)
        };
        big.extend(frame(
            kind,
            flags | if last { END_HEADERS } else { 0 },
            1,
            chunk,
        ));
    }
    let (goaway, reset) = exchange(p, &big);
    assert!(
        goaway.is_some() || reset.is_some(),
        "an oversized header list was accepted"
    );
    assert_eq!(site._up.requests(), 0, "nothing reached the upstream");
    others_are_served(&site.gw).await;
}
