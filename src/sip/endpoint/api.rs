//! The TU-facing API: place, cancel, end and change calls, answer the peer's requests, register.

use super::*;
use crate::sip::message::{NameAddr, Params};

impl Endpoint {
    /// Places a call: sends an INVITE and returns the call's handle. Progress arrives as [`Event::Provisional`],
    /// [`Event::Answered`] or [`Event::Terminated`].
    ///
    /// [`InviteRequest::from`] is a SIP URI, or a name-addr carrying a display name (`"Name" <sip:...>`, as
    /// [`crate::sip::message::NameAddr::encode`] writes it); any header parameters in it are dropped (we add
    /// our tag).
    pub fn start_invite(
        &mut self,
        now: Instant,
        inv: InviteRequest,
    ) -> Result<CallHandle, EndpointError> {
        let call_id = Bytes::from(format!(
            "{}@{}",
            self.token(),
            self.config.advertised_addr.ip()
        ));
        let local_tag = Bytes::from(self.token());
        self.send_invite(now, inv, call_id, local_tag, 1)
    }

    /// Places the INVITE of `previous` again as a new call: same Call-ID and From tag, the next CSeq and a new
    /// branch (RFC 3261 §8.1.3.5, RFC 4028 §7.4), with `inv`'s body and headers. This is how a UAC retries
    /// after a 422 (Session Interval Too Small) with a larger Session-Expires and Min-SE. `previous` must be a
    /// call of ours whose INVITE failed with a final non-2xx response (it lingers for 64*T1 after ending).
    pub fn retry_invite(
        &mut self,
        now: Instant,
        previous: CallHandle,
        inv: InviteRequest,
    ) -> Result<CallHandle, EndpointError> {
        let c = self
            .calls
            .get_mut(&previous.0)
            .ok_or(EndpointError::UnknownCall(previous))?;
        let old = match &c.invite {
            Some(r) if c.is_uac && c.dialog.is_none() && c.terminated => r,
            _ => return Err(EndpointError::InvalidState),
        };
        let call_id = old
            .headers
            .get(&HeaderName::CallId)
            .cloned()
            .ok_or(EndpointError::InvalidState)?;
        let seq = cseq_of(&old.headers).map_or(1, |(n, _)| n.wrapping_add(1));
        let local_tag = c.local_tag.clone();
        let auth = c.auth.take();
        let h = self.send_invite(now, inv, call_id, local_tag, seq)?;
        if let (Some(c), Some(a)) = (self.calls.get_mut(&h.0), auth) {
            c.auth = Some(a);
        }
        Ok(h)
    }

    fn send_invite(
        &mut self,
        now: Instant,
        inv: InviteRequest,
        call_id: Bytes,
        local_tag: Bytes,
        seq: u32,
    ) -> Result<CallHandle, EndpointError> {
        let uri = Uri::parse(&inv.target).map_err(|_| EndpointError::InvalidUri)?;
        let to = inv.to.clone().unwrap_or_else(|| inv.target.clone());
        Uri::parse(&to).map_err(|_| EndpointError::InvalidUri)?;
        let from = if inv.from.contains('<') {
            let mut na = NameAddr::parse(&Bytes::from(inv.from.clone()))
                .map_err(|_| EndpointError::InvalidUri)?;
            na.params = Params::new();
            na.set_tag(local_tag.clone());
            na.encode()
        } else {
            Uri::parse(&inv.from).map_err(|_| EndpointError::InvalidUri)?;
            Bytes::from(format!(
                "<{}>;tag={}",
                inv.from,
                String::from_utf8_lossy(&local_tag)
            ))
        };
        let transport = inv.transport.unwrap_or(self.config.transport);
        let via = self.new_via(transport);
        let mut req = Request::new(Method::Invite, uri);
        let h = &mut req.headers;
        h.push(HeaderName::Via, via);
        h.push(
            HeaderName::MaxForwards,
            Bytes::from(self.config.max_forwards.to_string()),
        );
        h.push(HeaderName::From, from);
        h.push(HeaderName::To, Bytes::from(format!("<{to}>")));
        h.push(HeaderName::CallId, call_id.clone());
        h.push(HeaderName::CSeq, Bytes::from(format!("{seq} INVITE")));
        h.push(HeaderName::Contact, self.contact(transport));
        h.push(HeaderName::Allow, Bytes::from_static(ALLOW.as_bytes()));
        if let Some(ua) = &self.config.user_agent {
            h.push(HeaderName::UserAgent, Bytes::from(ua.clone()));
        }
        // RFC 3262 / RFC 4028: we acknowledge reliable provisionals and understand session timers. Tokens the
        // caller's own Supported headers already list are not repeated.
        let theirs: Vec<Bytes> = inv
            .extra_headers
            .iter()
            .filter(|(n, _)| *n == HeaderName::Supported)
            .map(|(_, v)| v.clone())
            .collect();
        let ours: Vec<&str> = SUPPORTED
            .iter()
            .copied()
            .filter(|t| !theirs.iter().any(|v| has_token(v, t)))
            .collect();
        if !ours.is_empty() {
            h.push(HeaderName::Supported, Bytes::from(ours.join(", ")));
        }
        for (n, v) in inv.extra_headers {
            h.push(n, v);
        }
        if !inv.sdp.is_empty() {
            req.set_body("application/sdp", inv.sdp);
        }
        let handle = self.id();
        let mut call = Call::new(true, local_tag.clone(), inv.next_hop, transport);
        call.auth = inv.credentials.map(DigestClient::new);
        call.invite = Some(req.clone());
        self.calls.insert(handle, call);
        self.dialog_index.insert((call_id, local_tag), handle);
        let tx = self.start_client(now, req, inv.next_hop, transport, Owner::Invite(handle));
        if let Some(c) = self.calls.get_mut(&handle) {
            c.invite_tx = Some(tx);
        }
        Ok(CallHandle(handle))
    }

