//! The click-to-call application: a [`Config`] wired into an engine, a SQLite store, the callback service and the
//! web router (cargo feature `http`). `examples/click_to_call.rs` is a thin `main` over this module.
//!
//! [`App::start`] runs a deployment as its configuration says. [`App::demo`] needs no outside PBX: it starts three
//! in-process [`DemoPhone`]s on loopback (the visitor's phone standing in for the trunk, agents `alice` and
//! `bob`), so every accepted number rings the demo visitor phone, and keeps its SQLite file in a temporary
//! directory removed at [`App::shutdown`].

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::callback::calls::{EngineCalls, MediaTotals, Prompts};
use crate::callback::service::{CallbackService, ServiceError, SystemClock};
use crate::callback::store::{SqliteStore, StoreError};
use crate::config::{Config, ConfigError};
use crate::demo::{Behaviour, DemoPhone, PhoneStats};
use crate::media::player::Clip;
use crate::media::wav::{Wav, WavError};
use crate::web::abuse::UnknownCountry;
use crate::web::{router, WebConfig, WebState};
use crate::{CallOptions, Engine};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A prompt WAV file could not be used.
    #[error("{path}: {source}")]
    Prompt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: WavError,
    },
    /// A socket could not be bound (SIP, RTP, HTTP, demo phones) or a directory created.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The callback service did not start.
    #[error("callback service: {0}")]
    Service(#[from] ServiceError),
    /// A country code is unknown to the numbering plan.
    #[error("security.allowed_countries: {0}")]
    Country(#[from] UnknownCountry),
}

fn io(what: &'static str) -> impl FnOnce(io::Error) -> AppError {
    move |source| AppError::Io { what, source }
}

/// The demo's phones.
#[derive(Debug)]
pub struct DemoPhones {
    /// The visitor's phone (every demo number rings it).
    pub visitor: DemoPhone,
    /// Agents `alice` and `bob`.
    pub agents: [DemoPhone; 2],
    dir: PathBuf,
}

/// A running click-to-call application.
#[derive(Debug)]
pub struct App {
    http: SocketAddr,
    service: CallbackService,
    engine: Engine,
    server: tokio::task::JoinHandle<io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    demo: Option<DemoPhones>,
    media: Arc<MediaTotals>,
}

/// The demo's configuration: the trunk is the visitor phone, agents alice and bob, any country.
fn demo_config(visitor: &DemoPhone, agents: &[DemoPhone; 2], db: &std::path::Path) -> String {
    format!(
        r#"
[sip]
listen = "127.0.0.1:0"
[trunk]
uri = "sip:{visitor}"
caller_id = "+33100000000"
[[agents]]
name = "alice"
uri = "{alice}"
skills = ["sales", "support"]
[[agents]]
name = "bob"
uri = "{bob}"
skills = ["support"]
[http]
admin_token = "demo"
id_secret = "{id_secret:032x}"
ip_burst = 20
ip_refill_s = 6
number_burst = 5
number_refill_s = 60
[store]
path = {db:?}
[callback]
visitor_ring_timeout_s = 20
max_attempts = 2
retry_delay_s = 5
"#,
        visitor = visitor.addr(),
        alice = agents[0].uri(),
        bob = agents[1].uri(),
        db = db.display().to_string(),
        // Fresh per run, so request ids cannot be guessed from an earlier demo's.
        id_secret = rand::random::<u128>(),
    )
}

/// Prompts: generated tones, with the configured WAV files in place of the announcement and hold music.
fn prompts(config: &Config) -> Result<Prompts, AppError> {
    let mut p = Prompts::tones();
    let load = |path: &PathBuf| -> Result<Clip, AppError> {
        let err = |source| AppError::Prompt {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(|e| err(WavError::from(e)))?;
        let wav = Wav::read_from(io::BufReader::new(file)).map_err(err)?;
        Clip::from_wav(&wav).map_err(err)
    };
    if let Some(path) = &config.media.announcement {
        p.greeting = load(path)?;
    }
    if let Some(path) = &config.media.hold_music {
        p.hold_music = load(path)?;
    }
    Ok(p)
}

impl App {
    /// Starts the engine, the service on the configured SQLite file and the HTTP server on `config.http.listen`.
    /// Must be called inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<App, AppError> {
        config.validate()?;
        let (min, max) = config
            .media
            .port_range()
            .ok_or_else(|| ConfigError::Invalid {
                key: "media.rtp_ports".into(),
                problem: crate::config::Problem::PortRange,
            })?;
        let web = WebConfig::from_config(config);
        let mut builder = Engine::builder()
            .sip_bind(vec![config.sip.listen])
            .tcp(true)
            .rtp_ip(config.sip.listen.ip())
            .rtp_public_ip(config.media.public_ip)
            .rtp_ports(min, max)
            .outbound_proxy_uri(config.trunk.outbound_proxy.clone())
            .failover_timeout(config.trunk.failover_timeout());
        if let Some(addr) = config.sip.public_addr {
            builder = builder.public_addr(addr);
        }
        if let Some(ns) = &config.sip.nameservers {
            builder = builder.nameservers(ns.clone());
        }
        if let Some(reg) = config.trunk_registration() {
            builder = builder.register(reg);
        }
        let engine = builder.start().await.map_err(io("SIP/RTP"))?;
        let options = CallOptions {
            credentials: config.trunk_credentials(),
            ..CallOptions::default()
        };
        let calls = EngineCalls::new(engine.clone(), options, None);
        let media = calls.media_totals();
        #[cfg(feature = "webrtc")]
        let browser_legs = calls.browser_legs();
        let mut service_config = config.service_config();
        service_config.prompts = prompts(config)?;
        let store = SqliteStore::open(&config.store.path)?;
        let service =
            CallbackService::start(service_config, store, calls, Arc::new(SystemClock)).await?;
        let state = WebState::new(Arc::new(service.clone()), web)?;
        #[cfg(feature = "webrtc")]
        state.enable_browser_calls(crate::web::BrowserGateway {
            engine: engine.clone(),
            legs: browser_legs,
            options: config.browser_options(),
        });
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(io("HTTP"))?;
        let http = listener.local_addr().map_err(io("HTTP"))?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(App {
            http,
            service,
            engine,
            server,
            stop,
            demo: None,
            media,
        })
    }

    /// The demo: three [`DemoPhone`]s on loopback ([`Behaviour::demo`]: ring 1 s, talk 10 s), a SQLite file in a
    /// temporary directory, HTTP on `http`; any country's valid numbers are accepted and all ring the visitor
    /// phone.
    pub async fn demo(http: SocketAddr) -> Result<App, AppError> {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        let visitor = DemoPhone::start("visitor", lo, Behaviour::demo())
            .await
            .map_err(io("demo phone"))?;
        // Agents answer after 1 s and stay on the line: the visitor phone ends the conversation.
        let agent = Behaviour::Answer {
            ring: Duration::from_secs(1),
            talk: None,
            tone_hz: 523.0,
        };
        let agents = [
            DemoPhone::start("alice", lo, agent.clone())
                .await
                .map_err(io("demo phone"))?,
            DemoPhone::start("bob", lo, agent)
                .await
                .map_err(io("demo phone"))?,
        ];
        let dir = std::env::temp_dir().join(format!("rappel-demo-{}", std::process::id()));
        // A previous demo with the same process id left nothing we want to recover.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io("temporary directory"))?;
        let text = demo_config(&visitor, &agents, &dir.join("callbacks.db"));
        let mut config = Config::parse(&text)?;
        config.http.listen = http;
        let mut app = App::start(&config).await?;
        app.demo = Some(DemoPhones {
            visitor,
            agents,
            dir,
        });
        Ok(app)
    }

    /// The HTTP address being served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The engine's SIP addresses.
    pub fn sip_addrs(&self) -> &[SocketAddr] {
        self.engine.sip_addrs()
    }

    /// The registration with the trunk (`[trunk.register]`), when configured.
    pub fn registration(
        &self,
    ) -> Option<tokio::sync::watch::Receiver<crate::net::engine::RegistrationStatus>> {
        self.engine.registration()
    }

    /// The callback service.
    pub fn service(&self) -> &CallbackService {
        &self.service
    }

    /// RTP totals of the calls that ended by the far end's hang-up or a failure (see [`MediaTotals`]).
    pub fn media_totals(&self) -> &MediaTotals {
        &self.media
    }

    /// The demo phones (demo mode only).
    pub fn demo_phones(&self) -> Option<&DemoPhones> {
        self.demo.as_ref()
    }

    /// Stops taking HTTP requests, shuts the service down (calls up are hung up), then the engine; removes the
    /// demo's temporary directory.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        self.service.shutdown().await;
        self.engine
            .shutdown(crate::call::ShutdownMode::HangUp)
            .await;
        if let Some(d) = self.demo {
            let _ = std::fs::remove_dir_all(&d.dir);
        }
    }
}

/// One line of a demo phone's counters: `calls 1 answered 1 ended 1 rtp_sent 500 rtp_received 480`.
pub fn phone_stats_line(s: &PhoneStats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    format!(
        "calls {} answered {} ended {} rtp_sent {} rtp_received {}",
        s.calls.load(Relaxed),
        s.answered.load(Relaxed),
        s.ended.load(Relaxed),
        s.rtp_sent.load(Relaxed),
        s.rtp_received.load(Relaxed)
    )
}

/// One line of RTP totals: `legs 1 packets_in 150 packets_out 160`.
pub fn media_totals_line(m: &MediaTotals) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    format!(
        "legs {} packets_in {} packets_out {}",
        m.legs.load(Relaxed),
        m.packets_in.load(Relaxed),
        m.packets_out.load(Relaxed)
    )
}
