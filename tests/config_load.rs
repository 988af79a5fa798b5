//! The TOML configuration: the documented example loads, defaults fill the rest, and every bad file gets a message
//! that names the key and the problem (and exit status 2 through `exit_code`).

use std::io::Write;
use std::time::Duration;

use rappel::callback::Strategy;
use rappel::config::{exit_code, Config, ConfigError, Problem};

const FULL: &str = r#"
[sip]
listen = "127.0.0.1:5060"      # UDP and TCP
[trunk]
uri = "sip:127.0.0.1:5070"
caller_id = "+33100000000"
username = "user"
password = "pass"
[[agents]]
name = "alice"
uri = "sip:alice@127.0.0.1:5080"
skills = ["sales"]
[[agents]]
name = "bob"
uri = "sip:bob@127.0.0.1:5081"
[media]
rtp_ports = "20000-20999"
[http]
listen = "127.0.0.1:8080"
admin_token = "change-me"
[store]
path = "rappel.db"
[callback]
strategy = "agent_first"
visitor_ring_timeout_s = 30
agent_ring_timeout_s = 20
max_attempts = 3
retry_delay_s = 60
max_hold_s = 120
[security]
allowed_countries = ["FR"]
denied_prefixes = ["+3389"]
"#;

const MINIMAL: &str = r#"
[trunk]
uri = "sip:127.0.0.1:5070"
[[agents]]
name = "alice"
uri = "sip:alice@127.0.0.1:5080"
"#;

fn err(text: &str) -> String {
    Config::parse(text)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn the_documented_example_loads() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(FULL.as_bytes()).unwrap();
    let c = Config::load(f.path()).expect("valid");
    assert_eq!(c.sip.listen.port(), 5060);
    assert_eq!(c.trunk.uri, "sip:127.0.0.1:5070");
    assert_eq!(c.trunk.username.as_deref(), Some("user"));
    assert_eq!(c.agents.len(), 2);
    assert_eq!(c.agents[0].skills, ["sales"]);
    assert!(c.agents[1].skills.is_empty());
    assert_eq!(c.media.port_range(), Some((20000, 20999)));
    assert_eq!(c.http.admin_token.as_deref(), Some("change-me"));
    assert_eq!(c.callback.strategy, Strategy::AgentFirst);
    assert_eq!(c.security.allowed_countries, ["FR"]);
    let cc = c.callback_config();
    assert_eq!(cc.flow.caller_id, "+33100000000");
    assert_eq!(cc.flow.visitor_ring_timeout, Duration::from_secs(30));
    assert_eq!(cc.flow.max_hold, Duration::from_secs(120));
    assert_eq!(cc.default_strategy, Strategy::AgentFirst);
    assert_eq!(c.visitor_uri(), "sip:{number}@127.0.0.1:5070");
    let sc = c.service_config();
    assert_eq!(sc.visitor_uri, "sip:{number}@127.0.0.1:5070");
    assert_eq!(sc.agents.len(), 2);
    assert_eq!(sc.callback.flow.max_attempts, 3);
    let agents = c.agent_configs();
    assert_eq!(agents[1].uri, "sip:bob@127.0.0.1:5081");
    assert_eq!(agents[0].max_concurrent, 1);
}

#[test]
fn defaults_fill_a_minimal_file() {
    let c = Config::parse(MINIMAL).expect("valid");
    assert_eq!(c.sip.listen.to_string(), "127.0.0.1:5060");
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.http.admin_token, None);
    assert_eq!(c.http.max_body_bytes, 4096);
    assert_eq!(c.store.path.to_str(), Some("rappel.db"));
    assert_eq!(c.callback.strategy, Strategy::VisitorFirst);
    assert_eq!(c.callback.max_attempts, 3);
    assert_eq!(c.trunk.caller_id, "anonymous");
    assert!(c.security.deny_premium_types);
    assert_eq!(c.service_config().record_dir, None, "recording is opt-in");
    let w = rappel::web::WebConfig::from_config(&c);
    assert_eq!(w.max_body_bytes, 4096);
    assert_eq!(w.ip_rate, (5, Duration::from_secs(60)));
}

