//! SIP dialog state (RFC 3261 §12): identifiers, route set, remote target, local and remote CSeq, and the
//! construction of in-dialog requests.
//!
//! A [`Dialog`] is plain data owned by the endpoint's call record; it never sends anything itself. The endpoint
//! ([`crate::sip::endpoint`]) decides when dialogs are created (1xx/2xx with a to-tag on the UAC side, our
//! provisional or 2xx on the UAS side), confirmed and terminated.

pub(crate) mod hdr;

use crate::sip::message::{HeaderName, Headers, Method, Request, Uri};
use bytes::Bytes;
use rand::Rng;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A dialog's identity: Call-ID plus local and remote tags (§12).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: Bytes,
    /// Our tag (From tag as UAC, To tag as UAS).
    pub local_tag: Bytes,
    /// The peer's tag.
    pub remote_tag: Bytes,
}

/// Dialog state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a provisional response.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
    /// Ended.
    Terminated,
}

/// One dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Identity.
    pub id: DialogId,
    /// State.
    pub state: DialogState,
    /// Our CSeq: the number of the last request we sent in this dialog.
    pub local_seq: u32,
    /// The peer's CSeq: the number of the last request it sent (`None` until it sends one).
    pub remote_seq: Option<u32>,
    /// Our From (UAC) / To (UAS) value, with our tag.
    pub local_addr: Bytes,
    /// The peer's value, with its tag.
    pub remote_addr: Bytes,
    /// Where in-dialog requests go (the peer's Contact URI).
    pub remote_target: Bytes,
    /// Route values, in the order they are put in requests.
    pub route_set: Vec<Bytes>,
    /// Whether we created the dialog as UAC (and so own its Call-ID, for §14.1 glare timing).
    pub is_uac: bool,
}

/// Errors from in-dialog request handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialogError {
    /// The request's CSeq is lower than or equal to one already seen (§12.2.2: answer 500).
    #[error("CSeq {got} not above {last}")]
    CSeqOutOfOrder {
        /// The CSeq received.
        got: u32,
        /// The last one seen.
        last: u32,
    },
}

fn contact_uri(headers: &Headers) -> Option<Bytes> {
    let c = headers.values(&HeaderName::Contact).next()?;
    Some(Bytes::copy_from_slice(hdr::uri_of(&c)))
}

