//! The click-to-call app's trunk configuration reaches the engine: a trunk given by host name (resolved through
//! the `[sip] nameservers`, here dnsmasq) with `[trunk.register]`: the app registers with the trunk on start and
//! removes the binding when it shuts down (SIPp as registrar checks the credentials and both Expires values).
//!
//! Needs `sipp` (Debian `sip-tester`) and `dnsmasq` (Debian `dnsmasq-base`); `scripts/test.sh` installs both.

use rappel::app::App;
use rappel::config::Config;
use std::time::Duration;

#[path = "support/sipp.rs"]
mod sipp;

#[path = "support/dns.rs"]
mod dns;

use dns::Dns;
use sipp::{free_port, local, localhost, Sipp};

/// A free `FIRST-LAST` range of 40 ports for RTP.
fn rtp_range() -> String {
    loop {
        let base = free_port(localhost()) & !1;
        if base < 65_000
            && (base..base + 40).all(|p| std::net::UdpSocket::bind((localhost(), p)).is_ok())
        {
            return format!("{base}-{}", base + 39);
        }
    }
}

#[tokio::test]
async fn app_registers_with_a_trunk_by_name_and_unregisters_at_shutdown() {
    let media = free_port(localhost()).to_string();
    let registrar = Sipp::uas(
        &Sipp::scenario("registrar_app.xml"),
        local(free_port(localhost())),
        false,
        &["-m", "1", "-timeout", "60s", "-mp", &media],
    );
    let dns = Dns::start(&["--host-record=trunk.test,127.0.0.1".into()]);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[sip]
listen = "127.0.0.1:0"
nameservers = ["{dns}"]
[trunk]
uri = "sip:trunk.test:{port}"
username = "rappel"
password = "secret"
[trunk.register]
expires = 600
[[agents]]
name = "alice"
uri = "sip:alice@127.0.0.1:5999"
[media]
rtp_ports = "{rtp}"
[http]
listen = "127.0.0.1:0"
[store]
path = {db:?}
"#,
        dns = dns.addr,
        port = registrar.addr.port(),
        rtp = rtp_range(),
        db = dir.path().join("cb.db").display().to_string(),
    );
    let config = Config::parse(&config).expect("valid");
    let app = App::start(&config).await.expect("app starts");
    // `[sip] listen` is UDP and TCP, on the same port.
    tokio::net::TcpStream::connect(app.sip_addrs()[0])
        .await
        .expect("the app listens on TCP too");
    let mut status = app.registration().expect("the app registers");
    let registered = tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.registrations >= 1),
    )
    .await
    .expect("registered in time")
    .map(|s| s.clone())
    .unwrap();
    assert_eq!(registered.failures, 0);
    tokio::time::timeout(Duration::from_secs(20), app.shutdown())
        .await
        .expect("shut down in time");
    assert_eq!(
        status.borrow().last_event,
        Some(rappel::sip::register::RegistrationEvent::Unregistered { removed: true })
    );
    assert_eq!(
        registrar.finish().await,
        0,
        "SIPp saw the challenged REGISTER (600 s) and the removal (0)"
    );
}
