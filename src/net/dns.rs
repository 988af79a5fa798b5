//! Locating SIP servers (RFC 3263) through DNS, and failing over between the targets found.
//!
//! [`SipResolver::resolve`] turns a SIP URI into an ordered list of [`Target`]s:
//!
//! 1. a numeric host is used as is (port from the URI, else 5060; transport from `;transport=`, else UDP);
//! 2. a host name with a port: A/AAAA records, on that port;
//! 3. otherwise NAPTR records of the host for `SIP+D2U` / `SIP+D2T` (the transports we have), by order then
//!    preference, each leading to an SRV name; without NAPTR, the SRV names `_sip._udp` / `_sip._tcp` (only the
//!    `;transport=` one when the URI names it);
//! 4. SRV records ordered by priority and, within a priority, randomly by weight (RFC 2782, [`order_srv`]),
//!    each target's A/AAAA records on the SRV port;
//! 5. no SRV record at all: A/AAAA of the host on 5060.
//!
//! The DNS wire protocol, caching and name-server handling are hickory-resolver's; this module only applies the
//! RFC 3263 procedure on top. The weighted ordering takes the RNG as a parameter so tests can seed it.
//!
//! [`Failover`] walks the list: the call layer tries the next target when a request to the current one ends in
//! [`TerminationReason::Timeout`], [`TerminationReason::TransportError`] or a 503 ([`should_fail_over`],
//! RFC 3263 §4.3).

use crate::sip::endpoint::TerminationReason;
use crate::sip::message::{Host, Uri};
use crate::sip::transaction::Transport;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

/// At most this many targets come out of one resolution (a hostile zone cannot make the list grow without end).
const MAX_TARGETS: usize = 32;

/// Where to send a request: a transport and an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// UDP or TCP.
    pub transport: Transport,
    /// The server's address.
    pub addr: SocketAddr,
}

/// Errors from [`SipResolver`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The URI is not a `sip:` URI, or asks for a transport we do not have (`sips:`, TLS, SCTP).
    #[error("unsupported URI or transport")]
    Unsupported,
    /// A DNS query failed (no answer, SERVFAIL, timeout) for a reason other than "no such record".
    #[error("DNS lookup of {name} failed: {source}")]
    Lookup {
        /// The name queried.
        name: String,
        /// The resolver's error.
        #[source]
        source: NetError,
    },
    /// The procedure ended with no address.
    #[error("no SIP server found for {0}")]
    NotFound(String),
    /// The system resolver configuration could not be read.
    #[error("resolver configuration: {0}")]
    Config(#[source] NetError),
}

/// One SRV record, as [`order_srv`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative chance within a priority.
    pub weight: u16,
    /// The server's port.
    pub port: u16,
    /// The server's host name.
    pub target: String,
}

/// Orders SRV records (RFC 2782): by ascending priority; within a priority, repeatedly draw one record with
/// probability proportional to its weight (zero-weight records first in the running sum, so they are picked
/// rarely but not never).
pub fn order_srv(records: &[SrvRecord], rng: &mut impl Rng) -> Vec<SrvRecord> {
    let mut sorted: Vec<SrvRecord> = records.to_vec();
    sorted.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(sorted.len());
    let mut i = 0;
    while i < sorted.len() {
        let p = sorted[i].priority;
        let end = sorted[i..]
            .iter()
            .position(|r| r.priority != p)
            .map_or(sorted.len(), |n| i + n);
        let mut group: Vec<SrvRecord> = sorted[i..end].to_vec();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.random_range(0..=total);
            let mut running = 0u32;
            let idx = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(idx));
        }
        i = end;
    }
    out
}

/// Whether a call that ended this way should be retried on the next target (RFC 3263 §4.3: no response, a
/// transport failure, or 503 Service Unavailable).
pub fn should_fail_over(reason: &TerminationReason) -> bool {
    match reason {
        TerminationReason::Timeout | TerminationReason::TransportError => true,
        TerminationReason::Rejected(s) => s.as_u16() == 503,
        _ => false,
    }
}

