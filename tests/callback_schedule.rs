//! Business hours and DST resolution.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc, Weekday};
use chrono_tz::Europe::Paris;
use rappel::callback::schedule::{resolve_local, Adjustment, BusinessHours, ScheduleError};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("valid")
}

fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(y, mo, d)
        .and_then(|d| d.and_hms_opt(h, mi, 0))
        .expect("valid")
}

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).expect("valid")
}

fn every_day(open: NaiveTime, close: NaiveTime) -> BusinessHours {
    use Weekday::*;
    BusinessHours::closed(Paris)
        .with_days(&[Mon, Tue, Wed, Thu, Fri, Sat, Sun], open, close)
        .expect("hours")
}

#[test]
fn spring_forward_gap_is_shifted_by_the_gap() {
    let r = resolve_local(Paris, local(2026, 3, 29, 2, 30));
    assert_eq!(r.utc, utc(2026, 3, 29, 1, 30)); // 03:30 CEST
    assert_eq!(
        r.adjustment,
        Adjustment::SkippedGap {
            shift: TimeDelta::hours(1)
        }
    );
    let r = resolve_local(Paris, local(2026, 3, 29, 1, 59));
    assert_eq!(
        (r.utc, r.adjustment),
        (utc(2026, 3, 29, 0, 59), Adjustment::Exact)
    );
    let r = resolve_local(Paris, local(2026, 3, 29, 3, 0));
    assert_eq!(
        (r.utc, r.adjustment),
        (utc(2026, 3, 29, 1, 0), Adjustment::Exact)
    );
}

#[test]
fn autumn_overlap_takes_the_earlier_instant() {
    let r = resolve_local(Paris, local(2026, 10, 25, 2, 30));
    assert_eq!(r.utc, utc(2026, 10, 25, 0, 30)); // 02:30 CEST
    assert_eq!(
        r.adjustment,
        Adjustment::Ambiguous {
            later: utc(2026, 10, 25, 1, 30)
        }
    ); // 02:30 CET
}

#[test]
fn weekly_hours_and_closed_dates() {
    use Weekday::*;
    let h = BusinessHours::closed(Paris)
        .with_days(&[Mon, Tue, Wed, Thu, Fri], hm(9, 0), hm(12, 0))
        .and_then(|h| h.with_days(&[Mon, Tue, Wed, Thu, Fri], hm(14, 0), hm(18, 0)))
        .expect("hours")
        .with_closed_date(NaiveDate::from_ymd_opt(2026, 7, 14).expect("date"));
    // Tuesday 2026-06-09, CEST (UTC+2).
    assert!(!h.is_open(utc(2026, 6, 9, 6, 59)));
    assert!(h.is_open(utc(2026, 6, 9, 7, 0)));
    assert!(!h.is_open(utc(2026, 6, 9, 10, 0))); // 12:00 closes (exclusive)
    assert_eq!(
        h.next_open(utc(2026, 6, 9, 10, 30)),
        Some(utc(2026, 6, 9, 12, 0))
    ); // 14:00 local
    assert_eq!(
        h.next_open(utc(2026, 6, 9, 8, 0)),
        Some(utc(2026, 6, 9, 8, 0))
    ); // open: now
       // Friday evening → Monday morning.
    assert_eq!(
        h.next_open(utc(2026, 6, 12, 16, 0)),
        Some(utc(2026, 6, 15, 7, 0))
    );
    // Bastille Day (Tuesday) closed → Wednesday.
    assert!(!h.is_open(utc(2026, 7, 14, 8, 0)));
    assert_eq!(
        h.next_open(utc(2026, 7, 13, 17, 0)),
        Some(utc(2026, 7, 15, 7, 0))
    );
}

#[test]
fn next_open_across_dst_changes() {
    let h = every_day(hm(9, 0), hm(18, 0));
    // Saturday 2026-03-28 evening (CET, UTC+1) → Sunday 09:00 CEST = 07:00 UTC (one hour earlier in UTC).
    assert_eq!(
        h.next_open(utc(2026, 3, 28, 17, 30)),
        Some(utc(2026, 3, 29, 7, 0))
    );
    assert_eq!(
        h.next_open(utc(2026, 3, 27, 17, 30)),
        Some(utc(2026, 3, 28, 8, 0))
    );
    // Autumn: Sunday 2026-10-25 09:00 CET = 08:00 UTC.
    assert_eq!(
        h.next_open(utc(2026, 10, 24, 17, 30)),
        Some(utc(2026, 10, 25, 8, 0))
    );
    // Opening inside the spring-forward gap (02:30) opens at 03:30 CEST that day.
    let night = every_day(hm(2, 30), hm(5, 0));
    assert_eq!(
        night.next_open(utc(2026, 3, 28, 23, 0)),
        Some(utc(2026, 3, 29, 1, 30))
    );
    assert!(night.is_open(utc(2026, 3, 29, 1, 30)));
}

#[test]
fn never_open_and_bad_intervals() {
    assert_eq!(
        BusinessHours::closed(Paris).next_open(utc(2026, 1, 1, 0, 0)),
        None
    );
    assert_eq!(
        BusinessHours::closed(Paris).with_interval(Weekday::Mon, hm(18, 0), hm(9, 0)),
        Err(ScheduleError::EmptyInterval {
            open: hm(18, 0),
            close: hm(9, 0)
        })
    );
    assert!(BusinessHours::always_open().is_open(utc(2026, 12, 25, 23, 59)));
}
