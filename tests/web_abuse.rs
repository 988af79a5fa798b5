//! Abuse-protection building blocks in isolation: number policy, masking, token buckets with simulated time,
//! bounded key memory, form tokens and sealed request ids.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rappel::callback::RequestId;
use rappel::web::abuse::{
    client_key, FormTokens, Masked, PhonePolicy, PhoneRejection, RateLimiter, RequestKeys,
    TokenError,
};

fn fr() -> PhonePolicy {
    PhonePolicy::new(&["FR".into()], &["+3389".into()], true).unwrap()
}

#[test]
fn numbers_are_normalised_to_e164() {
    let p = fr();
    for raw in [
        "+33612345678",
        "+33 6 12 34 56 78",
        "06 12 34 56 78",
        "06.12.34.56.78",
        "0033612345678",
        "(0)6-12-34-56-78",
    ] {
        assert_eq!(p.check(raw).as_deref(), Ok("+33612345678"), "{raw}");
    }
}

#[test]
fn refused_numbers_say_why() {
    let p = fr();
    assert_eq!(p.check(""), Err(PhoneRejection::Invalid));
    assert_eq!(p.check("+33 6 12"), Err(PhoneRejection::Invalid));
    assert_eq!(
        p.check("sip:evil@example.com"),
        Err(PhoneRejection::Invalid)
    );
    assert_eq!(p.check("+33612345678;ext=12"), Err(PhoneRejection::Invalid));
    assert_eq!(p.check(&"6".repeat(41)), Err(PhoneRejection::Invalid));
    assert_eq!(
        p.check("+33899123456"),
        Err(PhoneRejection::DeniedPrefix("+3389".into()))
    );
    assert_eq!(
        p.check("+447400123456"),
        Err(PhoneRejection::CountryNotAllowed(Some("GB".into())))
    );
    for r in [PhoneRejection::Invalid, PhoneRejection::PremiumRate] {
        assert!(!r.visitor_message().is_empty());
    }
}

#[test]
fn premium_rate_by_type_without_a_configured_prefix() {
    let p = PhonePolicy::new(&[], &[], true).unwrap();
    assert_eq!(p.check("+33899123456"), Err(PhoneRejection::PremiumRate));
    // Any country when none is configured.
    assert_eq!(p.check("+447400123456").as_deref(), Ok("+447400123456"));
    let lax = PhonePolicy::new(&[], &[], false).unwrap();
    assert_eq!(lax.check("+33899123456").as_deref(), Ok("+33899123456"));
}

#[test]
fn unknown_country_code_is_an_error() {
    assert!(PhonePolicy::new(&["XX".into()], &[], true).is_err());
}

#[test]
fn masking() {
    assert_eq!(Masked("+33612345678").to_string(), "+33 6** ** ** 78");
    assert_eq!(Masked("0612345678").to_string(), "0* ** ** ** 78");
    assert_eq!(Masked("+123").to_string(), "+***");
    assert_eq!(
        format!("{:?}", Masked("+447400123456")),
        "+44 7* ** ** ** 56"
    );
    // No digit of the middle survives.
    let m = Masked("+33612345678").to_string();
    for d in ["1", "2", "3", "4", "5"] {
        assert!(!m[4..m.len() - 2].contains(d), "{m}");
    }
}

#[test]
fn token_bucket_refills_in_simulated_time() {
    let t0 = Instant::now();
    let mut rl = RateLimiter::new(3, Duration::from_secs(10), 100);
    let k = "a".to_owned();
    for _ in 0..3 {
        assert_eq!(rl.check(&k, t0), Ok(()));
    }
    let wait = rl.check(&k, t0).unwrap_err();
    assert_eq!(wait, Duration::from_secs(10));
    // Half a token later: 5 s to go.
    let wait = rl.check(&k, t0 + Duration::from_secs(5)).unwrap_err();
    assert_eq!(wait, Duration::from_secs(5));
    assert_eq!(rl.check(&k, t0 + Duration::from_secs(10)), Ok(()));
    assert!(rl.check(&k, t0 + Duration::from_secs(10)).is_err());
    // Long idle: back to the burst, not more.
    let later = t0 + Duration::from_secs(3600);
    for _ in 0..3 {
        assert_eq!(rl.check(&k, later), Ok(()));
    }
    assert!(rl.check(&k, later).is_err());
    // Other keys are independent.
    assert_eq!(rl.check(&"b".to_owned(), later), Ok(()));
}