/// The targets of one request, tried in order.
#[derive(Debug, Clone)]
pub struct Failover {
    targets: Vec<Target>,
    next: usize,
}

impl Failover {
    /// A walk over `targets` (from [`SipResolver::resolve`]).
    pub fn new(targets: Vec<Target>) -> Self {
        Self { targets, next: 0 }
    }

    /// The next target to try, or `None` when all have been tried.
    pub fn next_target(&mut self) -> Option<Target> {
        let t = self.targets.get(self.next).copied();
        if t.is_some() {
            self.next += 1;
        }
        t
    }

    /// Given how the attempt on the last target ended, the target to try next: `None` when the outcome is final
    /// (answered, busy, ...) or no target is left.
    pub fn after(&mut self, reason: &TerminationReason) -> Option<Target> {
        if should_fail_over(reason) {
            self.next_target()
        } else {
            None
        }
    }

    /// Targets not tried yet.
    pub fn remaining(&self) -> usize {
        self.targets.len().saturating_sub(self.next)
    }
}

/// An RFC 3263 resolver over hickory-resolver.
pub struct SipResolver {
    resolver: TokioResolver,
    transports: Vec<Transport>,
    rng: Mutex<SmallRng>,
}

impl std::fmt::Debug for SipResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipResolver")
            .field("transports", &self.transports)
            .finish_non_exhaustive()
    }
}

