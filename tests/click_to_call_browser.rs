//! The README's demo in a real headless Chromium: the `click_to_call` example in demo mode (in-process demo phones
//! with real SIP and RTP), its page at `/` loaded, the form filled and submitted; the status element must reach
//! `connected`, then `completed` as the demo visitor phone hangs up. Keeps a screenshot of the connected call in
//! `test-artifacts/click_to_call_demo.png`.
//!
//! The DevTools client is the one of `tests/web_browser.rs` (copied: that file belongs to the web layer's tests).
//! Needs `chromium` (`apt-get install -y chromium`); without it the test says so and passes vacuously.

mod click_to_call_common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use click_to_call_common::Server;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// The browser process; killed (by its own handle) when dropped.
struct Browser {
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
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
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

    /// Evaluates an expression in the page and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true (at most `tries` tries, 50 ms apart: the page works asynchronously).
    async fn wait_for(&mut self, expr: &str, tries: u32) {
        for _ in 0..tries {
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
}

async fn launch(exe: &PathBuf) -> (Browser, Cdp) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_callback_reaches_connected_then_completed() {
    let Some(exe) = chromium() else {
        eprintln!("chromium not installed: browser test not run (apt-get install -y chromium)");
        return;
    };
    let server = Server::start(&[]).await;
    let (_browser, mut cdp) = launch(&exe).await;
    cdp.call("Page.navigate", json!({ "url": server.url("/") }))
        .await;
    cdp.wait_for(
        "!!document.querySelector('[data-rappel-widget] [data-rappel=\"phone\"]')",
        200,
    )
    .await;
    cdp.eval(
        "(() => {
            document.querySelector('[data-rappel=\"phone\"]').value = '+33 6 12 34 56 78';
            document.querySelector('[data-rappel=\"submit\"]').click();
            return true;
        })()",
    )
    .await;
    // The demo phones ring 1 s each; the visitor phone hangs up 10 s after answering.
    cdp.wait_for(
        "document.querySelector('[data-rappel=\"status\"]').textContent.includes('connected')",
        400,
    )
    .await;
    let shot = cdp
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("click_to_call_demo.png"), png).unwrap();
    cdp.wait_for(
        "document.querySelector('[data-rappel=\"status\"]').textContent.includes('completed')",
        600,
    )
    .await;
    let (code, out) = server.stop().await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("visitor phone: calls 1 answered 1"), "{out}");
}