    /// Sends a REGISTER binding our Contact to `req.aor` for `req.expires` seconds. The outcome arrives as
    /// [`Event::Registration`] or [`Event::RegistrationTimeout`]; refreshing is the TU's job
    /// ([`Self::refresh_register`]).
    pub fn register(
        &mut self,
        now: Instant,
        req: RegisterRequest,
    ) -> Result<RegistrationHandle, EndpointError> {
        let uri = Uri::parse(&req.registrar).map_err(|_| EndpointError::InvalidUri)?;
        Uri::parse(&req.aor).map_err(|_| EndpointError::InvalidUri)?;
        let call_id = Bytes::from(format!(
            "{}@{}",
            self.token(),
            self.config.advertised_addr.ip()
        ));
        let tag = self.token();
        let mut r = Request::new(Method::Register, uri);
        let h = &mut r.headers;
        h.push(
            HeaderName::MaxForwards,
            Bytes::from(self.config.max_forwards.to_string()),
        );
        h.push(
            HeaderName::From,
            Bytes::from(format!("<{}>;tag={tag}", req.aor)),
        );
        h.push(HeaderName::To, Bytes::from(format!("<{}>", req.aor)));
        h.push(HeaderName::CallId, call_id);
        let transport = req.transport.unwrap_or(self.config.transport);
        h.push(HeaderName::Contact, self.contact(transport));
        for (n, v) in req.extra_headers {
            h.push(n, v);
        }
        let handle = self.id();
        self.regs.insert(
            handle,
            Registration {
                request: r,
                next_hop: req.next_hop,
                transport,
                cseq: 0,
                auth: req.credentials.map(DigestClient::new),
                tx: None,
                last_headers: None,
            },
        );
        self.refresh_register(now, RegistrationHandle(handle), req.expires)?;
        Ok(RegistrationHandle(handle))
    }

    /// Sends the next REGISTER of a registration (same Call-ID, next CSeq, §10.2.4); `expires` 0 removes the
    /// binding.
    pub fn refresh_register(
        &mut self,
        now: Instant,
        reg: RegistrationHandle,
        expires: u32,
    ) -> Result<(), EndpointError> {
        let transport = self
            .regs
            .get(&reg.0)
            .ok_or(EndpointError::UnknownRegistration(reg))?
            .transport;
        let via = self.new_via(transport);
        let r = self
            .regs
            .get_mut(&reg.0)
            .ok_or(EndpointError::UnknownRegistration(reg))?;
        if r.tx.is_some() {
            return Err(EndpointError::RequestPending);
        }
        r.cseq = r.cseq.wrapping_add(1);
        let mut req = r.request.clone();
        req.headers.push_front(HeaderName::Via, via);
        req.headers.set(
            HeaderName::CSeq,
            Bytes::from(format!("{} REGISTER", r.cseq)),
        );
        req.headers
            .set(HeaderName::Expires, Bytes::from(expires.to_string()));
        let hop = r.next_hop;
        let id = self.start_client(now, req, hop, transport, Owner::Register(reg.0));
        if let Some(r) = self.regs.get_mut(&reg.0) {
            r.tx = Some(id);
        }
        Ok(())
    }

