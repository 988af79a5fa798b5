//! Running the built `click_to_call` example as a separate process: start it on a free HTTP port, wait until
//! `/healthz` answers, talk to its API, stop it with SIGTERM (by the PID we started) and read what it printed.
//!
//! The binary is `target/<profile>/examples/click_to_call`, found from the test binary's path. `cargo test
//! --all-targets` compiles examples only as test harnesses, so `scripts/test.sh` runs `cargo build --examples`
//! first; a missing binary, or one older than the sources, fails the test with that advice rather than testing
//! stale code.

#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Upper bound of any wait on the process.
pub const WAIT: Duration = Duration::from_secs(60);

/// `target/<profile>/examples/click_to_call`.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = profile.join("examples").join("click_to_call");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} not built: run `cargo build --example click_to_call`",
                bin.display()
            )
        });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let newest =
        newest_mtime(&root.join("src")).max(newest_mtime(&root.join("examples/click_to_call.rs")));
    assert!(
        newest.is_none_or(|t| t <= built),
        "{} is older than the sources: run `cargo build --example click_to_call`",
        bin.display()
    );
    bin
}

/// The newest modification time of a file or of the files under a directory.
fn newest_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// A free TCP port on loopback (bound, then released for the child to take).
pub fn free_http() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// The running example.
pub struct Server {
    child: Child,
    /// Its HTTP address.
    pub http: SocketAddr,
}

impl Server {
    /// Starts the example with `args` plus `--http <free port>`; waits for `/healthz` (bounded).
    pub async fn start(args: &[&str]) -> Server {
        let http = free_http();
        let child = Command::new(binary())
            .args(args)
            .args(["--http", &http.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start click_to_call");
        let mut server = Server { child, http };
        let client = reqwest::Client::new();
        let url = format!("http://{http}/healthz");
        for _ in 0..600 {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return server;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let (out, err) = server.output();
                panic!("click_to_call exited with {status}: {out}\n{err}");
            }
            // An outside process starting up: nothing to await but its socket.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("click_to_call did not answer /healthz within 30 s");
    }

    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// POSTs a JSON body to `/api/callbacks`: status and JSON answer.
    pub async fn submit(&self, body: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.url("/api/callbacks"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GET as JSON.
    pub async fn get(&self, path: &str) -> Value {
        reqwest::Client::new()
            .get(self.url(path))
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .expect("JSON")
    }

    /// GET as text.
    pub async fn get_text(&self, path: &str) -> String {
        reqwest::Client::new()
            .get(self.url(path))
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("text")
    }

    /// Polls `GET /api/callbacks/{id}` until the request is final (bounded by [`WAIT`]); returns the last view.
    pub async fn until_final(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.get(&format!("/api/callbacks/{id}")).await;
            if v["final"] == Value::Bool(true) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "request not final in time: {v}"
            );
            // Polling an outside process's HTTP API, as a browser would.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, wait for the exit (bounded); returns the exit code and stdout.
    pub async fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "click_to_call did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (out, _) = self.output();
        (code, out)
    }

    fn output(&mut self) -> (String, String) {
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(o) = self.child.stdout.as_mut() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        (out, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The event kinds of a request view, oldest first.
pub fn kinds(view: &Value) -> Vec<String> {
    view["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `rtp_sent` and `rtp_received` of the demo phone line starting with `prefix` in the example's output.
pub fn phone_rtp(out: &str, prefix: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {out}"));
    let field = |name: &str| -> u64 {
        let mut it = line.split_whitespace();
        it.find(|w| *w == name);
        it.next().and_then(|v| v.parse().ok()).expect("counter")
    };
    (field("rtp_sent"), field("rtp_received"))
}
