//! Responses to our requests: INVITE (provisional, 2xx with forks, failures), re-INVITE (glare), in-dialog
//! requests, REGISTER, and answering digest challenges.

use super::prack::Reliable;
use super::*;

impl Endpoint {
    pub(super) fn handle_response(&mut self, now: Instant, resp: Response) {
        let Some(top) = resp.headers.values(&HeaderName::Via).next() else {
            return;
        };
        let Some(branch) = hdr::via(&top).and_then(|v| v.branch.map(str::to_owned)) else {
            return;
        };
        let Some((_, method)) = cseq_of(&resp.headers) else {
            return;
        };
        let Some(&id) = self.client_index.get(&(branch, method)) else {
            tracing::debug!("response matches no client transaction");
            return;
        };
        let Some(e) = self.clients.get_mut(&id) else {
            return;
        };
        // The next hop is alive: no response deadline any more.
        e.answered = true;
        e.silent_deadline = None;
        let code = resp.status.as_u16();
        let disp = e.tx.handle_response(now, code);
        let owner = e.owner;
        let request = e.request.clone();
        if disp == ClientDisposition::PassUpAndAck {
            let ack = non_2xx_ack(&request, &resp);
            e.tx.send_ack(ack.to_bytes());
        }
        self.drain_client(now, id);
        if disp == ClientDisposition::Absorb {
            return;
        }
        match owner {
            Owner::Invite(h) => self.on_invite_response(now, h, id, &request, resp),
            Owner::ReInvite(h) => self.on_reinvite_response(now, h, id, &request, resp),
            Owner::InDialog(h) => self.on_in_dialog_response(now, h, &request, resp),
            Owner::Register(r) => self.on_register_response(now, r, id, &request, resp),
            Owner::Prack(h) => self.on_prack_response(now, h, &request, resp),
            Owner::Cancel(_) | Owner::Orphan => {}
        }
    }

    pub(super) fn on_register_response(
        &mut self,
        now: Instant,
        r: u64,
        tx: TxId,
        request: &Request,
        resp: Response,
    ) {
        if resp.status.is_provisional() {
            return;
        }
        let cnonce = self.token();
        let transport = self
            .regs
            .get(&r)
            .map_or(self.config.transport, |reg| reg.transport);
        let via = self.new_via(transport);
        let Some(reg) = self.regs.get_mut(&r) else {
            return;
        };
        if reg.tx != Some(tx) {
            return;
        }
        reg.tx = None;
        if let Some(auth) = reg.auth.as_mut() {
            if let Some((name, value)) = answer_challenge(auth, request, &resp, &cnonce) {
                reg.cseq = reg.cseq.wrapping_add(1);
                let mut req = request.clone();
                resend_headers(&mut req, via, reg.cseq, name, value);
                let hop = reg.next_hop;
                let id = self.start_client(now, req, hop, transport, Owner::Register(r));
                if let Some(reg) = self.regs.get_mut(&r) {
                    reg.tx = Some(id);
                }
                return;
            }
            auth.request_done();
        }
        let expires = resp
            .status
            .is_success()
            .then(|| granted_expires(&resp.headers))
            .flatten();
        if let Some(reg) = self.regs.get_mut(&r) {
            reg.last_headers = Some(resp.headers.clone());
        }
        self.events.push_back(Event::Registration {
            reg: RegistrationHandle(r),
            status: resp.status,
            expires,
        });
    }

    /// Answers a 401/407 by re-sending `request` with credentials. Returns false when we cannot or should not.
    pub(super) fn retry_with_auth(
        &mut self,
        now: Instant,
        h: u64,
        request: &Request,
        resp: &Response,
        owner: Owner,
    ) -> bool {
        let cnonce = self.token();
        let transport = self.call_transport(h);
        let via = self.new_via(transport);
        let Some(c) = self.calls.get_mut(&h) else {
            return false;
        };
        let Some(auth) = c.auth.as_mut() else {
            return false;
        };
        let Some((answer_hdr, value)) = answer_challenge(auth, request, resp, &cnonce) else {
            return false;
        };
        let seq = match (&mut c.dialog, owner) {
            (Some(d), Owner::ReInvite(_) | Owner::InDialog(_)) => d.next_seq(),
            _ => cseq_of(&request.headers)
                .map(|(n, _)| n.wrapping_add(1))
                .unwrap_or(1),
        };
        let mut req = request.clone();
        resend_headers(&mut req, via, seq, answer_hdr, value);
        let dest = c.hop();
        if let Owner::Invite(_) = owner {
            c.invite = Some(req.clone());
        }
        let id = self.start_client(now, req, dest, transport, owner);
        if let Some(c) = self.calls.get_mut(&h) {
            match owner {
                Owner::Invite(_) => c.invite_tx = Some(id),
                Owner::ReInvite(_) => c.reinvite_tx = Some(id),
                Owner::InDialog(_) if c.update_tx.is_some() && request.method == Method::Update => {
                    c.update_tx = Some(id)
                }
                _ => {}
            }
        }
        true
    }