    /// Gives the REGISTER of `reg` now in flight until `at` to draw a response, any response (a 100 Trying is
    /// enough): if none has come by then, it is no longer retransmitted (its client transaction is dropped) and
    /// [`Event::RegistrationTimeout`] is reported at `at` instead of after Timer F (64·T1, 32 s), so the TU can try
    /// the registrar's next server (RFC 3263 §4.3). A response removes the deadline, and the REGISTER re-sent with
    /// credentials after a challenge has none. A REGISTER that already drew a response is left alone.
    /// Errors: an unknown registration, or [`EndpointError::NoPendingRequest`] when no REGISTER is in flight.
    pub fn set_register_response_deadline(
        &mut self,
        reg: RegistrationHandle,
        at: Instant,
    ) -> Result<(), EndpointError> {
        let tx = self
            .regs
            .get(&reg.0)
            .ok_or(EndpointError::UnknownRegistration(reg))?
            .tx
            .ok_or(EndpointError::NoPendingRequest)?;
        let e = self
            .clients
            .get_mut(&tx)
            .ok_or(EndpointError::NoPendingRequest)?;
        if !e.answered {
            e.silent_deadline = Some(at);
        }
        Ok(())
    }

    /// Forgets a registration (send `refresh_register(.., 0)` first to remove the binding).
    pub fn drop_registration(&mut self, reg: RegistrationHandle) {
        self.regs.remove(&reg.0);
    }

    pub(super) fn call_mut(&mut self, call: CallHandle) -> Result<&mut Call, EndpointError> {
        match self.calls.get_mut(&call.0) {
            Some(c) if !c.terminated => Ok(c),
            _ => Err(EndpointError::UnknownCall(call)),
        }
    }