#[test]
fn wrong_type_names_the_key() {
    let text = MINIMAL.to_owned() + "[callback]\nmax_attempts = \"three\"\n";
    let e = Config::parse(&text).unwrap_err();
    match &e {
        ConfigError::Parse { key, line, .. } => {
            assert_eq!(key, "callback.max_attempts");
            assert_eq!(*line, Some(8));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string()
            .starts_with("callback.max_attempts (line 8): "),
        "{e}"
    );
}

#[test]
fn out_of_range_values_name_the_key_and_the_bound() {
    let cases = [
        (
            "[callback]\nmax_attempts = 0\n",
            "callback.max_attempts: expected an integer ≥ 1",
        ),
        (
            "[callback]\nmax_hold_s = 0\n",
            "callback.max_hold_s: expected an integer ≥ 1",
        ),
        (
            "[http]\nmax_body_bytes = 10\n",
            "http.max_body_bytes: expected an integer ≥ 256",
        ),
        (
            "[media]\nrtp_ports = \"2000\"\n",
            "media.rtp_ports: expected a port range",
        ),
        (
            "[media]\nrtp_ports = \"30000-20000\"\n",
            "media.rtp_ports: expected a port range",
        ),
        (
            "[media]\nbrowser_inactivity_s = 0\n",
            "media.browser_inactivity_s: expected an integer ≥ 1",
        ),
        (
            "[security]\nallowed_countries = [\"France\"]\n",
            "security.allowed_countries[0]: expected a two-letter",
        ),
        (
            "[security]\ndenied_prefixes = [\"3389\"]\n",
            "security.denied_prefixes[0]: expected \"+\"",
        ),
        (
            "[http]\nadmin_token = \"  \"\n",
            "http.admin_token: must not be empty",
        ),
    ];
    for (extra, want) in cases {
        let text = MINIMAL.to_owned() + extra;
        let e = err(&text);
        assert!(e.starts_with(want), "{extra:?} gave {e:?}");
    }
}

#[test]
fn negative_integer_is_refused_with_its_key() {
    let e = err(&(MINIMAL.to_owned() + "[callback]\nmax_attempts = -1\n"));
    assert_eq!(
        e,
        "callback.max_attempts (line 8): invalid value: integer `-1`, expected a non-negative integer"
    );
}

#[test]
fn unknown_keys_are_refused() {
    let e = err(&(MINIMAL.to_owned() + "[callback]\nmax_atempts = 3\n"));
    assert!(e.contains("unknown field `max_atempts`"), "{e}");
    let e = err(&(MINIMAL.to_owned() + "[sipp]\nlisten = \"x\"\n"));
    assert!(e.contains("unknown field `sipp`"), "{e}");
}

#[test]
fn bad_values_of_the_right_type() {
    let e = err(&MINIMAL.replace("sip:127.0.0.1:5070", "http://trunk"));
    assert_eq!(
        e,
        "trunk.uri: expected a sip: URI (sip:host[:port] or sip:user@host[:port])"
    );
    let e = err(&MINIMAL.replace("sip:alice@127.0.0.1:5080", "tel:+33612345678"));
    assert!(e.starts_with("agents[0].uri: expected a sip: URI"), "{e}");
    let e = err(&(MINIMAL.to_owned() + "[[agents]]\nname = \"alice\"\nuri = \"sip:a2@h\"\n"));
    assert_eq!(e, "agents[1].name: agent name \"alice\" is used twice");
    let e = err("[trunk]\nuri = \"sip:h\"\n");
    assert_eq!(e, "agents: expected at least one [[agents]] entry");
    let e = err(&MINIMAL.replace("[trunk]\nuri = \"sip:127.0.0.1:5070\"\n", ""));
    assert!(e.contains("missing field `trunk`"), "{e}");
    let e = err(&(MINIMAL.to_owned() + "[sip]\nlisten = \"localhost\"\n"));
    assert!(e.starts_with("sip.listen"), "{e}");
    let e = err(&(MINIMAL.to_owned() + "[callback]\nstrategy = \"agents_first\"\n"));
    assert!(
        e.starts_with("callback.strategy") && e.contains("agent_first"),
        "{e}"
    );
}

#[test]
fn toml_syntax_errors_have_a_line() {
    let e = Config::parse("[trunk\nuri = 1\n").unwrap_err();
    assert!(
        matches!(e, ConfigError::Parse { line: Some(1), .. }),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("config (line 1): "), "{e}");
}

#[test]
fn missing_and_huge_files() {
    let e = Config::load(std::path::Path::new("/nonexistent/rappel.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().starts_with("/nonexistent/rappel.toml: "));
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![b'#'; 2 << 20]).unwrap();
    assert!(matches!(
        Config::load(f.path()),
        Err(ConfigError::TooLarge { .. })
    ));
}

#[test]
fn exit_code_is_2() {
    let e = Config::parse("").unwrap_err();
    assert_eq!(exit_code(&e), 2);
    let e = ConfigError::Invalid {
        key: "x".into(),
        problem: Problem::Empty,
    };
    assert_eq!(exit_code(&e), 2);
}

/// Seeded random edits of a valid file: every outcome is a config or an error with a message, never a panic.
#[test]
fn mangled_files_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let pieces = [
        "=",
        "\"",
        "[",
        "]",
        "\n",
        "0",
        "-1",
        "x",
        "[[agents]]",
        "'",
        "{",
        "}",
        "#",
        ",",
    ];
    let mut errors = 0;
    for _ in 0..3000 {
        let mut text = FULL.to_owned();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..=text.len());
            if text.is_char_boundary(at) {
                text.insert_str(at, pieces[rng.random_range(0..pieces.len())]);
            }
        }
        if let Err(e) = Config::parse(&text) {
            assert!(!e.to_string().is_empty());
            errors += 1;
        }
    }
    assert!(errors > 0);
}

