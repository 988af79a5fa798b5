//! The widget in a real headless Chromium, driven over the DevTools protocol: a page on another origin embeds the
//! widget with one script tag; the test fills the form, submits, and sees the status element follow the request's
//! states as the (test double) service moves it. Keeps a screenshot in `test-artifacts/web_widget.png`.
//!
//! Needs `chromium` (`apt-get install -y chromium`); without it the test says so and passes vacuously.

#[path = "web_support/browser.rs"]
mod browser;
mod web_support;

use std::net::SocketAddr;

use browser::{chromium, launch};
use rappel::callback::{Input, Leg};
use rappel::web::router;
use serde_json::json;

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

    cdp.screenshot("web_widget.png").await;

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
