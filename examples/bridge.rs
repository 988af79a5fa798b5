//! Calls two SIP URIs, bridges them, and exits when either hangs up, printing each CDR as a JSON line.
//!
//! ```text
//! cargo run --release --example bridge -- sip:visitor@127.0.0.1:5070 sip:agent@127.0.0.1:5080
//! ```
//! The first party hears our ringback while the second rings. Options: `--proxy IP:PORT` sends both calls
//! through an outbound proxy; `--ring-timeout SECS` (default 30).

use rappel::{BridgeOptions, CallOptions, EarlyMedia, Engine};
use std::net::SocketAddr;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut uris = Vec::new();
    let mut proxy: Option<SocketAddr> = None;
    let mut ring = Duration::from_secs(30);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--proxy" => proxy = Some(args.next().ok_or("--proxy needs IP:PORT")?.parse()?),
            "--ring-timeout" => {
                ring = Duration::from_secs(args.next().ok_or("--ring-timeout needs SECS")?.parse()?)
            }
            _ => uris.push(a),
        }
    }
    let [first, second] = <[String; 2]>::try_from(uris)
        .map_err(|_| "usage: bridge [--proxy IP:PORT] [--ring-timeout SECS] URI1 URI2")?;

    let engine = Engine::builder().outbound_proxy(proxy).start().await?;
    let mut a = engine
        .call(&first, CallOptions::default().ring_timeout(ring))
        .await?;
    let a_ok = a.answered().await;
    let mut b = None;
    if a_ok.is_ok() {
        let opts = CallOptions::default()
            .ring_timeout(ring)
            .early_media(a.id(), EarlyMedia::Ringback);
        let mut leg = engine.call(&second, opts).await?;
        if leg.answered().await.is_ok() {
            let mut bridge = engine.bridge(&a, &leg, BridgeOptions::default()).await?;
            if let Some(cdr) = bridge.ended().await {
                println!("{}", serde_json::to_string(&cdr)?);
            }
        }
        b = Some(leg);
    }
    // Either leg may still be up (e.g. the second never answered): hang up and collect both records.
    for leg in [Some(a), b].into_iter().flatten() {
        let mut leg = leg;
        let _ = leg.hangup().await;
        if let Some(cdr) = leg.ended().await {
            println!("{}", serde_json::to_string(&cdr)?);
        }
    }
    engine.shutdown(rappel::ShutdownMode::HangUp).await;
    Ok(())
}