const TRUNK_BY_NAME: &str = r#"
[sip]
nameservers = ["127.0.0.1:5353"]
[trunk]
uri = "sip:trunk.example.net"
username = "rappel"
password = "secret"
outbound_proxy = "sip:proxy.example.net"
[trunk.register]
expires = 600
[[agents]]
name = "alice"
uri = "sip:alice@pbx.example.net"
"#;

#[test]
fn a_trunk_by_name_with_registration() {
    let c = Config::parse(TRUNK_BY_NAME).expect("valid");
    assert_eq!(
        c.sip.nameservers,
        Some(vec!["127.0.0.1:5353".parse().unwrap()])
    );
    assert_eq!(
        c.trunk.outbound_proxy.as_deref(),
        Some("sip:proxy.example.net")
    );
    assert_eq!(c.visitor_uri(), "sip:{number}@trunk.example.net");
    let reg = c.trunk_registration().expect("registering");
    assert_eq!(
        reg.registrar, "sip:trunk.example.net",
        "default: the trunk host"
    );
    assert_eq!(
        reg.aor, "sip:rappel@trunk.example.net",
        "default: user@host"
    );
    assert_eq!(reg.expires, 600);
    assert_eq!(
        c.trunk.failover_timeout(),
        Some(std::time::Duration::from_secs(4)),
        "default failover timeout"
    );
    let cred = reg.credentials.expect("from [trunk]");
    assert_eq!(
        (cred.username.as_str(), cred.password.as_str()),
        ("rappel", "secret")
    );
    // Explicit values win over the defaults.
    let c = Config::parse(&TRUNK_BY_NAME.replace(
        "expires = 600",
        "registrar = \"sip:reg.example.net:5070\"\naor = \"sip:+33100000000@example.net\"",
    ))
    .unwrap();
    let reg = c.trunk_registration().unwrap();
    assert_eq!(reg.registrar, "sip:reg.example.net:5070");
    assert_eq!(reg.aor, "sip:+33100000000@example.net");
    assert_eq!(reg.expires, 3600);
    let c = Config::parse(&TRUNK_BY_NAME.replace(
        "[trunk.register]",
        "failover_timeout_ms = 1500\n[trunk.register]",
    ))
    .unwrap();
    assert_eq!(
        c.trunk.failover_timeout(),
        Some(std::time::Duration::from_millis(1500))
    );
    let c = Config::parse(&TRUNK_BY_NAME.replace(
        "[trunk.register]",
        "failover_timeout_ms = 0\n[trunk.register]",
    ))
    .unwrap();
    assert_eq!(c.trunk.failover_timeout(), None, "0: wait for Timer B");
    // No [trunk.register]: no registration.
    assert!(Config::parse(MINIMAL)
        .unwrap()
        .trunk_registration()
        .is_none());
}

