//! Line-by-line SDP parser. Lenient where real devices are (LF or CRLF line ends, blank lines, missing
//! `t=`, lines out of RFC order within a level), strict about the content of the lines it interprets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    media_rank, session_rank, AddrType, Attribute, AttributeKind, Connection, Direction,
    LineProblem, MediaDescription, Origin, OtherLine, RtpMap, Sdp, SdpError, MAX_SDP_BYTES,
    MAX_SDP_LINES,
};

pub(super) fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
    if body.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge {
            len: body.len(),
            max: MAX_SDP_BYTES,
        });
    }
    let mut version_seen = false;
    let mut origin: Option<Origin> = None;
    let mut session_name: Option<String> = None;
    let mut connection: Option<Connection> = None;
    let mut timing: Option<(u64, u64)> = None;
    let mut attributes = Vec::new();
    let mut other = Vec::new();
    let mut media: Vec<MediaDescription> = Vec::new();

    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        if line > MAX_SDP_LINES {
            return Err(SdpError::TooManyLines { max: MAX_SDP_LINES });
        }
        let err = |problem| SdpError::Line { line, problem };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let text = std::str::from_utf8(raw).map_err(|_| err(LineProblem::NotUtf8))?;
        let (kind, value) = match text.as_bytes() {
            [k, b'=', ..] if k.is_ascii_alphabetic() => (*k as char, &text[2..]),
            _ => return Err(err(LineProblem::Syntax)),
        };
        if !version_seen {
            if kind != 'v' || value.trim() != "0" {
                return Err(err(LineProblem::BadVersion));
            }
            version_seen = true;
            continue;
        }
        let in_media = !media.is_empty();
        match kind {
            'v' => return Err(err(LineProblem::Duplicate('v'))),
            'o' | 's' | 't' if in_media => return Err(err(LineProblem::Misplaced(kind))),
            'o' => {
                if origin.is_some() {
                    return Err(err(LineProblem::Duplicate('o')));
                }
                origin = Some(parse_origin(value).ok_or(err(LineProblem::BadOrigin))?);
            }
            's' => {
                if session_name.is_some() {
                    return Err(err(LineProblem::Duplicate('s')));
                }
                session_name = Some(value.to_owned());
            }
            't' => {
                // Several t= lines are allowed; we keep the first.
                if timing.is_none() {
                    timing = Some(parse_timing(value).ok_or(err(LineProblem::BadTiming))?);
                } else {
                    parse_timing(value).ok_or(err(LineProblem::BadTiming))?;
                }
            }
            'c' => {
                let c = parse_connection(value).ok_or(err(LineProblem::BadConnection))?;
                let slot = match media.last_mut() {
                    Some(m) => &mut m.connection,
                    None => &mut connection,
                };
                if slot.is_some() {
                    return Err(err(LineProblem::Duplicate('c')));
                }
                *slot = Some(c);
            }
            'm' => media.push(parse_media(value).ok_or(err(LineProblem::BadMedia))?),
            'a' => {
                let a = parse_attribute(value).map_err(|k| err(LineProblem::BadAttribute(k)))?;
                match media.last_mut() {
                    Some(m) => m.attributes.push(a),
                    None => attributes.push(a),
                }
            }
            _ => {
                let o = OtherLine {
                    kind,
                    value: value.to_owned(),
                };
                match media.last_mut() {
                    Some(m) => m.other.push(o),
                    None => other.push(o),
                }
            }
        }
    }
    if !version_seen {
        return Err(SdpError::Missing { field: 'v' });
    }
    // Stable sorts into the order the writer uses, so that write-then-parse gives the same value.
    other.sort_by_key(|l: &OtherLine| session_rank(l.kind));
    for m in &mut media {
        m.other.sort_by_key(|l| media_rank(l.kind));
    }
    Ok(Sdp {
        origin: origin.ok_or(SdpError::Missing { field: 'o' })?,
        session_name: session_name.ok_or(SdpError::Missing { field: 's' })?,
        connection,
        timing: timing.unwrap_or((0, 0)),
        attributes,
        other,
        media,
    })
}

fn parse_addr_type(s: &str) -> Option<AddrType> {
    match s {
        "IP4" => Some(AddrType::Ip4),
        "IP6" => Some(AddrType::Ip6),
        _ => None,
    }
}

fn parse_origin(v: &str) -> Option<Origin> {
    let f: Vec<&str> = v.split_ascii_whitespace().collect();
    let [user, id, version, net, addr_type, address] = f[..] else {
        return None;
    };
    if net != "IN" {
        return None;
    }
    Some(Origin {
        username: user.to_owned(),
        session_id: id.parse().ok()?,
        session_version: version.parse().ok()?,
        addr_type: parse_addr_type(addr_type)?,
        address: address.to_owned(),
    })
}