    pub(super) fn auth_done(&mut self, h: u64) {
        if let Some(a) = self.calls.get_mut(&h).and_then(|c| c.auth.as_mut()) {
            a.request_done();
        }
    }

    pub(super) fn on_invite_response(
        &mut self,
        now: Instant,
        h: u64,
        tx: TxId,
        request: &Request,
        resp: Response,
    ) {
        let code = resp.status.as_u16();
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        // The next hop answers: no longer silent.
        c.silent_deadline = None;
        if c.invite_tx != Some(tx) {
            // A response to an INVITE we replaced (auth retry): only a 2xx matters (it would create a dialog).
            if !resp.status.is_success() {
                return;
            }
        }
        if resp.status.is_provisional() {
            let remote_tag = to_tag(&resp.headers);
            let reliable = if code > 100 {
                self.classify_reliable(h, remote_tag.as_ref(), &resp)
            } else {
                Reliable::No
            };
            if reliable == Reliable::Drop {
                return;
            }
            let Some(c) = self.calls.get_mut(&h) else {
                return;
            };
            c.got_provisional = true;
            if let Some(tag) = remote_tag.clone() {
                let room = c.early.len() < MAX_DIALOGS_PER_CALL;
                match c.early.iter_mut().find(|d| d.id.remote_tag == tag) {
                    Some(d) => d.refresh_target(&resp.headers),
                    None if room => {
                        if let Some(d) = Dialog::uac(request, &resp.headers, true) {
                            c.early.push(d);
                        }
                    }
                    None => {}
                }
            }
            let cancel_now = c.cancel == CancelState::Pending;
            let report = code > 100 && !c.terminated && c.cancel == CancelState::None;
            if let (Reliable::New(n), Some(tag), true) = (reliable, &remote_tag, report) {
                self.send_prack(now, h, tag, n, request);
            }
            if report {
                self.note_headers(h, &resp.headers);
                self.events.push_back(Event::Provisional {
                    call: CallHandle(h),
                    status: resp.status,
                    remote_tag,
                    body: resp.body,
                });
            }
            if cancel_now {
                self.send_cancel_now(now, h);
            }
            return;
        }
        if resp.status.is_success() {
            self.auth_done(h);
            let Some(tag) = to_tag(&resp.headers) else {
                return;
            };
            let Some(c) = self.calls.get_mut(&h) else {
                return;
            };
            if let Some(d) = &c.dialog {
                if d.id.remote_tag == tag {
                    // 2xx retransmission: re-ACK.
                    let seq = cseq_of(&request.headers).map(|x| x.0).unwrap_or(1);
                    if let Some(ack) = c.ack_for(seq) {
                        let (hop, t) = (c.hop(), c.transport);
                        self.send_raw(hop, t, ack);
                    }
                    return;
                }
                self.ack_and_bye_fork(now, h, request, &resp, tag);
                return;
            }
            if c.terminated && c.cancel == CancelState::None {
                // Ended by a timeout before the 2xx: still ACK and BYE this fork.
                self.ack_and_bye_fork(now, h, request, &resp, tag);
                return;
            }
            let Some(mut d) = Dialog::uac(request, &resp.headers, false) else {
                return;
            };
            d.state = crate::sip::dialog::DialogState::Confirmed;
            // CSeqs go on from the early dialog's (a PRACK used one, RFC 3262 §4).
            if let Some(e) = c.early.iter().find(|e| e.id.remote_tag == tag) {
                d.local_seq = d.local_seq.max(e.local_seq);
            }
            c.early.clear();
            c.dialog = Some(d);
            c.cancel_deadline = None;
            let cancelled = c.cancel != CancelState::None || c.terminated;
            let seq = cseq_of(&request.headers).map(|x| x.0).unwrap_or(1);
            self.send_ack(h, seq, request);
            if cancelled {
                // CANCEL/200 race (§9.1, §15): the 2xx won; end the session we did not want.
                self.send_bye_now(now, h);
                self.terminate(now, h, TerminationReason::Cancelled);
            } else {
                self.note_headers(h, &resp.headers);
                self.events.push_back(Event::Answered {
                    call: CallHandle(h),
                    body: resp.body,
                });
            }
            return;
        }
        if self.retry_with_auth(now, h, request, &resp, Owner::Invite(h)) {
            return;
        }
        self.auth_done(h);
        let cancelled = self
            .calls
            .get(&h)
            .is_some_and(|c| c.cancel != CancelState::None);
        let reason = if cancelled && code == 487 {
            TerminationReason::Cancelled
        } else {
            TerminationReason::Rejected(resp.status)
        };
        // A 422's Min-SE, a 503's Retry-After... stay readable through `last_headers`.
        self.note_headers(h, &resp.headers);
        self.terminate(now, h, reason);
    }

