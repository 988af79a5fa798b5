//! The TOML configuration of a click-to-call deployment (`--config FILE`).
//!
//! Every section and key has a default except the trunk and the agents, so a minimal file names the trunk and one
//! agent. Unknown keys are refused (`deny_unknown_fields`): a misspelt key must not silently fall back to its
//! default. Errors name the key path and the problem (`callback.max_attempts: expected an integer ≥ 1`);
//! [`exit_code`] prints one and gives the exit status (2) for a binary.
//!
//! ```toml
//! [sip]
//! listen = "127.0.0.1:5060"      # UDP and TCP; "0.0.0.0:5060" for every interface
//! # public_addr = "203.0.113.7:5060"  # put in Via and Contact when behind one-to-one NAT (a cloud VM)
//! # nameservers = ["192.0.2.53:53"] # DNS servers for host names (default: /etc/resolv.conf)
//! [trunk]
//! uri = "sip:127.0.0.1:5070"     # visitor +33612345678 is called at sip:+33612345678@127.0.0.1:5070
//! caller_id = "+33100000000"     # a host name is resolved per RFC 3263 (NAPTR, SRV, A/AAAA) with failover
//! # outbound_proxy = "sip:proxy.example.net"  # every request goes there instead
//! # failover_timeout_ms = 4000   # a target silent this long is left for the next one (0: Timer B, 32 s)
//! # [trunk.register]             # keep a registration (user name and password from [trunk])
//! # registrar = "sip:trunk.example.net"       # default: the trunk URI's host
//! # aor = "sip:rappel@trunk.example.net"      # default: sip:USERNAME@that host
//! # expires = 3600
//! [[agents]]
//! name = "alice"
//! uri = "sip:alice@127.0.0.1:5080"
//! skills = ["sales"]
//! [media]
//! rtp_ports = "20000-20999"
//! # public_ip = "203.0.113.7"    # put in SDP (c=) when behind NAT; needed when sip.listen is 0.0.0.0
//! # browser_inactivity_s = 10   # a call from the browser ends after this long without its audio (a dead tab)
//! [http]
//! listen = "127.0.0.1:8080"
//! admin_token = "change-me"
//! [store]
//! path = "rappel.db"
//! [callback]
//! strategy = "visitor_first"
//! max_attempts = 3
//! [security]
//! allowed_countries = ["FR"]
//! denied_prefixes = ["+3389"]
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::callback::service::ServiceConfig;
use crate::callback::{AgentConfig, CallbackConfig, FlowConfig, Strategy};

/// Cap on the size of a configuration file.
const MAX_FILE: u64 = 1 << 20;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than 1 MiB.
    #[error("{path}: larger than 1 MiB")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML, or a key has the wrong type or is unknown.
    #[error("{}{}: {message}", key_or_file(.key), line_suffix(*.line))]
    Parse {
        /// Dotted key path (`callback.max_attempts`, `agents[0].uri`); empty for the whole file.
        key: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// A key has a value of the right type that is not acceptable.
    #[error("{key}: {problem}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is expected.
        problem: Problem,
    },
}

