//! Digest authentication as a UAC against a scripted registrar/proxy that checks the digest itself.

mod common;

use bytes::Bytes;
use common::*;
use rappel::sip::auth::{compute_response, Algorithm, Credentials, DigestInput};
use rappel::sip::endpoint::{Event, InviteRequest, TerminationReason};
use rappel::sip::message::{HeaderName, Message, Method, Request, StatusCode};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

const USER: &str = "rappel";
const PASS: &str = "s3cret";
const REALM: &str = "example.net";

fn creds() -> Credentials {
    Credentials {
        username: USER.into(),
        password: PASS.into(),
        realm: None,
    }
}

fn invite_with_creds() -> InviteRequest {
    let mut r = invite_to_b("v=0 a");
    r.credentials = Some(creds());
    r
}

/// `name="value"` or `name=value` from an Authorization value.
fn param(v: &str, name: &str) -> Option<String> {
    let i = v.find(&format!("{name}="))?;
    let rest = &v[i + name.len() + 1..];
    if let Some(q) = rest.strip_prefix('"') {
        Some(q[..q.find('"')?].to_owned())
    } else {
        Some(rest.split([',', ' ']).next()?.to_owned())
    }
}

/// Checks the digest in `req`'s `hdr` header as a server would. Returns the nonce it answered.
fn verify(req: &Request, hdr: HeaderName, algorithm: Algorithm) -> Option<String> {
    let v = String::from_utf8_lossy(req.headers.get(&hdr)?).into_owned();
    let nonce = param(&v, "nonce")?;
    let nc = u32::from_str_radix(&param(&v, "nc")?, 16).ok()?;
    let cnonce = param(&v, "cnonce")?;
    let uri = param(&v, "uri")?;
    assert_eq!(uri, req.uri.to_string());
    let want = compute_response(&DigestInput {
        algorithm,
        username: USER,
        realm: REALM,
        password: PASS,
        method: req.method.as_str(),
        uri: &uri,
        nonce: &nonce,
        qop_auth: Some((nc, &cnonce)),
    });
    (param(&v, "response")? == want).then_some(nonce)
}

fn challenge(req: &Request, code: u16, value: String) -> Message {
    let mut r = reply(req, code, "srv");
    let name = if code == 401 {
        HeaderName::WwwAuthenticate
    } else {
        HeaderName::ProxyAuthenticate
    };
    r.headers.push(name, Bytes::from(value));
    Message::from(r)
}