fn parse_timing(v: &str) -> Option<(u64, u64)> {
    let mut it = v.split_ascii_whitespace();
    let t = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    it.next().is_none().then_some(t)
}

/// `IN IP4 <addr>[/...]` as used by `c=` and `a=rtcp`.
fn parse_connection_fields<'a>(mut it: impl Iterator<Item = &'a str>) -> Option<Connection> {
    if it.next()? != "IN" {
        return None;
    }
    let addr_type = parse_addr_type(it.next()?)?;
    let full = it.next()?;
    if it.next().is_some() {
        return None;
    }
    let (addr, multicast) = match full.split_once('/') {
        Some((a, rest)) => (a, Some(rest.to_owned())),
        None => (full, None),
    };
    let address = match addr_type {
        AddrType::Ip4 => IpAddr::V4(addr.parse::<Ipv4Addr>().ok()?),
        AddrType::Ip6 => IpAddr::V6(addr.parse::<Ipv6Addr>().ok()?),
    };
    Some(Connection { address, multicast })
}

fn parse_connection(v: &str) -> Option<Connection> {
    parse_connection_fields(v.split_ascii_whitespace())
}

fn parse_media(v: &str) -> Option<MediaDescription> {
    let mut it = v.split_ascii_whitespace();
    let media = it.next()?;
    let port_field = it.next()?;
    let protocol = it.next()?;
    let (port, port_count) = match port_field.split_once('/') {
        Some((p, n)) => (p.parse().ok()?, Some(n.parse().ok()?)),
        None => (port_field.parse().ok()?, None),
    };
    let mut m = MediaDescription::new(media, port, protocol, it.map(str::to_owned).collect());
    m.port_count = port_count;
    Some(m)
}

/// Parses a ptime-like value; tolerates a decimal part (`20.0`), which some devices send.
fn parse_ms(v: &str) -> Option<u32> {
    let v = v.trim();
    let int = v.split_once('.').map_or(v, |(i, _)| i);
    int.parse().ok()
}

fn parse_attribute(v: &str) -> Result<Attribute, AttributeKind> {
    let (name, value) = match v.split_once(':') {
        Some((n, val)) => (n, Some(val)),
        None => (v.trim_end(), None),
    };
    let flag = |a: Attribute| {
        if value.is_some() {
            Err(AttributeKind::Flag)
        } else {
            Ok(a)
        }
    };
    match name {
        "rtpmap" => parse_rtpmap(value.unwrap_or(""))
            .map(Attribute::RtpMap)
            .ok_or(AttributeKind::RtpMap),
        "fmtp" => {
            let val = value.ok_or(AttributeKind::Fmtp)?;
            let (fmt, params) = val.split_once(' ').unwrap_or((val, ""));
            match fmt.parse::<u8>() {
                Ok(pt) if pt < 128 => Ok(Attribute::Fmtp {
                    pt,
                    params: params.trim().to_owned(),
                }),
                Ok(_) => Err(AttributeKind::Fmtp),
                // Non-RTP formats: keep verbatim.
                Err(_) => Ok(Attribute::Other {
                    name: name.to_owned(),
                    value: Some(val.to_owned()),
                }),
            }
        }
        "ptime" => value
            .and_then(parse_ms)
            .filter(|&p| p > 0)
            .map(Attribute::Ptime)
            .ok_or(AttributeKind::Ptime),
        "maxptime" => value
            .and_then(parse_ms)
            .filter(|&p| p > 0)
            .map(Attribute::MaxPtime)
            .ok_or(AttributeKind::MaxPtime),
        "rtcp" => {
            let mut it = value.ok_or(AttributeKind::Rtcp)?.split_ascii_whitespace();
            let port = it
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or(AttributeKind::Rtcp)?;
            let rest: Vec<&str> = it.collect();
            let connection = if rest.is_empty() {
                None
            } else {
                Some(parse_connection_fields(rest.into_iter()).ok_or(AttributeKind::Rtcp)?)
            };
            Ok(Attribute::Rtcp { port, connection })
        }
        "rtcp-mux" => flag(Attribute::RtcpMux),
        _ => match Direction::from_name(name) {
            Some(d) => flag(Attribute::Direction(d)),
            None => Ok(Attribute::Other {
                name: name.to_owned(),
                value: value.map(str::to_owned),
            }),
        },
    }
}

fn parse_rtpmap(v: &str) -> Option<RtpMap> {
    let (pt, rest) = v.trim().split_once(' ')?;
    let pt: u8 = pt.parse().ok().filter(|&p: &u8| p < 128)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.to_owned();
    if encoding.is_empty() {
        return None;
    }
    let clock_rate = parts.next()?.parse().ok().filter(|&c: &u32| c > 0)?;
    let channels = match parts.next() {
        Some(c) => Some(c.parse().ok()?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(RtpMap {
        pt,
        encoding,
        clock_rate,
        channels,
    })
}