fn key_or_file(key: &str) -> &str {
    if key.is_empty() || key == "." {
        "config"
    } else {
        key
    }
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// An integer at least this large was expected.
    AtLeast(u64),
    /// A non-empty value was expected.
    Empty,
    /// A `sip:` URI was expected.
    SipUri,
    /// A `FIRST-LAST` port range with `FIRST ≤ LAST` and an even count was expected.
    PortRange,
    /// An ISO 3166 alpha-2 country code (upper case) was expected.
    CountryCode,
    /// A `+` followed by digits was expected.
    E164Prefix,
    /// At least one `[[agents]]` entry is needed.
    NoAgents,
    /// Two agents have the same name.
    DuplicateName(String),
    /// A specific address was expected, not `0.0.0.0` or `::`.
    Unspecified,
    /// Needed because `sip.listen` is an unspecified address (every interface): Via, Contact and SDP must name
    /// one.
    NeededForWildcardListen,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::AtLeast(n) => write!(f, "expected an integer ≥ {n}"),
            Problem::Empty => write!(f, "must not be empty"),
            Problem::SipUri => write!(
                f,
                "expected a sip: URI (sip:host[:port] or sip:user@host[:port])"
            ),
            Problem::PortRange => write!(
                f,
                "expected a port range \"FIRST-LAST\" (1024 ≤ FIRST < LAST ≤ 65535)"
            ),
            Problem::CountryCode => write!(
                f,
                "expected a two-letter ISO 3166 country code such as \"FR\""
            ),
            Problem::E164Prefix => {
                write!(f, "expected \"+\" followed by digits, such as \"+3389\"")
            }
            Problem::NoAgents => write!(f, "expected at least one [[agents]] entry"),
            Problem::DuplicateName(n) => write!(f, "agent name {n:?} is used twice"),
            Problem::Unspecified => write!(f, "expected a specific address, not 0.0.0.0 or ::"),
            Problem::NeededForWildcardListen => write!(
                f,
                "required when sip.listen is 0.0.0.0 or :: (the address to advertise)"
            ),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SIP listener.
    #[serde(default)]
    pub sip: SipConfig,
    /// Where visitors are called.
    pub trunk: TrunkConfig,
    /// The agents.
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    /// Media (RTP).
    #[serde(default)]
    pub media: MediaConfig,
    /// HTTP API and web pages.
    #[serde(default)]
    pub http: HttpConfig,
    /// Storage.
    #[serde(default)]
    pub store: StoreConfig,
    /// Callback behaviour.
    #[serde(default)]
    pub callback: CallbackSection,
    /// Abuse protection.
    #[serde(default)]
    pub security: SecurityConfig,
}

/// `[sip]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Address for UDP and TCP (default `127.0.0.1:5060`).
    pub listen: SocketAddr,
    /// DNS servers asked for the host names of the trunk, proxy and agents (default: the system's).
    pub nameservers: Option<Vec<SocketAddr>>,
    /// The address put in Via and Contact instead of `listen` (the public address behind one-to-one NAT).
    pub public_addr: Option<SocketAddr>,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            nameservers: None,
            public_addr: None,
        }
    }
}

/// `[trunk]`: the only place visitor numbers are sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TrunkConfig {
    /// The trunk's SIP URI; visitor `+336…` is called at `sip:+336…@host:port`.
    pub uri: String,
    /// Caller ID presented to visitors (default `anonymous`).
    #[serde(default = "anonymous")]
    pub caller_id: String,
    /// Digest user name, when the trunk challenges.
    #[serde(default)]
    pub username: Option<String>,
    /// Digest password.
    #[serde(default)]
    pub password: Option<String>,
    /// A `sip:` URI every request is sent to (a host name is resolved per RFC 3263).
    #[serde(default)]
    pub outbound_proxy: Option<String>,
    /// `[trunk.register]`: register with the trunk.
    #[serde(default)]
    pub register: Option<RegisterSection>,
    /// When the trunk (or proxy, or registrar) name resolves to several targets, one that sends no response at
    /// all (not even 100 Trying) to an INVITE or REGISTER within this many milliseconds is abandoned for the next
    /// (default 4000; 0 waits for Timer B or F, 32 s). See [`crate::EngineBuilder::failover_timeout`].
    #[serde(default = "failover_ms")]
    pub failover_timeout_ms: u64,
}

impl TrunkConfig {
    /// [`Self::failover_timeout_ms`] as the engine takes it (`None` for 0).
    pub fn failover_timeout(&self) -> Option<Duration> {
        (self.failover_timeout_ms > 0).then(|| Duration::from_millis(self.failover_timeout_ms))
    }
}

fn failover_ms() -> u64 {
    4000
}

