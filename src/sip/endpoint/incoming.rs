//! Requests from the network: RFC 3581 Via handling, validation, server transaction matching (RFC 3261 §17.2.3
//! and the RFC 2543 fallback), out-of-dialog answers, in-dialog requests, CANCEL and the ACK for a 2xx.

use super::*;

impl Endpoint {
    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        transport: Transport,
        mut req: Request,
    ) {
        let vias: Vec<Bytes> = req.headers.values(&HeaderName::Via).collect();
        let Some(top) = vias.first().cloned() else {
            return;
        };
        let Some(vp) = hdr::via(&top) else { return };
        // RFC 3581 / §18.2.1.
        let destination = if transport.is_reliable() || vp.rport {
            remote
        } else {
            SocketAddr::new(remote.ip(), vp.port.unwrap_or(5060))
        };
        if let Ok(mut v) = Via::parse(&top) {
            let host_is_source = v.host.ip() == Some(remote.ip());
            if !host_is_source || vp.rport {
                v.set_received(remote.ip());
            }
            if vp.rport {
                v.set_rport(remote.port());
            }
            req.headers.remove(&HeaderName::Via);
            req.headers.push(HeaderName::Via, v.encode());
            for other in vias.iter().skip(1) {
                req.headers.push(HeaderName::Via, other.clone());
            }
        }
        // §8.2: malformed requests and unsupported extensions/bodies are refused statelessly.
        if let Err(rej) = validate_request(&req, &self.policy) {
            // A client transaction matches its response by the top Via's branch and the CSeq method (§17.1.3),
            // so a request with those gets an answer even without Call-ID, From or To (RFC 4475 §3.3.1).
            let answerable = req.headers.contains(&HeaderName::CSeq);
            if req.method != Method::Ack && answerable {
                let tag = self.token();
                let payload = rej.response(&req, &self.policy, &tag).to_bytes();
                self.outbox.push_back(Transmit {
                    destination,
                    transport,
                    payload,
                });
            }
            return;
        }
        let (Some(call_id), Some((cseq, cseq_method)), Some(from)) = (
            req.headers.get(&HeaderName::CallId).cloned(),
            cseq_of(&req.headers),
            req.headers.get(&HeaderName::From),
        ) else {
            return;
        };
        if cseq_method != req.method {
            let tag = self.token();
            let mut r = Response::for_request(&req, StatusCode::BAD_REQUEST);
            if to_tag(&r.headers).is_none() {
                r.set_to_tag(&tag); // an in-dialog request keeps its dialog's tag
            }
            self.outbox.push_back(Transmit {
                destination,
                transport,
                payload: r.to_bytes(),
            });
            return;
        }
        let from_tag = hdr::tag(from)
            .map(Bytes::copy_from_slice)
            .unwrap_or_default();
        let key_method = if req.method == Method::Ack {
            Method::Invite
        } else {
            req.method.clone()
        };
        let key = match vp.branch {
            Some(b) if b.starts_with(BRANCH_COOKIE) => ServerKey::Branch {
                branch: b.to_owned(),
                sent_by: vp.sent_by(),
                method: key_method,
            },
            _ => ServerKey::Legacy {
                ruri: req.uri.to_string(),
                from_tag,
                call_id: call_id.clone(),
                cseq,
                via: top.clone(),
                method: key_method,
            },
        };
        let is_ack = req.method == Method::Ack;
        if let Some(&id) = self.server_index.get(&key) {
            let Some(e) = self.servers.get_mut(&id) else {
                return;
            };
            let disp = e.tx.handle_request(now, is_ack);
            self.drain_server(id);
            if disp == ServerDisposition::PassUp {
                self.on_dialog_ack(now, &req);
            }
            return;
        }
        if is_ack {
            self.on_dialog_ack(now, &req);
            return;
        }
        if self.servers.len() >= self.config.max_server_transactions {
            // A flood must not grow the table without bound: refuse statelessly (RFC 3261 §21.5.4).
            let tag = self.token();
            let mut r = Response::for_request(&req, StatusCode::SERVICE_UNAVAILABLE);
            if to_tag(&r.headers).is_none() {
                r.set_to_tag(&tag);
            }
            r.headers
                .push(HeaderName::RetryAfter, Bytes::from_static(b"5"));
            self.outbox.push_back(Transmit {
                destination,
                transport,
                payload: r.to_bytes(),
            });
            return;
        }
        let kind = if req.method == Method::Invite {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        let tx = ServerTransaction::new(kind, self.config.timers, destination, transport);
        let id = self.id();
        self.server_index.insert(key.clone(), id);
        self.servers.insert(
            id,
            ServerEntry {
                tx,
                request: req.clone(),
                key: key.clone(),
            },
        );

        if req.method == Method::Cancel {
            self.on_cancel(now, id, key);
            return;
        }
        match to_tag(&req.headers) {
            Some(tag) => self.in_dialog_request(now, id, &req, call_id, tag, cseq),
            None => self.out_of_dialog_request(now, id, &req, destination),
        }
    }

    /// Builds and sends a response through server transaction `id`. `to_tag` is added when To has none.
    pub(super) fn respond(
        &mut self,
        now: Instant,
        id: TxId,
        code: u16,
        tag: Option<&Bytes>,
        f: impl FnOnce(&mut Response),
    ) {
        let Some(st) = StatusCode::new(code) else {
            return;
        };
        let transport = self
            .servers
            .get(&id)
            .map_or(self.config.transport, |e| e.tx.destination().1);
        let contact = self.contact(transport);
        let random_tag = self.token();
        let server = self.config.user_agent.clone();
        let Some(e) = self.servers.get_mut(&id) else {
            return;
        };
        let mut r = Response::for_request(&e.request, st);
        if code > 100 && to_tag(&r.headers).is_none() {
            match tag {
                Some(t) => r.set_to_tag(&String::from_utf8_lossy(t)),
                None => r.set_to_tag(&random_tag),
            }
        }
        if let Some(s) = server {
            r.headers.push(HeaderName::Server, Bytes::from(s));
        }
        if e.request.method == Method::Invite && (101..300).contains(&code) {
            for rr in e.request.headers.get_all(&HeaderName::RecordRoute) {
                r.headers.push(HeaderName::RecordRoute, rr.clone());
            }
            r.headers.push(HeaderName::Contact, contact);
        }
        f(&mut r);
        e.tx.send_response(now, code, r.to_bytes());
        self.drain_server(id);
    }

    pub(super) fn out_of_dialog_request(
        &mut self,
        now: Instant,
        id: TxId,
        req: &Request,
        destination: SocketAddr,
    ) {
        match &req.method {
            Method::Options => self.respond(now, id, 200, None, |r| {
                r.headers
                    .push(HeaderName::Allow, Bytes::from_static(ALLOW.as_bytes()));
                r.headers
                    .push(HeaderName::Accept, Bytes::from_static(b"application/sdp"));
            }),
            Method::Invite if self.config.accept_invites => {
                self.incoming_call(now, id, req, destination)
            }
            Method::Invite => self.respond(now, id, 403, None, |_| {}),
            Method::Bye | Method::Update | Method::Info | Method::Prack | Method::Cancel => {
                self.respond(now, id, 481, None, |_| {})
            }
            Method::Other(_) => self.respond(now, id, 501, None, |_| {}),
            _ => self.respond(now, id, 405, None, |r| {
                r.headers
                    .push(HeaderName::Allow, Bytes::from_static(ALLOW.as_bytes()));
            }),
        }
    }

    pub(super) fn incoming_call(
        &mut self,
        now: Instant,
        id: TxId,
        req: &Request,
        destination: SocketAddr,
    ) {
        let Some(call_id) = req.headers.get(&HeaderName::CallId).cloned() else {
            return;
        };
        let local_tag = Bytes::from(self.token());
        let transport = self
            .servers
            .get(&id)
            .map_or(self.config.transport, |e| e.tx.destination().1);
        let mut call = Call::new(false, local_tag.clone(), destination, transport);
        call.pending_invite = Some(id);
        call.last_headers = Some(req.headers.clone());
        let h = self.id();
        self.calls.insert(h, call);
        self.dialog_index.insert((call_id, local_tag), h);
        self.respond(now, id, 100, None, |_| {});
        self.events.push_back(Event::IncomingCall {
            call: CallHandle(h),
            from: req
                .headers
                .get(&HeaderName::From)
                .cloned()
                .unwrap_or_default(),
            to: req
                .headers
                .get(&HeaderName::To)
                .cloned()
                .unwrap_or_default(),
            body: req.body.clone(),
        });
    }

    pub(super) fn in_dialog_request(
        &mut self,
        now: Instant,
        id: TxId,
        req: &Request,
        call_id: Bytes,
        tag: Bytes,
        cseq: u32,
    ) {
        let Some(&h) = self.dialog_index.get(&(call_id, tag)) else {
            return self.respond(now, id, 481, None, |_| {});
        };
        let Some(c) = self.calls.get_mut(&h) else {
            return self.respond(now, id, 481, None, |_| {});
        };
        let remote_tag = req
            .headers
            .get(&HeaderName::From)
            .and_then(|f| hdr::tag(f))
            .map(Bytes::copy_from_slice);
        // The confirmed dialog, or an early one (e.g. an UPDATE for early media, RFC 3311).
        let Some(d) = c
            .dialog
            .as_mut()
            .filter(|d| Some(&d.id.remote_tag) == remote_tag.as_ref())
            .or_else(|| {
                c.early
                    .iter_mut()
                    .find(|d| Some(&d.id.remote_tag) == remote_tag.as_ref())
            })
        else {
            return self.respond(now, id, 481, None, |_| {});
        };
        if d.check_remote_cseq(cseq).is_err() {
            return self.respond(now, id, 500, None, |_| {});
        }
        match &req.method {
            Method::Bye => {
                let pending = c.pending_invite.take();
                c.retrans = None;
                c.bye_pending = false;
                self.respond(now, id, 200, None, |_| {});
                if let Some(p) = pending {
                    self.respond(now, p, 487, None, |_| {});
                }
                self.terminate(now, h, TerminationReason::RemoteBye);
            }
            _ if c.terminated => self.respond(now, id, 481, None, |_| {}),
            Method::Invite => {
                let ours_pending = c
                    .reinvite_tx
                    .is_some_and(|t| self.clients.get(&t).is_some_and(|e| !e.tx.has_final()));
                if ours_pending {
                    // §14.2 glare.
                    return self.respond(now, id, 491, None, |_| {});
                }
                if c.pending_invite.is_some() || c.retrans.is_some() {
                    return self.respond(now, id, 500, None, |r| {
                        r.headers
                            .push(HeaderName::RetryAfter, Bytes::from_static(b"1"));
                    });
                }
                d.refresh_target(&req.headers);
                c.pending_invite = Some(id);
                c.last_headers = Some(req.headers.clone());
                self.respond(now, id, 100, None, |_| {});
                self.events.push_back(Event::Request {
                    call: CallHandle(h),
                    method: Method::Invite,
                    body: req.body.clone(),
                });
            }
            Method::Update => {
                if c.update_tx.is_some() || c.pending_update.is_some() {
                    return self.respond(now, id, 491, None, |_| {});
                }
                d.refresh_target(&req.headers);
                c.pending_update = Some(id);
                c.last_headers = Some(req.headers.clone());
                self.events.push_back(Event::Request {
                    call: CallHandle(h),
                    method: Method::Update,
                    body: req.body.clone(),
                });
            }
            Method::Info => {
                c.last_headers = Some(req.headers.clone());
                self.respond(now, id, 200, None, |_| {});
                self.events.push_back(Event::Request {
                    call: CallHandle(h),
                    method: Method::Info,
                    body: req.body.clone(),
                });
            }
            Method::Options => self.respond(now, id, 200, None, |r| {
                r.headers
                    .push(HeaderName::Allow, Bytes::from_static(ALLOW.as_bytes()));
                r.headers
                    .push(HeaderName::Accept, Bytes::from_static(b"application/sdp"));
            }),
            _ => self.respond(now, id, 501, None, |_| {}),
        }
    }

    pub(super) fn on_cancel(&mut self, now: Instant, cancel_id: TxId, key: ServerKey) {
        let invite_key = match key {
            ServerKey::Branch {
                branch, sent_by, ..
            } => ServerKey::Branch {
                branch,
                sent_by,
                method: Method::Invite,
            },
            ServerKey::Legacy {
                ruri,
                from_tag,
                call_id,
                cseq,
                via,
                ..
            } => ServerKey::Legacy {
                ruri,
                from_tag,
                call_id,
                cseq,
                via,
                method: Method::Invite,
            },
        };
        let Some(&inv) = self.server_index.get(&invite_key) else {
            return self.respond(now, cancel_id, 481, None, |_| {});
        };
        let h = self
            .calls
            .iter()
            .find(|(_, c)| c.pending_invite == Some(inv))
            .map(|(h, _)| *h);
        let tag = h
            .and_then(|h| self.calls.get(&h))
            .map(|c| c.local_tag.clone());
        // §9.2: the CANCEL's 200 carries the same To tag as the INVITE's responses.
        self.respond(now, cancel_id, 200, tag.as_ref(), |_| {});
        let still_open = self.servers.get(&inv).is_some_and(|e| !e.tx.has_final());
        if !still_open {
            return;
        }
        self.respond(now, inv, 487, tag.as_ref(), |_| {});
        if let Some(h) = h {
            if let Some(c) = self.calls.get_mut(&h) {
                c.pending_invite = None;
            }
            self.terminate(now, h, TerminationReason::Cancelled);
        }
    }

    pub(super) fn on_dialog_ack(&mut self, now: Instant, req: &Request) {
        let (Some(call_id), Some(tag)) = (
            req.headers.get(&HeaderName::CallId).cloned(),
            to_tag(&req.headers),
        ) else {
            return;
        };
        let Some(&h) = self.dialog_index.get(&(call_id, tag)) else {
            return;
        };
        let seq = cseq_of(&req.headers).map(|x| x.0);
        let Some(c) = self.calls.get_mut(&h) else {
            return;
        };
        let Some(r) = &c.retrans else { return };
        if Some(r.cseq) != seq {
            return;
        }
        c.retrans = None;
        let bye = std::mem::take(&mut c.bye_pending);
        if !c.terminated {
            self.events.push_back(Event::Acked {
                call: CallHandle(h),
                body: req.body.clone(),
            });
        }
        if bye {
            // §15: the callee's BYE waited for this ACK.
            self.send_bye_now(now, h);
        }
    }
}
