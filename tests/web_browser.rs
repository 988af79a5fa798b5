//! The widget in a real headless Chromium, driven over the DevTools protocol: a page on another origin embeds the
//! widget with one script tag; the test fills the form, submits, and sees the status element follow the request's
//! states as the (test double) service moves it. Keeps a screenshot in `test-artifacts/web_widget.png`.
//!
//! Needs `chromium` (`apt-get install -y chromium`); without it the test says so and passes vacuously.

mod web_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use rappel::callback::{Input, Leg};
use rappel::web::router;
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

    /// Polls `expr` until it is true (at most 200 tries, 50 ms apart: the page works asynchronously).
    async fn wait_for(&mut self, expr: &str) {
        for _ in 0..200 {
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

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_embedded_cross_origin_follows_the_request() {
    let Some(exe) = chromium() else {
        eprintln!("chromium not installed: browser test not run (apt-get install -y chromium)");
        return;
    };
    let fake = web_support::FakeService::new(web_support::wall());
    let state = rappel::web::WebState::new(fake.clone(), web_support::config()).unwrap();
    let rappel_addr = serve(router(state)).await;
    // The customer's site: another origin that embeds the widget with one script tag.
    let page = format!(
        "<!doctype html><html><head><title>Shop</title></head><body><h1>Shop</h1>\
         <script src=\"http://{rappel_addr}/widget.js\" data-rappel-endpoint=\"http://{rappel_addr}\"></script>\
         </body></html>"
    );
    let site = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let site_addr = serve(site).await;

    let (_browser, mut cdp) = launch(&exe).await;
    cdp.call(
        "Page.navigate",
        json!({ "url": format!("http://{site_addr}/") }),
    )
    .await;
    cdp.wait_for("!!document.querySelector('[data-rappel=\"topic\"]') && document.querySelector('[data-rappel=\"topic\"]').tagName === 'SELECT'")
        .await;
    for part in ["phone", "when", "topic", "submit", "status"] {
        let q = format!("!!document.querySelector('[data-rappel=\"{part}\"]')");
        assert_eq!(cdp.eval(&q).await, json!(true), "{part}");
    }
    cdp.eval(
        "(() => {
            document.querySelector('[data-rappel=\"open\"]').click();
            document.querySelector('[data-rappel=\"phone\"]').value = '06 12 34 56 78';
            document.querySelector('[data-rappel=\"topic\"]').value = 'sales';
            document.querySelector('[data-rappel=\"submit\"]').click();
            return true;
        })()",
    )
    .await;
    cdp.wait_for("document.querySelector('[data-rappel=\"status\"]').textContent.includes('calling_visitor')")
        .await;
    assert_eq!(fake.dialled_visitors(), vec!["+33612345678".to_owned()]);

    let rid = fake.ids()[0];
    fake.input(rid, Input::VisitorAnswered);
    cdp.wait_for(
        "document.querySelector('[data-rappel=\"status\"]').textContent.includes('calling_agent')",
    )
    .await;
    fake.input(rid, Input::AgentAnswered);
    fake.input(rid, Input::PlaybackFinished(Leg::Agent));
    cdp.wait_for(
        "document.querySelector('[data-rappel=\"status\"]').textContent.includes('connected')",
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
    std::fs::write(dir.join("web_widget.png"), png).unwrap();

    fake.input(rid, Input::AgentHungUp);
    cdp.wait_for(
        "document.querySelector('[data-rappel=\"status\"]').textContent.includes('completed')",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_and_admin_page() {
    let Some(exe) = chromium() else {
        eprintln!("chromium not installed: browser test not run (apt-get install -y chromium)");
        return;
    };
    let fake = web_support::FakeService::new(web_support::wall());
    let state = rappel::web::WebState::new(fake.clone(), web_support::config()).unwrap();
    let addr = serve(router(state)).await;
    let (_browser, mut cdp) = launch(&exe).await;

    // The demo page at / carries the widget (same origin, under its Content-Security-Policy).
    cdp.call("Page.navigate", json!({ "url": format!("http://{addr}/") }))
        .await;
    cdp.wait_for("!!document.querySelector('[data-rappel-widget] [data-rappel=\"phone\"]')")
        .await;
    cdp.eval(
        "(() => {
            document.querySelector('[data-rappel=\"phone\"]').value = '+33 6 98 76 54 32';
            document.querySelector('[data-rappel=\"submit\"]').click();
            return true;
        })()",
    )
    .await;
    cdp.wait_for("document.querySelector('[data-rappel=\"status\"]').textContent.includes('calling_visitor')")
        .await;
    // A second request, straight to the service, that ends missed (the visitor hangs up while held).
    let missed = rappel::web::CallbackApi::submit(
        &*fake,
        rappel::callback::NewRequest {
            phone: "+33611223344".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .id;
    fake.input(missed, Input::VisitorAnswered);
    fake.input(missed, Input::VisitorHungUp);

    cdp.call(
        "Page.navigate",
        json!({ "url": format!("http://{addr}/admin") }),
    )
    .await;
    cdp.wait_for("!!document.querySelector('[data-rappel=\"token\"]')")
        .await;
    cdp.eval(
        "(() => {
            document.querySelector('[data-rappel=\"token\"]').value = 'secret-token';
            document.querySelector('[data-rappel=\"login\"] button').click();
            return true;
        })()",
    )
    .await;
    cdp.wait_for("document.querySelectorAll('[data-rappel=\"requests\"] tbody tr').length === 2")
        .await;
    let rows = cdp
        .eval("Array.from(document.querySelectorAll('[data-rappel=\"requests\"] tbody tr')).map(r => [r.getAttribute('data-state'), r.children[1].textContent, r.children[5].textContent])")
        .await;
    assert_eq!(rows[0][0], "missed", "{rows}");
    assert_eq!(rows[0][1], "+33611223344");
    assert!(
        rows[0][2].as_str().unwrap().contains("the visitor hung up"),
        "{rows}"
    );
    assert_eq!(rows[1][0], "calling_visitor");
    assert_eq!(rows[1][1], "+33698765432");
}