/// `[trunk.register]`: keep a registration with the trunk (credentials from `[trunk]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSection {
    /// The registrar's URI (default: `sip:` and the trunk URI's host).
    #[serde(default)]
    pub registrar: Option<String>,
    /// The address of record (default: `sip:USERNAME@` the trunk URI's host).
    #[serde(default)]
    pub aor: Option<String>,
    /// The binding lifetime asked for, in seconds (default 3600).
    #[serde(default = "hour")]
    pub expires: u32,
}

fn hour() -> u32 {
    3600
}

fn anonymous() -> String {
    "anonymous".to_owned()
}

/// One `[[agents]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// Unique name.
    pub name: String,
    /// SIP URI where the agent is called.
    pub uri: String,
    /// Skills (topics the agent takes).
    #[serde(default)]
    pub skills: Vec<String>,
    /// Concurrent calls (default 1).
    #[serde(default = "one")]
    pub max_calls: u32,
}

fn one() -> u32 {
    1
}

/// `[media]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// RTP port range `"FIRST-LAST"` (default `20000-20999`).
    pub rtp_ports: String,
    /// Announcement played to a held visitor (WAV), instead of the built-in tone.
    pub announcement: Option<PathBuf>,
    /// Music on hold (WAV).
    pub hold_music: Option<PathBuf>,
    /// Record each visitor–agent bridge to `<record_dir>/<request id>.wav` (stereo: visitor left, agent
    /// right). Unset (the default): no recordings.
    pub record_dir: Option<PathBuf>,
    /// The IP put in SDP for our RTP (RTP binds to `sip.listen`'s IP), and in the browser leg's ICE host
    /// candidates: the public IP behind one-to-one NAT. Required when `sip.listen` is an unspecified address
    /// (`0.0.0.0`, `::`).
    pub public_ip: Option<IpAddr>,
    /// A call from the browser ends when no audio came from the page for this many seconds: a closed, crashed
    /// or frozen tab (default 10, at least 1). Browsers send RTP continuously, silence included.
    pub browser_inactivity_s: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            rtp_ports: "20000-20999".to_owned(),
            announcement: None,
            hold_music: None,
            record_dir: None,
            public_ip: None,
            browser_inactivity_s: 10,
        }
    }
}

impl MediaConfig {
    /// The RTP port range, parsed (validated by [`Config::validate`]).
    pub fn port_range(&self) -> Option<(u16, u16)> {
        let (a, b) = self.rtp_ports.split_once('-')?;
        let a: u16 = a.trim().parse().ok()?;
        let b: u16 = b.trim().parse().ok()?;
        (1024 <= a && a < b).then_some((a, b))
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Bearer token for the admin page and `GET /api/callbacks`; without it those are disabled.
    pub admin_token: Option<String>,
    /// Secret of the expiring HMAC form token; without it no token is required.
    pub form_token_secret: Option<String>,
    /// Form token lifetime (default 900 s).
    pub form_token_ttl_s: u64,
    /// Secret that makes request ids unguessable; defaults to one derived from the admin token, else random at
    /// each start.
    pub id_secret: Option<String>,
    /// Largest accepted request body (default 4096 bytes).
    pub max_body_bytes: usize,
    /// Submissions per client IP: burst (default 5).
    pub ip_burst: u32,
    /// Submissions per client IP: one more every this many seconds (default 60).
    pub ip_refill_s: u64,
    /// Submissions per phone number: burst (default 2).
    pub number_burst: u32,
    /// Submissions per phone number: one more every this many seconds (default 1800).
    pub number_refill_s: u64,
    /// Take the client IP from the last `X-Forwarded-For` entry (behind a reverse proxy only).
    pub trust_forwarded_for: bool,
    /// Origins allowed to call the widget endpoints (CORS); `["*"]` (default) for any.
    pub allowed_origins: Vec<String>,
    /// Topics offered in the widget; when set, a topic must be one of them and becomes the skill asked of agents.
    pub topics: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            form_token_secret: None,
            form_token_ttl_s: 900,
            id_secret: None,
            max_body_bytes: 4096,
            ip_burst: 5,
            ip_refill_s: 60,
            number_burst: 2,
            number_refill_s: 1800,
            trust_forwarded_for: false,
            allowed_origins: vec!["*".to_owned()],
            topics: Vec::new(),
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite file (default `rappel.db`).
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("rappel.db"),
        }
    }
}

