//! The README's demo in a real headless Chromium: the `click_to_call` example in demo mode (in-process demo phones
//! with real SIP and RTP), its page at `/` loaded, the form filled and submitted; the status element must reach
//! `connected`, then `completed` as the demo visitor phone hangs up. Keeps a screenshot of the connected call in
//! `test-artifacts/click_to_call_demo.png`.
//!
//! The DevTools client is the shared one in `tests/web_support/browser.rs`.
//! Needs `chromium` (`apt-get install -y chromium`); without it the test says so and passes vacuously.

#[path = "web_support/browser.rs"]
mod browser;
mod click_to_call_common;

use browser::{chromium, launch};
use click_to_call_common::Server;
use serde_json::json;

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
    cdp.wait_for("!!document.querySelector('[data-rappel-widget] [data-rappel=\"phone\"]')")
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
    )
    .await;
    cdp.screenshot("click_to_call_demo.png").await;
    cdp.wait_for(
        "document.querySelector('[data-rappel=\"status\"]').textContent.includes('completed')",
    )
    .await;
    let (code, out) = server.stop().await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("visitor phone: calls 1 answered 1"), "{out}");
}