#[test]
fn key_memory_is_bounded_and_hot_keys_stay_limited() {
    let t0 = Instant::now();
    let mut rl = RateLimiter::new(1, Duration::from_secs(3600), 1000);
    let hot = u32::MAX;
    assert_eq!(rl.check(&hot, t0), Ok(()));
    for i in 0..100_000u32 {
        let _ = rl.check(&i, t0);
        assert!(rl.len() <= 1000, "{} keys", rl.len());
        if i % 100 == 0 {
            // The flooding key keeps being seen, so it is never forgotten and stays limited.
            assert!(
                rl.check(&hot, t0).is_err(),
                "hot key reset after {i} other keys"
            );
        }
    }
}

#[test]
fn ipv6_clients_are_limited_by_their_64() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(client_key(a), client_key(b));
    assert_ne!(client_key(a), client_key(c));
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert_eq!(client_key(mapped), v4);
}

#[test]
fn form_tokens_expire_and_are_signed() {
    let t = FormTokens::new(b"k", Duration::from_secs(600));
    let tok = t.issue(1_000_000);
    assert_eq!(t.verify(&tok, 1_000_000), Ok(()));
    assert_eq!(t.verify(&tok, 1_000_600), Ok(()));
    assert_eq!(t.verify(&tok, 1_000_601), Err(TokenError::Expired));
    // A longer expiry with the old signature.
    let (_, tag) = tok.split_once('.').unwrap();
    assert_eq!(
        t.verify(&format!("9999999999.{tag}"), 1_000_000),
        Err(TokenError::BadSignature)
    );
    let other = FormTokens::new(b"other", Duration::from_secs(600));
    assert_eq!(other.verify(&tok, 1_000_000), Err(TokenError::BadSignature));
    for bad in ["", ".", "abc", "1.zz", "1.abc"] {
        assert_eq!(t.verify(bad, 0), Err(TokenError::Malformed), "{bad:?}");
    }
}

#[test]
fn sealed_request_ids() {
    let k = RequestKeys::new(b"secret");
    let s = k.seal(RequestId(42));
    assert!(s.starts_with("42-") && s.len() == 3 + 16, "{s}");
    assert_eq!(k.open(&s), Some(RequestId(42)));
    assert_eq!(k.open(&s.replace("42-", "43-")), None);
    assert_eq!(RequestKeys::new(b"other").open(&s), None);
    for bad in [
        "42",
        "-",
        "42-",
        "x-00",
        "99999999999999999999999-00",
        &format!("{s}0"),
    ] {
        assert_eq!(k.open(bad), None, "{bad:?}");
    }
}

/// Seeded random garbage through every parser that takes visitor input: none may panic, and whatever the number
/// policy accepts is E.164 (`+` and at most 15 digits), so it can only become the user part of the trunk URI.
#[test]
fn garbage_never_panics_and_accepted_numbers_are_e164() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
    let alphabet: Vec<char> = "+0123456789 .-()/#*;=@:abcxyzé\u{0}\u{202e}٣"
        .chars()
        .collect();
    let p = PhonePolicy::new(&[], &[], true).unwrap();
    let fr = fr();
    let tokens = FormTokens::new(b"k", Duration::from_secs(60));
    let keys = RequestKeys::new(b"k");
    let mut accepted = 0;
    for _ in 0..20_000 {
        let len = rng.random_range(0..48);
        let s: String = (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        for policy in [&p, &fr] {
            if let Ok(n) = policy.check(&s) {
                accepted += 1;
                let digits = n.strip_prefix('+').expect("starts with +");
                assert!(
                    digits.bytes().all(|b| b.is_ascii_digit()) && digits.len() <= 15,
                    "{n}"
                );
            }
        }
        let _ = Masked(&s).to_string();
        let _ = tokens.verify(&s, 0);
        let _ = keys.open(&s);
    }
    // The alphabet is mostly digits: some random strings are real numbers.
    assert!(accepted > 0);
}
