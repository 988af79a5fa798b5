//! What a website owner runs: the click-to-call server (callback service, HTTP API, widget and admin page).
//!
//! ```text
//! cargo run --release --example click_to_call                          # demo: in-process phones, any number
//! cargo run --release --example click_to_call -- --config rappel.toml  # real use (keys: rappel::config)
//! ```
//!
//! - no `--config`: the demo. Three demo phones on loopback (the visitor's and agents alice and bob) with real SIP
//!   and RTP; every valid number rings the demo visitor phone, which answers, talks ten seconds and hangs up.
//! - `--config FILE`: a TOML file (see `rappel::config`); a bad file exits with status 2 and names the key.
//! - `--http ADDR`: serve HTTP there instead (tests use a free port).
//!
//! Ctrl-C (SIGINT) or SIGTERM stops it: calls up are hung up. It prints the RTP totals of the calls
//! that ended (and, in demo mode, the demo phones' counters).

use std::net::SocketAddr;

use rappel::app::{media_totals_line, phone_stats_line, App, AppError};
use rappel::config::{exit_code, Config};

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let (mut config_path, mut http) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--config", Some(v)) => config_path = Some(v),
            ("--http", Some(v)) => match v.parse::<SocketAddr>() {
                Ok(a) => http = Some(a),
                Err(_) => return usage(&format!("--http {v}: expected IP:PORT")),
            },
            (other, _) => return usage(&format!("unexpected argument {other}")),
        }
    }
    let config = match config_path.map(|p| Config::load(p.as_ref())).transpose() {
        Ok(c) => c,
        Err(e) => return exit_code(&e),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let started = match config {
            Some(mut c) => {
                c.http.listen = http.unwrap_or(c.http.listen);
                App::start(&c).await
            }
            None => App::demo(http.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)))).await,
        };
        let app = match started {
            Ok(app) => app,
            Err(AppError::Config(e)) => return exit_code(&e),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
        let url = format!("http://{}/", app.http_addr());
        if app.demo_phones().is_some() {
            println!("rappel click-to-call demo: open {url}");
            println!("demo mode: any country's valid number is accepted and rings the demo visitor phone");
        } else {
            println!("rappel click-to-call: serving {url}");
        }
        stop_signal().await;
        println!("stopping");
        println!("engine rtp: {}", media_totals_line(app.media_totals()));
        if let Some(d) = app.demo_phones() {
            println!("visitor phone: {}", phone_stats_line(d.visitor.stats()));
            for a in &d.agents {
                println!("agent phone {}: {}", a.uri(), phone_stats_line(a.stats()));
            }
        }
        app.shutdown().await;
        0
    })
}

fn usage(problem: &str) -> i32 {
    eprintln!("error: {problem}\nusage: click_to_call [--config FILE] [--http IP:PORT]");
    64
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