#[test]
fn bad_trunk_registration_values() {
    let e = err(&TRUNK_BY_NAME.replace("sip:proxy.example.net", "proxy.example.net"));
    assert!(
        e.starts_with("trunk.outbound_proxy: expected a sip: URI"),
        "{e}"
    );
    let e = err(&TRUNK_BY_NAME.replace("expires = 600", "expires = 30"));
    assert_eq!(e, "trunk.register.expires: expected an integer ≥ 60");
    let e = err(&TRUNK_BY_NAME.replace("expires = 600", "registrar = \"reg\""));
    assert!(
        e.starts_with("trunk.register.registrar: expected a sip: URI"),
        "{e}"
    );
    let e = err(&TRUNK_BY_NAME.replace("username = \"rappel\"\n", ""));
    assert_eq!(
        e, "trunk.register.aor: must not be empty",
        "no user name to build it from"
    );
    let e = err(&TRUNK_BY_NAME.replace("expires = 600", "expire = 600"));
    assert!(e.contains("unknown field `expire`"), "{e}");
    let e = err(&TRUNK_BY_NAME.replace("[\"127.0.0.1:5353\"]", "[]"));
    assert_eq!(e, "sip.nameservers: must not be empty");
    let e = err(&TRUNK_BY_NAME.replace("127.0.0.1:5353", "ns.example.net"));
    assert!(e.starts_with("sip.nameservers"), "{e}");
}

#[test]
fn record_dir_reaches_the_service() {
    let c =
        Config::parse(&format!("{MINIMAL}[media]\nrecord_dir = \"/var/rec\"\n")).expect("valid");
    assert_eq!(
        c.service_config().record_dir.as_deref(),
        Some(std::path::Path::new("/var/rec"))
    );
}

/// Behind one-to-one NAT: the public SIP address and media IP are read; listening on every interface needs both,
/// and neither may itself be a wildcard.
#[test]
fn public_addresses_behind_nat() {
    let nat = MINIMAL.to_owned()
        + "[sip]\nlisten = \"0.0.0.0:5060\"\npublic_addr = \"203.0.113.7:5060\"\n"
        + "[media]\npublic_ip = \"203.0.113.7\"\n";
    let c = Config::parse(&nat).expect("valid");
    assert_eq!(c.sip.public_addr, Some("203.0.113.7:5060".parse().unwrap()));
    assert_eq!(c.media.public_ip, Some("203.0.113.7".parse().unwrap()));
    assert!(c.validate().is_ok());
    let no_media_ip = nat.replace("public_ip = \"203.0.113.7\"\n", "");
    let e = err(&no_media_ip);
    assert!(
        e.contains("media.public_ip") && e.contains("0.0.0.0"),
        "{e}"
    );
    let e = err(&nat.replace("public_addr = \"203.0.113.7:5060\"\n", ""));
    assert!(e.contains("sip.public_addr"), "{e}");
    let e = err(&nat.replace("public_ip = \"203.0.113.7\"", "public_ip = \"0.0.0.0\""));
    assert!(
        e.contains("media.public_ip") && e.contains("specific address"),
        "{e}"
    );
    let e = err(&nat.replace("public_ip = \"203.0.113.7\"", "public_ip = \"not an ip\""));
    assert!(e.contains("media.public_ip"), "{e}");
}

#[cfg(feature = "webrtc")]
#[test]
fn browser_inactivity_reaches_the_browser_legs() {
    let c = Config::parse(MINIMAL).expect("valid");
    assert_eq!(c.media.browser_inactivity_s, 10);
    assert_eq!(c.browser_options().inactivity, Duration::from_secs(10));
    let c = Config::parse(&format!(
        "{MINIMAL}[sip]\nlisten = \"127.0.0.2:5060\"\n[media]\nbrowser_inactivity_s = 45\n"
    ))
    .expect("valid");
    let o = c.browser_options();
    assert_eq!(o.inactivity, Duration::from_secs(45));
    assert_eq!(o.bind_ip.to_string(), "127.0.0.2");
    let e = err(&format!(
        "{MINIMAL}[media]\nbrowser_inactivity_s = \"ten\"\n"
    ));
    assert!(e.starts_with("media.browser_inactivity_s"), "{e}");
}
