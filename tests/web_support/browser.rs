//! A minimal headless-Chromium driver over the DevTools protocol, shared by the browser tests
//! (`tests/web_browser.rs`, `tests/click_to_call_browser.rs`; each includes it with
//! `#[path = "web_support/browser.rs"] mod browser;`; `tests/webrtc_browser.rs` adds fake-media flags): find the browser, launch it on a fresh profile, evaluate
//! expressions in the page, wait for a condition (60 s at most), take screenshots.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The first Chromium (or Chrome) on `PATH`. A browser test without one fails (`scripts/test.sh` installs it),
/// unless `RAPPEL_SKIP_BROWSER=1` says to skip it: then `None`.
pub fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() && std::env::var("RAPPEL_SKIP_BROWSER").as_deref() != Ok("1") {
        panic!("chromium is not installed: run scripts/test.sh (it installs it), or set RAPPEL_SKIP_BROWSER=1 to skip");
    }
    found
}

/// The browser process; killed (by its own handle) when dropped.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal DevTools client over one WebSocket, using one flattened page session.
pub struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    /// Sends one DevTools command (on the page session once attached) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to browser");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("browser answers within 20 s")
                .expect("socket open")
                .expect("frame");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).expect("JSON from browser");
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Sends one DevTools command without waiting for its answer (for commands that may never answer, like
    /// `Page.crash`).
    pub async fn fire(&mut self, method: &str, params: Value) {
        self.next += 1;
        let mut msg = json!({ "id": self.next, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to browser");
    }

    /// Evaluates an expression in the page and returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true (50 ms apart, for at most 60 s: the page works asynchronously, and a loaded
    /// 2-core CI machine can be slow to render).
    pub async fn wait_for(&mut self, expr: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if self.eval(expr).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = self
            .eval("String(document.querySelector('[data-rappel=\"status\"]')?.textContent)")
            .await;
        panic!("timed out waiting for {expr}; status is {status}");
    }

    /// Takes a PNG screenshot of the page, checks it is a PNG and keeps it as `test-artifacts/{name}`.
    pub async fn screenshot(&mut self, name: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"));
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// Starts headless Chromium `exe` on a fresh profile and attaches to a new blank page.
pub async fn launch(exe: &PathBuf) -> (Browser, Cdp) {
    launch_with(exe, &[]).await
}

/// [`launch`] with extra command-line flags (e.g. the fake microphone of the WebRTC test).
pub async fn launch_with(exe: &PathBuf, extra: &[&str]) -> (Browser, Cdp) {
    let profile = tempfile::tempdir().expect("profile dir");
    let child = Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=800,600",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let browser = Browser {
        child,
        _profile: profile,
    };
    // Chromium writes the port it chose and the browser target's path here.
    let port_file = browser._profile.path().join("DevToolsActivePort");
    let mut text = String::new();
    for _ in 0..300 {
        if let Ok(t) = std::fs::read_to_string(&port_file) {
            if t.lines().count() >= 2 {
                text = t;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lines = text.lines();
    let port = lines
        .next()
        .expect("DevToolsActivePort written within 15 s");
    let path = lines.next().expect("browser path");
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
        .await
        .expect("DevTools socket");
    let mut cdp = Cdp {
        ws,
        next: 0,
        session: None,
    };
    let target = cdp
        .call("Target.createTarget", json!({ "url": "about:blank" }))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )
        .await;
    cdp.session = attached["sessionId"].as_str().map(str::to_owned);
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Runtime.enable", json!({})).await;
    (browser, cdp)
}