    /// Sends (and remembers) the ACK for a 2xx to the INVITE with CSeq `seq` (§13.2.2.4).
    pub(super) fn send_ack(&mut self, h: u64, seq: u32, invite: &Request) {
        let transport = self.call_transport(h);
        let via = self.new_via(transport);
        let contact = self.contact(transport);
        let mf = self.config.max_forwards;
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        let Some(d) = &c.dialog else { return };
        let Some(mut ack) = d.request(Method::Ack, seq, via, &contact, mf) else {
            return;
        };
        for name in [HeaderName::Authorization, HeaderName::ProxyAuthorization] {
            if let Some(v) = invite.headers.get(&name) {
                ack.headers.push(name, v.clone());
            }
        }
        let bytes = ack.to_bytes();
        // Keep the initial INVITE's ACK and the latest re-INVITE's.
        if c.acks.len() >= 2 {
            c.acks.remove(1);
        }
        c.acks.push((seq, bytes.clone()));
        let hop = c.hop();
        self.send_raw(hop, transport, bytes);
    }

    pub(super) fn ack_and_bye_fork(
        &mut self,
        now: Instant,
        h: u64,
        request: &Request,
        resp: &Response,
        tag: Bytes,
    ) {
        let Some(c) = self.calls.get(&h) else { return };
        let transport = c.transport;
        if let Some((_, hop, ack)) = c.forks.iter().find(|(t, _, _)| *t == tag) {
            let (hop, ack) = (*hop, ack.clone());
            self.send_raw(hop, transport, ack);
            return;
        }
        if c.forks.len() >= MAX_DIALOGS_PER_CALL {
            return; // a peer inventing tags gets no more BYE transactions out of us
        }
        let Some(mut d) = Dialog::uac(request, &resp.headers, false) else {
            return;
        };
        let fallback = c.next_hop;
        let (via, via2, contact, mf) = (
            self.new_via(transport),
            self.new_via(transport),
            self.contact(transport),
            self.config.max_forwards,
        );
        let seq = cseq_of(&request.headers).map(|x| x.0).unwrap_or(1);
        let hop = d.next_hop().unwrap_or(fallback);
        let Some(ack) = d.request(Method::Ack, seq, via, &contact, mf) else {
            return;
        };
        let ack = ack.to_bytes();
        self.send_raw(hop, transport, ack.clone());
        let bye_seq = d.next_seq();
        if let Some(bye) = d.request(Method::Bye, bye_seq, via2, &contact, mf) {
            self.start_client(now, bye, hop, transport, Owner::Orphan);
        }
        if let Some(c) = self.calls.get_mut(&h) {
            c.forks.push((tag, hop, ack));
        }
    }

    pub(super) fn on_reinvite_response(
        &mut self,
        now: Instant,
        h: u64,
        tx: TxId,
        request: &Request,
        resp: Response,
    ) {
        if resp.status.is_provisional() {
            return;
        }
        let code = resp.status.as_u16();
        let seq = cseq_of(&request.headers).map(|x| x.0).unwrap_or(0);
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        if resp.status.is_success() {
            if let Some(ack) = c.ack_for(seq) {
                let (hop, t) = (c.hop(), c.transport);
                self.send_raw(hop, t, ack);
                return;
            }
            if let Some(d) = &mut c.dialog {
                d.refresh_target(&resp.headers);
            }
            if c.reinvite_tx == Some(tx) {
                c.reinvite_tx = None;
            }
            self.auth_done(h);
            self.send_ack(h, seq, request);
            self.note_headers(h, &resp.headers);
            self.events.push_back(Event::Response {
                call: CallHandle(h),
                method: Method::Invite,
                status: resp.status,
                body: resp.body,
            });
            return;
        }
        if c.reinvite_tx != Some(tx) {
            return;
        }
        c.reinvite_tx = None;
        if code == 491 {
            // §14.1 glare: retry after a random delay that depends on who owns the Call-ID.
            let owns = c.is_uac;
            let delay = glare_retry_delay(&mut self.rng, owns);
            if self.config.tu_glare_retry {
                self.events.push_back(Event::Glare {
                    call: CallHandle(h),
                    retry_at: now + delay,
                });
                return;
            }
            if let Some(c) = self.calls.get_mut(&h) {
                c.glare_retry = Some((now + delay, request.body.clone()));
            }
            return;
        }
        if self.retry_with_auth(now, h, request, &resp, Owner::ReInvite(h)) {
            return;
        }
        self.auth_done(h);
        match code {
            481 => self.terminate(now, h, TerminationReason::DialogGone),
            408 => {
                self.send_bye_now(now, h);
                self.terminate(now, h, TerminationReason::Timeout);
            }
            _ => {
                self.note_headers(h, &resp.headers);
                self.events.push_back(Event::Response {
                    call: CallHandle(h),
                    method: Method::Invite,
                    status: resp.status,
                    body: resp.body,
                });
            }
        }
    }