impl Dialog {
    /// The UAC side of a dialog created by a response (`to` is the response's To value with the remote tag,
    /// §12.1.2). `request` is the INVITE as sent; `record_route` and `contact` come from the response.
    pub fn uac(request: &Request, resp_headers: &Headers, early: bool) -> Option<Dialog> {
        let to = resp_headers.get(&HeaderName::To)?.clone();
        let remote_tag = Bytes::copy_from_slice(hdr::tag(&to)?);
        let from = request.headers.get(&HeaderName::From)?.clone();
        let local_tag = Bytes::copy_from_slice(hdr::tag(&from)?);
        let call_id = request.headers.get(&HeaderName::CallId)?.clone();
        let (seq, _) = hdr::cseq(request.headers.get(&HeaderName::CSeq)?)?;
        let mut route_set: Vec<Bytes> = resp_headers.values(&HeaderName::RecordRoute).collect();
        route_set.reverse();
        let remote_target =
            contact_uri(resp_headers).unwrap_or_else(|| Bytes::from(request.uri.to_string()));
        Some(Dialog {
            id: DialogId {
                call_id,
                local_tag,
                remote_tag,
            },
            state: if early {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            local_seq: seq,
            remote_seq: None,
            local_addr: from,
            remote_addr: to,
            remote_target,
            route_set,
            is_uac: true,
        })
    }

    /// The UAS side of a dialog created by our response to `request`, with our `local_tag` (§12.1.1).
    pub fn uas(request: &Request, local_tag: Bytes, early: bool) -> Option<Dialog> {
        let from = request.headers.get(&HeaderName::From)?.clone();
        let remote_tag = Bytes::copy_from_slice(hdr::tag(&from)?);
        let to = request.headers.get(&HeaderName::To)?;
        let mut local_addr = to.to_vec();
        local_addr.extend_from_slice(b";tag=");
        local_addr.extend_from_slice(&local_tag);
        let call_id = request.headers.get(&HeaderName::CallId)?.clone();
        let (seq, _) = hdr::cseq(request.headers.get(&HeaderName::CSeq)?)?;
        let route_set: Vec<Bytes> = request.headers.values(&HeaderName::RecordRoute).collect();
        let remote_target = contact_uri(&request.headers)?;
        Some(Dialog {
            id: DialogId {
                call_id,
                local_tag,
                remote_tag,
            },
            state: if early {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            local_seq: 0,
            remote_seq: Some(seq),
            local_addr: Bytes::from(local_addr),
            remote_addr: from,
            remote_target,
            route_set,
            is_uac: false,
        })
    }

    /// Takes the peer's Contact as the new remote target (target refresh: 2xx, re-INVITE, UPDATE; §12.2).
    pub fn refresh_target(&mut self, headers: &Headers) {
        if let Some(uri) = contact_uri(headers) {
            self.remote_target = uri;
        }
    }

    /// Checks and records the CSeq of a request from the peer (§12.2.2).
    pub fn check_remote_cseq(&mut self, seq: u32) -> Result<(), DialogError> {
        match self.remote_seq {
            Some(last) if seq <= last => Err(DialogError::CSeqOutOfOrder { got: seq, last }),
            _ => {
                self.remote_seq = Some(seq);
                Ok(())
            }
        }
    }

    /// Builds an in-dialog request (§12.2.1.1). `seq` is its CSeq number (take one with [`Self::next_seq`],
    /// or reuse the INVITE's for an ACK). `via` is the complete Via value with a fresh branch. The Request-URI is
    /// the remote target (loose routing; a strict-routing first hop is not supported).
    pub fn request(
        &self,
        method: Method,
        seq: u32,
        via: Bytes,
        contact: &Bytes,
        max_forwards: u8,
    ) -> Option<Request> {
        let uri = Uri::parse_bytes(&self.remote_target).ok()?;
        let mut req = Request::new(method.clone(), uri);
        let h = &mut req.headers;
        h.push(HeaderName::Via, via);
        h.push(
            HeaderName::MaxForwards,
            Bytes::from(max_forwards.to_string()),
        );
        for r in &self.route_set {
            h.push(HeaderName::Route, r.clone());
        }
        h.push(HeaderName::From, self.local_addr.clone());
        h.push(HeaderName::To, self.remote_addr.clone());
        h.push(HeaderName::CallId, self.id.call_id.clone());
        h.push(
            HeaderName::CSeq,
            Bytes::from(format!("{seq} {}", method.as_str())),
        );
        if matches!(method, Method::Invite | Method::Update) {
            h.push(HeaderName::Contact, contact.clone());
        }
        Some(req)
    }

    /// Takes the next local CSeq number.
    pub fn next_seq(&mut self) -> u32 {
        self.local_seq = self.local_seq.wrapping_add(1).max(1);
        self.local_seq
    }

    /// The address of the next hop when it is an IP literal: the first Route's URI, else the remote target. `None`
    /// for host names (the endpoint then uses the call's configured next hop).
    pub fn next_hop(&self) -> Option<SocketAddr> {
        let uri = match self.route_set.first() {
            Some(r) => Bytes::copy_from_slice(hdr::uri_of(r)),
            None => self.remote_target.clone(),
        };
        uri_socket_addr(&uri)
    }
}

/// The socket address of a `sip:` URI whose host is an IP literal (default port 5060).
pub(crate) fn uri_socket_addr(uri: &Bytes) -> Option<SocketAddr> {
    let uri = Uri::parse_bytes(uri).ok()?;
    let ip: IpAddr = uri.host()?.ip()?;
    Some(SocketAddr::new(ip, uri.port().unwrap_or(5060)))
}

/// The wait before retrying a re-INVITE that got 491 (RFC 3261 §14.1): 2.1–4 s in 10 ms units if we own the
/// Call-ID (we sent the dialog-creating INVITE), else 0–2 s.
pub fn glare_retry_delay(rng: &mut impl Rng, owns_call_id: bool) -> Duration {
    let units: u64 = if owns_call_id {
        rng.random_range(210..=400)
    } else {
        rng.random_range(0..=200)
    };
    Duration::from_millis(units * 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn glare_windows() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            let d = glare_retry_delay(&mut rng, true);
            assert!(
                d >= Duration::from_millis(2100) && d <= Duration::from_secs(4),
                "{d:?}"
            );
            let d = glare_retry_delay(&mut rng, false);
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
    }

    #[test]
    fn cseq_must_increase() {
        let mut d = Dialog {
            id: DialogId {
                call_id: "c".into(),
                local_tag: "a".into(),
                remote_tag: "b".into(),
            },
            state: DialogState::Confirmed,
            local_seq: 1,
            remote_seq: Some(5),
            local_addr: "<sip:a@x>;tag=a".into(),
            remote_addr: "<sip:b@y>;tag=b".into(),
            remote_target: "sip:b@192.0.2.9:5070".into(),
            route_set: vec![],
            is_uac: true,
        };
        assert_eq!(
            d.check_remote_cseq(5),
            Err(DialogError::CSeqOutOfOrder { got: 5, last: 5 })
        );
        assert_eq!(d.check_remote_cseq(6), Ok(()));
        assert_eq!(d.next_hop(), Some("192.0.2.9:5070".parse().unwrap()));
        d.route_set.push("<sip:10.0.0.1;lr>".into());
        assert_eq!(d.next_hop(), Some("10.0.0.1:5060".parse().unwrap()));
        assert_eq!(d.next_seq(), 2);
    }
}