/// `[callback]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackSection {
    /// `visitor_first` (default), `agent_first` or `confirmation`.
    pub strategy: Strategy,
    /// Ring time for the visitor (default 30 s).
    pub visitor_ring_timeout_s: u64,
    /// Ring time for an agent (default 20 s).
    pub agent_ring_timeout_s: u64,
    /// Attempts to reach the visitor (default 3, at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt (default 60 s), doubling after.
    pub retry_delay_s: u64,
    /// Longest hold before the apology (default 120 s).
    pub max_hold_s: u64,
    /// Cap on callbacks with a call up at once (default 10, at least 1).
    pub max_concurrent_calls: usize,
    /// An agent's rest after a call before the next is offered (default 30 s).
    pub wrap_up_s: u64,
}

impl Default for CallbackSection {
    fn default() -> Self {
        CallbackSection {
            strategy: Strategy::VisitorFirst,
            visitor_ring_timeout_s: 30,
            agent_ring_timeout_s: 20,
            max_attempts: 3,
            retry_delay_s: 60,
            max_hold_s: 120,
            max_concurrent_calls: 10,
            wrap_up_s: 30,
        }
    }
}

/// `[security]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Countries whose numbers may be called (ISO codes); empty for any. The first is the default region for
    /// numbers typed without `+`.
    pub allowed_countries: Vec<String>,
    /// E.164 prefixes never called (premium-rate ranges).
    pub denied_prefixes: Vec<String>,
    /// Refuse numbers the numbering plan marks premium-rate, shared-cost or UAN (default true).
    pub deny_premium_types: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            allowed_countries: Vec::new(),
            denied_prefixes: Vec::new(),
            deny_premium_types: true,
        }
    }
}

fn invalid(key: impl Into<String>, problem: Problem) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem,
    }
}

