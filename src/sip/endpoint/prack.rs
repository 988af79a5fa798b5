//! Reliable provisional responses as UAC (RFC 3262): a 1xx with `Require: 100rel` and `RSeq` is acknowledged
//! with a PRACK in its early dialog. Per early dialog the first RSeq is taken as is and each later one must be the
//! previous plus one: a repeated RSeq is a retransmission (our PRACK transaction is already retransmitting, §4),
//! and one that skips ahead arrived out of order; neither is acknowledged nor reported to the TU.

use super::responses::{answer_challenge, resend_headers};
use super::*;

/// What to do with a provisional response, as far as RFC 3262 goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reliable {
    /// Not a reliable provisional (no `Require: 100rel`, or no usable RSeq): process as usual.
    No,
    /// A new reliable provisional: process and PRACK it.
    New(u32),
    /// A retransmission or an out-of-order one: drop it.
    Drop,
}

/// The RSeq of a response that requires 100rel (§7.1: 1 to 2^31−1).
fn rseq(h: &Headers) -> Option<u32> {
    let required = h
        .values(&HeaderName::Require)
        .any(|v| has_token(&v, "100rel"));
    if !required {
        return None;
    }
    let v = std::str::from_utf8(h.get(&HeaderName::RSeq)?).ok()?;
    let n: u32 = v.trim().parse().ok()?;
    (1..=0x7fff_ffff).contains(&n).then_some(n)
}

impl Endpoint {
    /// Classifies a provisional response to the initial INVITE of call `h` from the early dialog `tag`, and
    /// records its RSeq when it is the next one.
    pub(super) fn classify_reliable(
        &mut self,
        h: u64,
        tag: Option<&Bytes>,
        resp: &Response,
    ) -> Reliable {
        let Some(n) = rseq(&resp.headers) else {
            return Reliable::No;
        };
        let (Some(tag), Some(c)) = (tag, self.calls.get_mut(&h)) else {
            return Reliable::No; // §4: a reliable 1xx must create an early dialog; without a tag it cannot
        };
        let room = c.rseq.len() < MAX_DIALOGS_PER_CALL;
        match c.rseq.iter_mut().find(|(t, _)| t == tag) {
            Some((_, last)) if n == last.wrapping_add(1) => {
                *last = n;
                Reliable::New(n)
            }
            Some(_) => Reliable::Drop,
            None if room => {
                c.rseq.push((tag.clone(), n));
                Reliable::New(n)
            }
            None => Reliable::Drop,
        }
    }

    /// Sends a PRACK for RSeq `rseq` in the early dialog `tag` of call `h`; `invite` is the INVITE it answers.
    pub(super) fn send_prack(
        &mut self,
        now: Instant,
        h: u64,
        tag: &Bytes,
        rseq: u32,
        invite: &Request,
    ) {
        let transport = self.call_transport(h);
        let via = self.new_via(transport);
        let contact = self.contact(transport);
        let mf = self.config.max_forwards;
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        let fallback = c.next_hop;
        let Some(d) = c.early.iter_mut().find(|d| d.id.remote_tag == *tag) else {
            return;
        };
        let seq = d.next_seq();
        let Some(mut req) = d.request(Method::Prack, seq, via, &contact, mf) else {
            return;
        };
        let invite_seq = cseq_of(&invite.headers).map(|x| x.0).unwrap_or(1);
        req.headers.push(
            HeaderName::RAck,
            Bytes::from(format!("{rseq} {invite_seq} INVITE")),
        );
        let hop = d.next_hop().unwrap_or(fallback);
        self.start_client(now, req, hop, transport, Owner::Prack(h));
    }

    /// The final response to a PRACK. A 2xx only confirms the RSeq we already acknowledged; a 401/407 is
    /// answered from the call's credentials with a new PRACK (next CSeq of the early dialog); anything else is
    /// left alone (the INVITE goes on: the UAS retransmits its provisional and gives up on its own).
    pub(super) fn on_prack_response(
        &mut self,
        now: Instant,
        h: u64,
        request: &Request,
        resp: Response,
    ) {
        if resp.status.is_provisional() {
            return;
        }
        if !matches!(resp.status.as_u16(), 401 | 407) {
            self.auth_done(h);
            return;
        }
        let cnonce = self.token();
        let transport = self.call_transport(h);
        let via = self.new_via(transport);
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        let Some(auth) = c.auth.as_mut() else {
            return;
        };
        let Some((name, value)) = answer_challenge(auth, request, &resp, &cnonce) else {
            return;
        };
        let Some(tag) = to_tag(&request.headers) else {
            return;
        };
        let fallback = c.next_hop;
        let Some(d) = c.early.iter_mut().find(|d| d.id.remote_tag == tag) else {
            return; // the dialog was confirmed or ended meanwhile
        };
        let seq = d.next_seq();
        let hop = d.next_hop().unwrap_or(fallback);
        let mut req = request.clone();
        resend_headers(&mut req, via, seq, name, value);
        self.start_client(now, req, hop, transport, Owner::Prack(h));
    }
}