    pub(super) fn on_in_dialog_response(
        &mut self,
        now: Instant,
        h: u64,
        request: &Request,
        resp: Response,
    ) {
        if resp.status.is_provisional() {
            return;
        }
        if self.retry_with_auth(now, h, request, &resp, Owner::InDialog(h)) {
            return;
        }
        self.auth_done(h);
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        if request.method == Method::Update {
            c.update_tx = None;
            if resp.status.is_success() {
                if let Some(d) = &mut c.dialog {
                    d.refresh_target(&resp.headers);
                }
            }
        }
        if request.method == Method::Bye {
            return;
        }
        if resp.status.as_u16() == 481 {
            self.terminate(now, h, TerminationReason::DialogGone);
            return;
        }
        if !c.terminated {
            c.last_headers = Some(resp.headers.clone());
            self.events.push_back(Event::Response {
                call: CallHandle(h),
                method: request.method.clone(),
                status: resp.status,
                body: resp.body,
            });
        }
    }
}

/// The lifetime a registrar granted: the first Contact's `expires` parameter, else the Expires header.
fn granted_expires(h: &Headers) -> Option<u32> {
    let from_contact = h.values(&HeaderName::Contact).next().and_then(|c| {
        let v = hdr::param(&c, "expires")?;
        std::str::from_utf8(v).ok()?.parse().ok()
    });
    from_contact.or_else(|| {
        std::str::from_utf8(h.get(&HeaderName::Expires)?)
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// Answers a 401/407 from `auth`: the header to add and its value, or `None` when we cannot or must not retry.
pub(super) fn answer_challenge(
    auth: &mut DigestClient,
    request: &Request,
    resp: &Response,
    cnonce: &str,
) -> Option<(HeaderName, String)> {
    let (chal, answer_hdr) = match resp.status.as_u16() {
        401 => (HeaderName::WwwAuthenticate, HeaderName::Authorization),
        407 => (
            HeaderName::ProxyAuthenticate,
            HeaderName::ProxyAuthorization,
        ),
        _ => return None,
    };
    let challenge = resp.headers.get(&chal)?;
    let uri = request.uri.to_string();
    match auth.answer(challenge, request.method.as_str(), &uri, cnonce) {
        Ok(v) => Some((answer_hdr, v)),
        Err(e) => {
            tracing::debug!(error = %e, "not answering challenge");
            auth.request_done();
            None
        }
    }
}

/// Prepares a copy of a challenged request for re-sending: new top Via (branch), new CSeq, credentials.
pub(super) fn resend_headers(
    req: &mut Request,
    via: Bytes,
    seq: u32,
    answer_hdr: HeaderName,
    value: String,
) {
    let others: Vec<Bytes> = req.headers.values(&HeaderName::Via).skip(1).collect();
    req.headers.remove(&HeaderName::Via);
    req.headers.push(HeaderName::Via, via);
    for v in others {
        req.headers.push(HeaderName::Via, v);
    }
    req.headers.set(
        HeaderName::CSeq,
        Bytes::from(format!("{seq} {}", req.method.as_str())),
    );
    req.headers.set(answer_hdr, Bytes::from(value));
}

/// The ACK for a non-2xx final response (§17.1.1.3): same Request-URI, top Via, Call-ID, From, Route and CSeq
/// number as the INVITE, To from the response.
fn non_2xx_ack(invite: &Request, resp: &Response) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    if let Some(v) = invite.headers.values(&HeaderName::Via).next() {
        ack.headers.push(HeaderName::Via, v);
    }
    if let Some(mf) = invite.headers.get(&HeaderName::MaxForwards) {
        ack.headers.push(HeaderName::MaxForwards, mf.clone());
    }
    for r in invite.headers.get_all(&HeaderName::Route) {
        ack.headers.push(HeaderName::Route, r.clone());
    }
    if let Some(v) = invite.headers.get(&HeaderName::From) {
        ack.headers.push(HeaderName::From, v.clone());
    }
    if let Some(v) = resp.headers.get(&HeaderName::To) {
        ack.headers.push(HeaderName::To, v.clone());
    }
    if let Some(v) = invite.headers.get(&HeaderName::CallId) {
        ack.headers.push(HeaderName::CallId, v.clone());
    }
    let seq = cseq_of(&invite.headers).map(|x| x.0).unwrap_or(1);
    ack.headers
        .push(HeaderName::CSeq, Bytes::from(format!("{seq} ACK")));
    ack
}