/// `sip:` URI with a non-empty host part (a light check: the SIP layer parses it fully).
fn is_sip_uri(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("sip:") else {
        return false;
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    !host.is_empty() && !host.starts_with(':') && !s.chars().any(char::is_whitespace)
}

/// Serde names Rust types (`expected u32`); say what a person writes instead.
fn readable(message: &str) -> String {
    let mut m = message.to_owned();
    for t in ["u16", "u32", "u64", "usize"] {
        m = m.replace(&format!("expected {t}"), "expected a non-negative integer");
    }
    m
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_FILE {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|r| text.get(..r.start).map_or(0, |s| s.matches('\n').count()) + 1)
        };
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            key: String::new(),
            line: line_of(e.span()),
            message: e.message().to_owned(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Parse {
                key,
                line: line_of(inner.span()),
                message: readable(inner.message()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that have the right type but are not usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_sip_uri(&self.trunk.uri) {
            return Err(invalid("trunk.uri", Problem::SipUri));
        }
        if self.trunk.caller_id.trim().is_empty() {
            return Err(invalid("trunk.caller_id", Problem::Empty));
        }
        if self
            .trunk
            .outbound_proxy
            .as_deref()
            .is_some_and(|p| !is_sip_uri(p))
        {
            return Err(invalid("trunk.outbound_proxy", Problem::SipUri));
        }
        if let Some(r) = &self.trunk.register {
            if r.registrar.as_deref().is_some_and(|u| !is_sip_uri(u)) {
                return Err(invalid("trunk.register.registrar", Problem::SipUri));
            }
            match (&r.aor, &self.trunk.username) {
                (Some(a), _) if !is_sip_uri(a) => {
                    return Err(invalid("trunk.register.aor", Problem::SipUri))
                }
                (None, None) => return Err(invalid("trunk.register.aor", Problem::Empty)),
                _ => {}
            }
            if r.expires < 60 {
                return Err(invalid("trunk.register.expires", Problem::AtLeast(60)));
            }
        }
        if self.sip.nameservers.as_ref().is_some_and(|n| n.is_empty()) {
            return Err(invalid("sip.nameservers", Problem::Empty));
        }
        match self.sip.public_addr {
            Some(a) if a.ip().is_unspecified() => {
                return Err(invalid("sip.public_addr", Problem::Unspecified))
            }
            None if self.sip.listen.ip().is_unspecified() => {
                return Err(invalid("sip.public_addr", Problem::NeededForWildcardListen))
            }
            _ => {}
        }
        match self.media.public_ip {
            Some(ip) if ip.is_unspecified() => {
                return Err(invalid("media.public_ip", Problem::Unspecified))
            }
            None if self.sip.listen.ip().is_unspecified() => {
                return Err(invalid("media.public_ip", Problem::NeededForWildcardListen))
            }
            _ => {}
        }
        if self.agents.is_empty() {
            return Err(invalid("agents", Problem::NoAgents));
        }
        let mut names = BTreeSet::new();
        for (i, a) in self.agents.iter().enumerate() {
            if a.name.trim().is_empty() {
                return Err(invalid(format!("agents[{i}].name"), Problem::Empty));
            }
            if !names.insert(a.name.as_str()) {
                return Err(invalid(
                    format!("agents[{i}].name"),
                    Problem::DuplicateName(a.name.clone()),
                ));
            }
            if !is_sip_uri(&a.uri) {
                return Err(invalid(format!("agents[{i}].uri"), Problem::SipUri));
            }
            if a.max_calls < 1 {
                return Err(invalid(
                    format!("agents[{i}].max_calls"),
                    Problem::AtLeast(1),
                ));
            }
        }
        if self.media.port_range().is_none() {
            return Err(invalid("media.rtp_ports", Problem::PortRange));
        }
        if self.media.browser_inactivity_s < 1 {
            return Err(invalid("media.browser_inactivity_s", Problem::AtLeast(1)));
        }
        let h = &self.http;
        if h.admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(invalid("http.admin_token", Problem::Empty));
        }
        for (key, v) in [
            ("http.form_token_ttl_s", h.form_token_ttl_s),
            ("http.ip_refill_s", h.ip_refill_s),
            ("http.number_refill_s", h.number_refill_s),
            ("http.ip_burst", u64::from(h.ip_burst)),
            ("http.number_burst", u64::from(h.number_burst)),
        ] {
            if v < 1 {
                return Err(invalid(key, Problem::AtLeast(1)));
            }
        }
        if h.max_body_bytes < 256 {
            return Err(invalid("http.max_body_bytes", Problem::AtLeast(256)));
        }
        let c = &self.callback;
        for (key, v) in [
            ("callback.visitor_ring_timeout_s", c.visitor_ring_timeout_s),
            ("callback.agent_ring_timeout_s", c.agent_ring_timeout_s),
            ("callback.max_attempts", u64::from(c.max_attempts)),
            ("callback.max_hold_s", c.max_hold_s),
            (
                "callback.max_concurrent_calls",
                c.max_concurrent_calls as u64,
            ),
        ] {
            if v < 1 {
                return Err(invalid(key, Problem::AtLeast(1)));
            }
        }
        for (i, cc) in self.security.allowed_countries.iter().enumerate() {
            if cc.len() != 2 || !cc.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(invalid(
                    format!("security.allowed_countries[{i}]"),
                    Problem::CountryCode,
                ));
            }
        }
        for (i, p) in self.security.denied_prefixes.iter().enumerate() {
            let digits = p.strip_prefix('+').unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(
                    format!("security.denied_prefixes[{i}]"),
                    Problem::E164Prefix,
                ));
            }
        }
        Ok(())
    }

    /// The callback core's configuration.
    pub fn callback_config(&self) -> CallbackConfig {
        let c = &self.callback;
        let flow = FlowConfig {
            caller_id: self.trunk.caller_id.clone(),
            visitor_ring_timeout: Duration::from_secs(c.visitor_ring_timeout_s),
            agent_ring_timeout: Duration::from_secs(c.agent_ring_timeout_s),
            max_attempts: c.max_attempts,
            retry_backoff: Duration::from_secs(c.retry_delay_s),
            max_hold: Duration::from_secs(c.max_hold_s),
            ..FlowConfig::default()
        };
        CallbackConfig {
            flow,
            max_concurrent: c.max_concurrent_calls,
            default_strategy: c.strategy,
            agents: crate::callback::AgentsPolicy {
                wrap_up: Duration::from_secs(c.wrap_up_s),
                ..crate::callback::AgentsPolicy::default()
            },
            ..CallbackConfig::default()
        }
    }

    /// The trunk URI's `host[:port]`.
    fn trunk_host(&self) -> &str {
        let rest = self
            .trunk
            .uri
            .strip_prefix("sip:")
            .unwrap_or(&self.trunk.uri);
        rest.rsplit_once('@').map_or(rest, |(_, h)| h)
    }

    /// The trunk's digest credentials, when both user name and password are set.
    pub fn trunk_credentials(&self) -> Option<crate::sip::auth::Credentials> {
        match (&self.trunk.username, &self.trunk.password) {
            (Some(user), Some(pass)) => Some(crate::sip::auth::Credentials {
                username: user.clone(),
                password: pass.clone(),
                realm: None,
            }),
            _ => None,
        }
    }

    /// The registration `[trunk.register]` asks for, with its defaults filled in (see [`RegisterSection`]).
    pub fn trunk_registration(&self) -> Option<crate::net::engine::TrunkRegistration> {
        let r = self.trunk.register.as_ref()?;
        let host = self.trunk_host();
        let registrar = r.registrar.clone().unwrap_or_else(|| format!("sip:{host}"));
        let aor = r.aor.clone().unwrap_or_else(|| {
            let user = self.trunk.username.as_deref().unwrap_or("rappel");
            format!("sip:{user}@{host}")
        });
        let mut reg = crate::net::engine::TrunkRegistration::new(registrar, aor).expires(r.expires);
        if let Some(c) = self.trunk_credentials() {
            reg = reg.credentials(c);
        }
        Some(reg)
    }

    /// The trunk's visitor URI template: `sip:{number}@host[:port]` (the trunk URI's user part, if any, is
    /// replaced by the visitor's E.164 number).
    pub fn visitor_uri(&self) -> String {
        format!("sip:{{number}}@{}", self.trunk_host())
    }

    /// Settings of calls from the browser: the peer connection binds the SIP listener's IP, and
    /// `[media] browser_inactivity_s` is the inactivity timeout.
    #[cfg(feature = "webrtc")]
    pub fn browser_options(&self) -> crate::net::webrtc::BrowserOptions {
        crate::net::webrtc::BrowserOptions {
            bind_ip: self.sip.listen.ip(),
            inactivity: Duration::from_secs(self.media.browser_inactivity_s),
            public_ip: self.media.public_ip,
            ..Default::default()
        }
    }

    /// The callback service's configuration (timings, agents, trunk); prompts, recovery and webhook keep their
    /// defaults.
    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            callback: self.callback_config(),
            agents: self.agent_configs(),
            visitor_uri: self.visitor_uri(),
            record_dir: self.media.record_dir.clone(),
            ..ServiceConfig::default()
        }
    }

    /// The agents as the callback core takes them.
    pub fn agent_configs(&self) -> Vec<AgentConfig> {
        self.agents
            .iter()
            .map(|a| AgentConfig {
                name: a.name.clone(),
                uri: a.uri.clone(),
                skills: a.skills.iter().cloned().collect(),
                max_concurrent: a.max_calls,
            })
            .collect()
    }
}

/// For a binary's `main`: prints a configuration error to standard error and returns the exit status (2).
pub fn exit_code(err: &ConfigError) -> i32 {
    eprintln!("error: bad configuration: {err}");
    2
}