    /// Gives the INVITE of our call `call` until `at` to draw a response, any response (a 100 Trying is enough):
    /// if none has come by then, the INVITE is no longer retransmitted (its client transaction is dropped; a
    /// CANCEL cannot be sent before a provisional response, RFC 3261 §9.1) and the call ends with
    /// [`TerminationReason::Timeout`], so the TU can try the next server (RFC 3263 §4.3) without waiting for
    /// Timer B. A response before `at` removes the deadline; the ring time is then the TU's business.
    /// Errors: an unknown or ended call, or one that is not ours or already answered.
    pub fn set_response_deadline(
        &mut self,
        call: CallHandle,
        at: Instant,
    ) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.is_uac || c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        if !c.got_provisional {
            c.silent_deadline = Some(at);
        }
        Ok(())
    }

    /// Cancels our pending INVITE (§9.1). Before any provisional response the CANCEL waits for one. If a 2xx
    /// crosses the CANCEL, it is ACKed and BYE'd. The call ends with [`TerminationReason::Cancelled`].
    pub fn send_cancel(&mut self, now: Instant, call: CallHandle) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.is_uac || c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        if c.cancel != CancelState::None {
            return Ok(());
        }
        if !c.got_provisional {
            c.cancel = CancelState::Pending;
            return Ok(());
        }
        self.send_cancel_now(now, call.0);
        Ok(())
    }

    pub(super) fn send_cancel_now(&mut self, now: Instant, h: u64) {
        let deadline = now + self.config.timers.timeout();
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        let Some(inv) = &c.invite else { return };
        let open = c
            .invite_tx
            .is_some_and(|t| self.clients.get(&t).is_some_and(|e| !e.tx.has_final()));
        if !open {
            return;
        }
        let mut cancel = Request::new(Method::Cancel, inv.uri.clone());
        if let Some(v) = inv.headers.values(&HeaderName::Via).next() {
            cancel.headers.push(HeaderName::Via, v);
        }
        cancel.headers.push(
            HeaderName::MaxForwards,
            Bytes::from(self.config.max_forwards.to_string()),
        );
        for r in inv.headers.get_all(&HeaderName::Route) {
            cancel.headers.push(HeaderName::Route, r.clone());
        }
        for n in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
            if let Some(v) = inv.headers.get(&n) {
                cancel.headers.push(n, v.clone());
            }
        }
        let seq = cseq_of(&inv.headers).map(|x| x.0).unwrap_or(1);
        cancel
            .headers
            .push(HeaderName::CSeq, Bytes::from(format!("{seq} CANCEL")));
        c.cancel = CancelState::Sent;
        c.cancel_deadline = Some(deadline);
        let (hop, transport) = (c.next_hop, c.transport);
        self.start_client(now, cancel, hop, transport, Owner::Cancel(h));
    }

    /// Ends the call. Before a final response to our INVITE this is [`Self::send_cancel`]. As UAS before the ACK
    /// for our 2xx, the BYE waits for the ACK (§15). The call ends at once with [`TerminationReason::LocalBye`].
    pub fn send_bye(&mut self, now: Instant, call: CallHandle) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.confirmed() {
            if c.is_uac {
                return self.send_cancel(now, call);
            }
            return Err(EndpointError::InvalidState);
        }
        if c.retrans.as_ref().is_some_and(|r| r.initial) {
            c.bye_pending = true;
        } else {
            self.send_bye_now(now, call.0);
        }
        self.terminate(now, call.0, TerminationReason::LocalBye);
        Ok(())
    }

    pub(super) fn send_bye_now(&mut self, now: Instant, h: u64) {
        let _ = self.send_in_dialog(now, h, Method::Bye, None, Bytes::new());
    }

    pub(super) fn send_in_dialog(
        &mut self,
        now: Instant,
        h: u64,
        method: Method,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<TxId, EndpointError> {
        self.send_in_dialog_with(now, h, method, content_type, body, Vec::new())
    }

    pub(super) fn send_in_dialog_with(
        &mut self,
        now: Instant,
        h: u64,
        method: Method,
        content_type: Option<&str>,
        body: Bytes,
        extra: Vec<(HeaderName, Bytes)>,
    ) -> Result<TxId, EndpointError> {
        let transport = self.call_transport(h);
        let via = self.new_via(transport);
        let contact = self.contact(transport);
        let mf = self.config.max_forwards;
        let c = self
            .calls
            .get_mut(&h)
            .ok_or(EndpointError::UnknownCall(CallHandle(h)))?;
        let d = c.dialog.as_mut().ok_or(EndpointError::InvalidState)?;
        let seq = d.next_seq();
        let mut req = d
            .request(method.clone(), seq, via, &contact, mf)
            .ok_or(EndpointError::InvalidUri)?;
        for (n, v) in extra {
            req.headers.push(n, v);
        }
        if let Some(ct) = content_type {
            req.set_body(ct, body);
        }
        let hop = c.hop();
        let owner = if method == Method::Invite {
            Owner::ReInvite(h)
        } else {
            Owner::InDialog(h)
        };
        Ok(self.start_client(now, req, hop, transport, owner))
    }

    /// Sends a re-INVITE with `sdp` (§14.1). The answer arrives as [`Event::Response`] with method INVITE; a 491
    /// is retried automatically after the RFC's random delay.
    pub fn send_reinvite(
        &mut self,
        now: Instant,
        call: CallHandle,
        sdp: Bytes,
    ) -> Result<(), EndpointError> {
        self.send_reinvite_with(now, call, sdp, Vec::new())
    }

    /// [`Self::send_reinvite`] with extra headers, e.g. a session refresh's `Session-Expires`, `Supported: timer`
    /// (RFC 4028). They are sent again if the re-INVITE is retried after 491 or a challenge.
    pub fn send_reinvite_with(
        &mut self,
        now: Instant,
        call: CallHandle,
        sdp: Bytes,
        headers: Vec<(HeaderName, Bytes)>,
    ) -> Result<(), EndpointError> {
        self.send_offer(now, call, Method::Invite, sdp, headers)
    }

    /// Sends an UPDATE with `sdp` (RFC 3311). The answer arrives as [`Event::Response`] with method UPDATE.
    pub fn send_update(
        &mut self,
        now: Instant,
        call: CallHandle,
        sdp: Bytes,
    ) -> Result<(), EndpointError> {
        self.send_update_with(now, call, sdp, Vec::new())
    }

    /// [`Self::send_update`] with extra headers (a session refresh without SDP: `Session-Expires`, ...).
    pub fn send_update_with(
        &mut self,
        now: Instant,
        call: CallHandle,
        sdp: Bytes,
        headers: Vec<(HeaderName, Bytes)>,
    ) -> Result<(), EndpointError> {
        self.send_offer(now, call, Method::Update, sdp, headers)
    }

    /// Sends a re-INVITE or an UPDATE (`method`) carrying `sdp` (none if empty) and `headers` in a confirmed
    /// dialog, refusing with [`EndpointError::RequestPending`] while one of the same kind is outstanding (for
    /// a re-INVITE also while a 491 retry waits or the peer's INVITE is unanswered), and records the client
    /// transaction in the call (a re-INVITE's headers too, for a retry after 491 or a challenge).
    fn send_offer(
        &mut self,
        now: Instant,
        call: CallHandle,
        method: Method,
        sdp: Bytes,
        headers: Vec<(HeaderName, Bytes)>,
    ) -> Result<(), EndpointError> {
        let reinvite = method == Method::Invite;
        let c = self.call_mut(call)?;
        if !c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        let pending = if reinvite {
            c.reinvite_tx.is_some() || c.glare_retry.is_some() || c.pending_invite.is_some()
        } else {
            c.update_tx.is_some()
        };
        if pending {
            return Err(EndpointError::RequestPending);
        }
        if reinvite {
            c.reinvite_headers = headers.clone();
        }
        let ct = (!sdp.is_empty()).then_some("application/sdp");
        let id = self.send_in_dialog_with(now, call.0, method, ct, sdp, headers)?;
        if let Some(c) = self.calls.get_mut(&call.0) {
            if reinvite {
                c.reinvite_tx = Some(id);
            } else {
                c.update_tx = Some(id);
            }
        }
        Ok(())
    }

    /// Sends an INFO (RFC 6086) with a body of `content_type`.
    pub fn send_info(
        &mut self,
        now: Instant,
        call: CallHandle,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        let ct = (!body.is_empty()).then_some(content_type);
        self.send_in_dialog(now, call.0, Method::Info, ct, body)
            .map(|_| ())
    }

    /// Sends an in-dialog OPTIONS (a keep-alive probe).
    pub fn send_options(&mut self, now: Instant, call: CallHandle) -> Result<(), EndpointError> {
        let c = self.call_mut(call)?;
        if !c.confirmed() {
            return Err(EndpointError::InvalidState);
        }
        self.send_in_dialog(now, call.0, Method::Options, None, Bytes::new())
            .map(|_| ())
    }

    /// Answers the peer's pending INVITE: the initial one ([`Event::IncomingCall`]) or a re-INVITE
    /// ([`Event::Request`] with method INVITE). `status` 101–199 may be sent before the final one; a 2xx is
    /// retransmitted until the ACK ([`Event::Acked`]).
    pub fn answer_invite(
        &mut self,
        now: Instant,
        call: CallHandle,
        code: u16,
        sdp: Bytes,
    ) -> Result<(), EndpointError> {
        self.answer_invite_with(now, call, code, sdp, Vec::new())
    }

    /// [`Self::answer_invite`] with extra headers in the response (e.g. `Session-Expires` and `Require: timer` in
    /// the 2xx to a session refresh, RFC 4028 §9, or `Min-SE` in a 422).
    pub fn answer_invite_with(
        &mut self,
        now: Instant,
        call: CallHandle,
        code: u16,
        sdp: Bytes,
        headers: Vec<(HeaderName, Bytes)>,
    ) -> Result<(), EndpointError> {
        let st = status(code)?;
        if code == 100 {
            return Err(EndpointError::InvalidStatus(code));
        }
        let give_up = now + self.config.timers.timeout();
        let t1 = self.config.timers.t1;
        let id = self
            .call_mut(call)?
            .pending_invite
            .ok_or(EndpointError::NoPendingRequest)?;
        let Some(e) = self.servers.get(&id) else {
            self.call_mut(call)?.pending_invite = None;
            return Err(EndpointError::NoPendingRequest);
        };
        let req = e.request.clone();
        let (destination, transport) = e.tx.destination();
        let c = self.call_mut(call)?;
        let initial = c
            .dialog
            .as_ref()
            .is_none_or(|d| d.state != crate::sip::dialog::DialogState::Confirmed);
        let local_tag = c.local_tag.clone();
        if initial && st.is_provisional() && c.early.is_empty() {
            if let Some(d) = Dialog::uas(&req, local_tag.clone(), true) {
                c.early.push(d);
            }
        }
        let seq = cseq_of(&req.headers).map(|x| x.0).unwrap_or(0);
        if st.is_success() {
            if initial {
                let d = c
                    .early
                    .pop()
                    .or_else(|| Dialog::uas(&req, local_tag.clone(), false));
                if let Some(mut d) = d {
                    d.state = crate::sip::dialog::DialogState::Confirmed;
                    c.dialog = Some(d);
                }
            }
            c.pending_invite = None;
        } else if st.is_final() {
            c.pending_invite = None;
        }
        let mut payload = None;
        self.respond(now, id, code, Some(&local_tag), |r| {
            fill_answer(r, headers, sdp);
            payload = Some(r.to_bytes());
        });
        if st.is_success() {
            if let (Some(c), Some(payload)) = (self.calls.get_mut(&call.0), payload) {
                c.retrans = Some(Retrans2xx {
                    payload,
                    destination,
                    transport,
                    cseq: seq,
                    sent: 1,
                    next: now + t1,
                    give_up,
                    initial,
                });
            }
        } else if st.is_final() && initial {
            self.terminate(now, call.0, TerminationReason::Declined(st));
        }
        Ok(())
    }

    /// The Call-ID of a call we placed, from when its INVITE left: unlike [`Self::dialog`], also for a call that
    /// is never answered. `None` for a call the peer placed (its dialog has it).
    pub fn call_id(&self, call: CallHandle) -> Option<&Bytes> {
        self.calls
            .get(&call.0)?
            .invite
            .as_ref()?
            .headers
            .get(&HeaderName::CallId)
    }

    /// The call's dialog (identifiers, route set, remote target, CSeqs) once confirmed.
    pub fn dialog(&self, call: CallHandle) -> Option<&Dialog> {
        self.calls.get(&call.0)?.dialog.as_ref()
    }

    /// The headers of the last message reported for `call`: the response behind [`Event::Provisional`],
    /// [`Event::Answered`], [`Event::Response`] or a [`TerminationReason::Rejected`] (a 422's `Min-SE`, RFC 4028),
    /// or the peer's request behind [`Event::IncomingCall`] / [`Event::Request`] (its `Session-Expires`). Kept
    /// while the call lingers after it ended.
    pub fn last_headers(&self, call: CallHandle) -> Option<&Headers> {
        self.calls.get(&call.0)?.last_headers.as_ref()
    }

    /// The headers of the last final response to a registration's REGISTER (a 423's `Min-Expires`).
    pub fn registration_headers(&self, reg: RegistrationHandle) -> Option<&Headers> {
        self.regs.get(&reg.0)?.last_headers.as_ref()
    }

    /// Whether the call has ended (it may still be kept a while to absorb retransmissions).
    pub fn is_terminated(&self, call: CallHandle) -> bool {
        self.calls.get(&call.0).is_none_or(|c| c.terminated)
    }

    /// Answers the peer's pending re-INVITE: the same as [`Self::answer_invite`], named for the call layer.
    pub fn answer_reinvite(
        &mut self,
        now: Instant,
        call: CallHandle,
        code: u16,
        sdp: Bytes,
    ) -> Result<(), EndpointError> {
        self.answer_invite(now, call, code, sdp)
    }

    /// Answers the peer's pending UPDATE.
    pub fn answer_update(
        &mut self,
        now: Instant,
        call: CallHandle,
        code: u16,
        sdp: Bytes,
    ) -> Result<(), EndpointError> {
        self.answer_update_with(now, call, code, sdp, Vec::new())
    }

    /// [`Self::answer_update`] with extra headers in the response.
    pub fn answer_update_with(
        &mut self,
        now: Instant,
        call: CallHandle,
        code: u16,
        sdp: Bytes,
        headers: Vec<(HeaderName, Bytes)>,
    ) -> Result<(), EndpointError> {
        let st = status(code)?;
        if !st.is_final() {
            return Err(EndpointError::InvalidStatus(code));
        }
        let c = self.call_mut(call)?;
        let id = c
            .pending_update
            .take()
            .ok_or(EndpointError::NoPendingRequest)?;
        let tag = c.local_tag.clone();
        self.respond(now, id, code, Some(&tag), |r| fill_answer(r, headers, sdp));
        Ok(())
    }
}

/// Adds `headers` and, unless empty, `sdp` as the body to a response answering an INVITE or UPDATE.
fn fill_answer(r: &mut Response, headers: Vec<(HeaderName, Bytes)>, sdp: Bytes) {
    for (n, v) in headers {
        r.headers.push(n, v);
    }
    if !sdp.is_empty() {
        r.set_body("application/sdp", sdp);
    }
}
