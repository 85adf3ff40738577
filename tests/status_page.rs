//! The admin listener's status page in a real headless Chromium (Debian's `chromium`),
//! driven through the DevTools protocol: it renders the routes and the backends' health of a
//! running gateway, and a backend going down shows within the refresh period.

mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Headless Chromium on `url`, killed when dropped.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .args([
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (make test installs it)");
        Browser { child, profile }
    }

    /// The DevTools port Chromium chose (it writes it into the profile).
    fn port(&self) -> u16 {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next()?.parse().ok())
            {
                return port;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("chromium never opened its DevTools port");
    }

    /// The page's visible text, through `Runtime.evaluate`.
    async fn page_text(&self) -> String {
        let list: Value = client()
            .get(format!("http://127.0.0.1:{}/json/list", self.port()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let Some(ws) = list
            .as_array()
            .and_then(|pages| pages.iter().find(|p| p["type"] == "page"))
            .and_then(|p| p["webSocketDebuggerUrl"].as_str())
        else {
            return String::new();
        };
        let (mut socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
        let ask = json!({"id": 1, "method": "Runtime.evaluate",
            "params": {"expression": "document.body ? document.body.innerText : ''", "returnByValue": true}});
        socket.send(Message::text(ask.to_string())).await.unwrap();
        while let Some(Ok(msg)) = socket.next().await {
            let Ok(answer) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) else {
                continue;
            };
            if answer["id"] == 1 {
                return answer["result"]["result"]["value"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
            }
        }
        String::new()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_routes_and_backend_health_live() {
    let stable = JsonServer::start(r#"{"ok":true}"#.into()).await;
    let mut failing = JsonServer::start(r#"{"ok":true}"#.into()).await;
    let admin = free_port();
    let _gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\n\
         services:\n  api:\n    backends: ['{}', '{}']\n    health_check: {{type: tcp, interval: 200ms, unhealthy_threshold: 1}}\n\
         routes:\n  - {{name: catalog, path: /api, service: api}}\n",
        stable.addr, failing.addr
    ));
    let browser = Browser::open(&format!("http://127.0.0.1:{admin}/"));
    let down = failing.addr.to_string();
    let rendered = eventually(Duration::from_secs(30), || async {
        let text = browser.page_text().await;
        text.contains("catalog") && text.contains(&down) && !text.contains("down")
    })
    .await;
    assert!(
        rendered,
        "page never rendered:\n{}",
        browser.page_text().await
    );

    failing.stop();
    let stopped = Instant::now();
    let shown = eventually(Duration::from_secs(10), || async {
        let text = browser.page_text().await;
        text.lines()
            .any(|l| l.contains(&down) && l.contains("down"))
    })
    .await;
    assert!(
        shown,
        "the backend never showed down:\n{}",
        browser.page_text().await
    );
    // The page refreshes every 2 s; the check takes it out within 200 ms of the next probe.
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
}
