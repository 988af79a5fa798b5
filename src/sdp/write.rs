//! SDP serialisation (CRLF line ends, RFC 8866 line order).

use std::fmt::{self, Display, Formatter};

use super::{
    media_rank, session_rank, AddrType, Attribute, Connection, MediaDescription, OtherLine, Sdp,
};

impl Display for Connection {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IN {} {}",
            AddrType::of(&self.address).as_str(),
            self.address
        )?;
        if let Some(m) = &self.multicast {
            write!(f, "/{m}")?;
        }
        Ok(())
    }
}

impl Display for Attribute {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::RtpMap(m) => {
                write!(f, "rtpmap:{} {}/{}", m.pt, m.encoding, m.clock_rate)?;
                if let Some(c) = m.channels {
                    write!(f, "/{c}")?;
                }
                Ok(())
            }
            Attribute::Fmtp { pt, params } => write!(f, "fmtp:{pt} {params}"),
            Attribute::Ptime(p) => write!(f, "ptime:{p}"),
            Attribute::MaxPtime(p) => write!(f, "maxptime:{p}"),
            Attribute::Rtcp {
                port,
                connection: Some(c),
            } => write!(f, "rtcp:{port} {c}"),
            Attribute::Rtcp {
                port,
                connection: None,
            } => write!(f, "rtcp:{port}"),
            Attribute::RtcpMux => f.write_str("rtcp-mux"),
            Attribute::Direction(d) => f.write_str(d.as_str()),
            Attribute::Other {
                name,
                value: Some(v),
            } => write!(f, "{name}:{v}"),
            Attribute::Other { name, value: None } => f.write_str(name),
        }
    }
}

fn write_other(
    f: &mut Formatter<'_>,
    lines: &[OtherLine],
    rank: fn(char) -> u8,
    wanted: u8,
) -> fmt::Result {
    for l in lines.iter().filter(|l| rank(l.kind) == wanted) {
        write!(f, "{}={}\r\n", l.kind, l.value)?;
    }
    Ok(())
}

impl Display for MediaDescription {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "m={} {}", self.media, self.port)?;
        if let Some(n) = self.port_count {
            write!(f, "/{n}")?;
        }
        write!(f, " {}", self.protocol)?;
        for fmt in &self.formats {
            write!(f, " {fmt}")?;
        }
        f.write_str("\r\n")?;
        write_other(f, &self.other, media_rank, 0)?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        write_other(f, &self.other, media_rank, 1)?;
        write_other(f, &self.other, media_rank, 2)?;
        for a in &self.attributes {
            write!(f, "a={a}\r\n")?;
        }
        Ok(())
    }
}

impl Display for Sdp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        f.write_str("v=0\r\n")?;
        write!(
            f,
            "o={} {} {} IN {} {}\r\n",
            o.username,
            o.session_id,
            o.session_version,
            o.addr_type.as_str(),
            o.address
        )?;
        write!(f, "s={}\r\n", self.session_name)?;
        write_other(f, &self.other, session_rank, 0)?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        write_other(f, &self.other, session_rank, 1)?;
        write!(f, "t={} {}\r\n", self.timing.0, self.timing.1)?;
        write_other(f, &self.other, session_rank, 2)?;
        for a in &self.attributes {
            write!(f, "a={a}\r\n")?;
        }
        for m in &self.media {
            write!(f, "{m}")?;
        }
        Ok(())
    }
}