fn cseq(req: &Request) -> u32 {
    let v = String::from_utf8_lossy(req.headers.get(&HeaderName::CSeq).unwrap()).into_owned();
    v.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn challenge_401_then_success() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    let b = ScriptNode::new(addr_b(), move |req| {
        s2.borrow_mut().push(req.clone());
        match req.method {
            Method::Invite
                if verify(req, HeaderName::Authorization, Algorithm::Md5).as_deref()
                    == Some("n1") =>
            {
                vec![Message::from(reply(req, 200, "srv"))]
            }
            Method::Invite => {
                vec![challenge(
                    req,
                    401,
                    format!(r#"Digest realm="{REALM}", nonce="n1", qop="auth", algorithm=MD5"#),
                )]
            }
            _ => vec![],
        }
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_with_creds()).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    sim.run_to(sim.elapsed() + Duration::from_secs(1));
    let seen = seen.borrow();
    let invites: Vec<&Request> = seen.iter().filter(|r| r.method == Method::Invite).collect();
    assert_eq!(invites.len(), 2);
    assert_eq!(
        (cseq(invites[0]), cseq(invites[1])),
        (1, 2),
        "the retry takes a new CSeq (§22.2)"
    );
    let acks: Vec<&Request> = seen.iter().filter(|r| r.method == Method::Ack).collect();
    assert_eq!(
        acks.len(),
        2,
        "one ACK for the 401 (transaction), one for the 200 (dialog)"
    );
    assert!(
        acks[1].headers.get(&HeaderName::Authorization).is_some(),
        "2xx ACK carries the INVITE's credentials"
    );
    assert_eq!(
        sim.a.find(is_answered)[0].1,
        Event::Answered {
            call,
            body: Bytes::new()
        }
    );
}

#[test]
fn proxy_407_stale_nonce_is_retried() {
    let n = Rc::new(RefCell::new(0));
    let n2 = n.clone();
    let b = ScriptNode::new(addr_b(), move |req| {
        if req.method != Method::Invite {
            return vec![];
        }
        *n2.borrow_mut() += 1;
        let answered = verify(req, HeaderName::ProxyAuthorization, Algorithm::Sha256);
        match answered.as_deref() {
            None => vec![challenge(
                req,
                407,
                format!(r#"Digest realm="{REALM}", nonce="old", qop="auth", algorithm=SHA-256"#),
            )],
            // The nonce expired meanwhile: right credentials, stale nonce.
            Some("old") => vec![challenge(
                req,
                407,
                format!(
                    r#"Digest realm="{REALM}", nonce="fresh", qop="auth", algorithm=SHA-256, stale=true"#
                ),
            )],
            Some(_) => vec![Message::from(reply(req, 200, "srv"))],
        }
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    sim.a.ep.start_invite(now, invite_with_creds()).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    assert_eq!(*n.borrow(), 3);
}

#[test]
fn repeated_challenge_with_same_nonce_stops() {
    let n = Rc::new(RefCell::new(0));
    let n2 = n.clone();
    let b = ScriptNode::new(addr_b(), move |req| {
        if req.method != Method::Invite {
            return vec![];
        }
        *n2.borrow_mut() += 1;
        vec![challenge(
            req,
            401,
            format!(r#"Digest realm="{REALM}", nonce="same", qop="auth""#),
        )]
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_with_creds()).unwrap();
    assert!(sim.run_until(Duration::from_secs(60), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    assert_eq!(
        sim.a.find(is_terminated)[0].1,
        Event::Terminated {
            call,
            reason: TerminationReason::Rejected(StatusCode::UNAUTHORIZED)
        }
    );
    assert_eq!(*n.borrow(), 2, "answered once, then gave up");
}

#[test]
fn fresh_nonce_every_time_is_bounded() {
    let n = Rc::new(RefCell::new(0u32));
    let n2 = n.clone();
    let b = ScriptNode::new(addr_b(), move |req| {
        if req.method != Method::Invite {
            return vec![];
        }
        *n2.borrow_mut() += 1;
        let k = *n2.borrow();
        vec![challenge(
            req,
            401,
            format!(r#"Digest realm="{REALM}", nonce="n{k}", qop="auth""#),
        )]
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    sim.a.ep.start_invite(now, invite_with_creds()).unwrap();
    assert!(sim.run_until(Duration::from_secs(60), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    assert_eq!(
        *n.borrow(),
        1 + rappel::sip::auth::MAX_CHALLENGES_PER_REQUEST
    );
}

#[test]
fn no_credentials_means_rejected() {
    let b = ScriptNode::new(addr_b(), |req| match req.method {
        Method::Invite => vec![challenge(
            req,
            407,
            format!(r#"Digest realm="{REALM}", nonce="x""#),
        )],
        _ => vec![],
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0")).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_terminated)
        .is_empty()));
    assert_eq!(
        sim.a.find(is_terminated)[0].1,
        Event::Terminated {
            call,
            reason: TerminationReason::Rejected(StatusCode::PROXY_AUTH_REQUIRED)
        }
    );
}

#[test]
fn bye_and_reinvite_challenges_are_answered() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    let b = ScriptNode::new(addr_b(), move |req| {
        s2.borrow_mut().push(req.clone());
        let authed = verify(req, HeaderName::Authorization, Algorithm::Md5).is_some();
        match req.method {
            Method::Invite if cseq(req) == 1 => vec![Message::from(reply(req, 200, "srv"))],
            Method::Invite | Method::Bye if !authed => {
                vec![challenge(
                    req,
                    401,
                    format!(
                        r#"Digest realm="{REALM}", nonce="d{}", qop="auth""#,
                        cseq(req)
                    ),
                )]
            }
            Method::Invite | Method::Bye => vec![Message::from(reply(req, 200, "srv"))],
            _ => vec![],
        }
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_with_creds()).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| !s
        .a
        .find(is_answered)
        .is_empty()));
    let now = sim.now;
    sim.a
        .ep
        .send_reinvite(now, call, Bytes::from("v=0 re"))
        .unwrap();
    let reinv_ok = |e: &Event| {
        matches!(
            e,
            Event::Response {
                method: Method::Invite,
                status: StatusCode::OK,
                ..
            }
        )
    };
    assert!(sim.run_until(Duration::from_secs(5), |s| !s.a.find(reinv_ok).is_empty()));
    let now = sim.now;
    sim.a.ep.send_bye(now, call).unwrap();
    sim.run_to(sim.elapsed() + Duration::from_secs(2));
    let seen = seen.borrow();
    let byes: Vec<u32> = seen
        .iter()
        .filter(|r| r.method == Method::Bye)
        .map(cseq)
        .collect();
    assert_eq!(
        byes,
        [4, 5],
        "BYE challenged, re-sent with credentials and the next CSeq"
    );
    let invites: Vec<u32> = seen
        .iter()
        .filter(|r| r.method == Method::Invite)
        .map(cseq)
        .collect();
    assert_eq!(invites, [1, 2, 3]);
    assert!(
        sim.packets(|p| p.status() == Some(200) && p.cseq_method() == "BYE")
            .len()
            == 1
    );
}

#[test]
fn register_challenged_then_granted_and_refreshed() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    let b = ScriptNode::new(addr_b(), move |req| {
        s2.borrow_mut().push(req.clone());
        if req.method != Method::Register {
            return vec![];
        }
        if verify(req, HeaderName::Authorization, Algorithm::Md5).is_none() {
            return vec![challenge(
                req,
                401,
                format!(
                    r#"Digest realm="{REALM}", nonce="r{}", qop="auth""#,
                    cseq(req)
                ),
            )];
        }
        let mut ok = reply(req, 200, "reg");
        let contact =
            String::from_utf8_lossy(req.headers.get(&HeaderName::Contact).unwrap()).into_owned();
        ok.headers.push(
            HeaderName::Contact,
            Bytes::from(format!("{contact};expires=1800")),
        );
        vec![Message::from(ok)]
    });
    let mut sim = Sim::new(EpNode::new(addr_a(), 1, false), b);
    let now = sim.now;
    let reg = sim
        .a
        .ep
        .register(
            now,
            rappel::sip::endpoint::RegisterRequest {
                registrar: "sip:10.0.0.2".into(),
                aor: "sip:rappel@example.net".into(),
                next_hop: addr_b(),
                transport: None,
                expires: 3600,
                credentials: Some(creds()),
                extra_headers: Vec::new(),
            },
        )
        .unwrap();
    let granted = |e: &Event| matches!(e, Event::Registration { .. });
    assert!(sim.run_until(Duration::from_secs(5), |s| !s.a.find(granted).is_empty()));
    assert_eq!(
        sim.a.find(granted)[0].1,
        Event::Registration {
            reg,
            status: StatusCode::OK,
            expires: Some(1800)
        }
    );
    let now = sim.now;
    sim.a.ep.refresh_register(now, reg, 0).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.a.find(granted).len() == 2));
    let seen = seen.borrow();
    let cseqs: Vec<u32> = seen.iter().map(cseq).collect();
    assert_eq!(
        cseqs,
        [1, 2, 3, 4],
        "one Call-ID, increasing CSeq across challenges and refreshes"
    );
    let call_ids: std::collections::HashSet<_> = seen
        .iter()
        .map(|r| r.headers.get(&HeaderName::CallId).unwrap().clone())
        .collect();
    assert_eq!(call_ids.len(), 1);
    assert_eq!(seen[3].headers.get(&HeaderName::Expires).unwrap(), "0");
}