impl SipResolver {
    /// A resolver asking these name servers (address and port, UDP with TCP fallback), with a 2 s timeout and
    /// 2 attempts per query. Transports UDP then TCP; the weighted SRV choice seeded from OS entropy.
    pub fn with_nameservers(servers: &[SocketAddr]) -> Result<Self, DnsError> {
        let ns = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut b = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(ns),
            TokioRuntimeProvider::default(),
        );
        let o = b.options_mut();
        o.timeout = Duration::from_secs(2);
        o.attempts = 2;
        o.ndots = 0;
        Self::from_resolver(b.build().map_err(DnsError::Config)?)
    }

    /// A resolver using the system configuration (`/etc/resolv.conf`).
    pub fn system() -> Result<Self, DnsError> {
        let b = TokioResolver::builder_tokio().map_err(DnsError::Config)?;
        Self::from_resolver(b.build().map_err(DnsError::Config)?)
    }

    fn from_resolver(resolver: TokioResolver) -> Result<Self, DnsError> {
        Ok(Self {
            resolver,
            transports: vec![Transport::Udp, Transport::Tcp],
            rng: Mutex::new(SmallRng::seed_from_u64(rand::random())),
        })
    }

    /// Seeds the weighted SRV choice (tests).
    pub fn seed(self, seed: u64) -> Self {
        Self {
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            ..self
        }
    }

    /// The transports we may use, in order of preference (default UDP, TCP).
    pub fn transports(self, transports: Vec<Transport>) -> Self {
        Self { transports, ..self }
    }

    /// Resolves `uri` to the targets to try, in order (see the module docs).
    pub async fn resolve(&self, uri: &Uri) -> Result<Vec<Target>, DnsError> {
        let sip = uri.as_sip().ok_or(DnsError::Unsupported)?;
        if sip.secure {
            return Err(DnsError::Unsupported);
        }
        let forced = match sip.transport() {
            None => None,
            Some(t) if t.eq_ignore_ascii_case(b"udp") => Some(Transport::Udp),
            Some(t) if t.eq_ignore_ascii_case(b"tcp") => Some(Transport::Tcp),
            Some(_) => return Err(DnsError::Unsupported),
        };
        if forced.is_some_and(|t| !self.transports.contains(&t)) {
            return Err(DnsError::Unsupported);
        }
        let default = forced.unwrap_or(self.transports.first().copied().unwrap_or(Transport::Udp));
        let name = match &sip.host {
            Host::Ipv4(ip) => return Ok(vec![target(default, (*ip).into(), sip.port)]),
            Host::Ipv6(ip) => return Ok(vec![target(default, (*ip).into(), sip.port)]),
            Host::Domain(d) => String::from_utf8_lossy(d).into_owned(),
        };
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        if let Some(port) = sip.port {
            let ips = self.ips(&fqdn).await?;
            return found(
                &name,
                ips.into_iter()
                    .map(|ip| target(default, ip, Some(port)))
                    .collect(),
            );
        }
        // NAPTR (only when the URI names no transport: then it is SRV for that one, §4.1).
        let mut srv_names: Vec<(Transport, String)> = Vec::new();
        if forced.is_none() {
            srv_names = self.naptr(&fqdn).await?;
        }
        if srv_names.is_empty() {
            let wanted: Vec<Transport> = match forced {
                Some(t) => vec![t],
                None => self.transports.clone(),
            };
            for t in wanted {
                let proto = if t == Transport::Tcp { "tcp" } else { "udp" };
                srv_names.push((t, format!("_sip._{proto}.{fqdn}")));
            }
        }
        let mut targets = Vec::new();
        let mut any_srv = false;
        for (t, srv_name) in srv_names {
            let records = self.srv(&srv_name).await?;
            any_srv |= !records.is_empty();
            let ordered = {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                order_srv(&records, &mut *rng)
            };
            for r in ordered {
                for ip in self.ips(&r.target).await? {
                    if targets.len() < MAX_TARGETS {
                        targets.push(target(t, ip, Some(r.port)));
                    }
                }
            }
        }
        if !any_srv {
            let ips = self.ips(&fqdn).await?;
            targets = ips
                .into_iter()
                .map(|ip| target(default, ip, None))
                .collect();
        }
        found(&name, targets)
    }

    /// NAPTR records of `fqdn` for our transports (flag "s"), by order then preference.
    async fn naptr(&self, fqdn: &str) -> Result<Vec<(Transport, String)>, DnsError> {
        let Some(lookup) = self.query(fqdn, RecordType::NAPTR).await? else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(u16, u16, Transport, String)> = Vec::new();
        for rec in lookup.answers() {
            let RData::NAPTR(n) = &rec.data else { continue };
            if !n.flags.eq_ignore_ascii_case(b"s") {
                continue;
            }
            let t = if n.services.eq_ignore_ascii_case(b"SIP+D2U") {
                Transport::Udp
            } else if n.services.eq_ignore_ascii_case(b"SIP+D2T") {
                Transport::Tcp
            } else {
                continue;
            };
            if self.transports.contains(&t) {
                out.push((n.order, n.preference, t, n.replacement.to_ascii()));
            }
        }
        out.sort_by_key(|(o, p, _, _)| (*o, *p));
        Ok(out.into_iter().map(|(_, _, t, n)| (t, n)).collect())
    }

    async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, DnsError> {
        let Some(lookup) = self.query(name, RecordType::SRV).await? else {
            return Ok(Vec::new());
        };
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                // A target of "." means the service is decidedly not available there (RFC 2782).
                RData::SRV(s) if !s.target.is_root() => Some(SrvRecord {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_ascii(),
                }),
                _ => None,
            })
            .collect())
    }

    async fn ips(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        match self.resolver.lookup_ip(name).await {
            Ok(l) => Ok(l.iter().collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(source) => Err(DnsError::Lookup {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// A query whose "no such record / name" answer is `None` rather than an error.
    async fn query(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Option<hickory_resolver::lookup::Lookup>, DnsError> {
        match self.resolver.lookup(name, rtype).await {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(None),
            Err(source) => Err(DnsError::Lookup {
                name: name.to_owned(),
                source,
            }),
        }
    }
}

fn target(transport: Transport, ip: IpAddr, port: Option<u16>) -> Target {
    Target {
        transport,
        addr: SocketAddr::new(ip, port.unwrap_or(5060)),
    }
}

fn found(name: &str, targets: Vec<Target>) -> Result<Vec<Target>, DnsError> {
    if targets.is_empty() {
        Err(DnsError::NotFound(name.to_owned()))
    } else {
        Ok(targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::StatusCode;

    fn rec(priority: u16, weight: u16, port: u16) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: format!("h{port}."),
        }
    }

    fn ports(v: &[SrvRecord]) -> Vec<u16> {
        v.iter().map(|r| r.port).collect()
    }

    #[test]
    fn priority_is_strict() {
        let mut rng = SmallRng::seed_from_u64(1);
        let recs = [
            rec(20, 1000, 1),
            rec(10, 0, 2),
            rec(30, 5, 3),
            rec(10, 0, 4),
        ];
        for _ in 0..200 {
            let o = order_srv(&recs, &mut rng);
            let p: Vec<u16> = o.iter().map(|r| r.priority).collect();
            assert_eq!(p, vec![10, 10, 20, 30]);
            assert_eq!(ports(&o)[2..], [1, 3]);
        }
    }

    #[test]
    fn weights_share_the_first_place() {
        // 90/10 within one priority: the heavy one comes first about 90 % of the time.
        let mut rng = SmallRng::seed_from_u64(42);
        let recs = [rec(10, 10, 1), rec(10, 90, 2)];
        let n = 10_000;
        let heavy_first = (0..n)
            .filter(|_| order_srv(&recs, &mut rng)[0].port == 2)
            .count();
        assert!((8_800..=9_200).contains(&heavy_first), "{heavy_first}");
        // The same seed gives the same orders.
        let a: Vec<Vec<u16>> = {
            let mut r = SmallRng::seed_from_u64(7);
            (0..20).map(|_| ports(&order_srv(&recs, &mut r))).collect()
        };
        let b: Vec<Vec<u16>> = {
            let mut r = SmallRng::seed_from_u64(7);
            (0..20).map(|_| ports(&order_srv(&recs, &mut r))).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn zero_weight_is_rare_but_possible() {
        // Weights 0 and 100: the zero-weight record is first only when the draw is exactly 0 (1 in 101).
        let mut rng = SmallRng::seed_from_u64(3);
        let recs = [rec(1, 100, 1), rec(1, 0, 2)];
        let n = 20_000;
        let zero_first = (0..n)
            .filter(|_| order_srv(&recs, &mut rng)[0].port == 2)
            .count();
        assert!((100..=300).contains(&zero_first), "{zero_first}");
        // All zero: uniform.
        let recs = [rec(1, 0, 1), rec(1, 0, 2), rec(1, 0, 3)];
        let firsts: Vec<usize> = (1..=3)
            .map(|p| {
                (0..3000)
                    .filter(|_| order_srv(&recs, &mut rng)[0].port == p)
                    .count()
            })
            .collect();
        // With all weights 0 the draw is always 0 and the first record wins: RFC 2782 leaves the order of
        // equal zero weights to the implementation; ours is stable.
        assert_eq!(firsts, vec![3000, 0, 0]);
    }

    #[test]
    fn every_record_comes_out_once() {
        let mut rng = SmallRng::seed_from_u64(9);
        let recs: Vec<SrvRecord> = (0..50).map(|i| rec(i % 3, i * 7 % 11, i)).collect();
        let mut got = ports(&order_srv(&recs, &mut rng));
        got.sort_unstable();
        assert_eq!(got, (0..50).collect::<Vec<u16>>());
    }

    #[test]
    fn failover_reasons() {
        let t = |p| Target {
            transport: Transport::Udp,
            addr: SocketAddr::from(([127, 0, 0, 1], p)),
        };
        let mut f = Failover::new(vec![t(1), t(2), t(3)]);
        assert_eq!(f.next_target(), Some(t(1)));
        let busy = TerminationReason::Rejected(StatusCode::BUSY_HERE);
        assert_eq!(f.after(&busy), None, "a busy callee is final");
        assert_eq!(f.after(&TerminationReason::TransportError), Some(t(2)));
        let unavailable = TerminationReason::Rejected(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(f.after(&unavailable), Some(t(3)));
        assert_eq!(f.remaining(), 0);
        assert_eq!(f.after(&TerminationReason::Timeout), None);
        assert!(!should_fail_over(&TerminationReason::Cancelled));
    }
}
