//! Business hours and wished times: pure calendar arithmetic on UTC instants passed in.
//!
//! [`BusinessHours`] holds a time zone, a weekly schedule (a list of `[open, close)` local intervals per weekday) and
//! closed dates. [`BusinessHours::is_open`] and [`BusinessHours::next_open`] answer for a given UTC instant.
//! [`resolve_local`] turns a visitor's wished local date-time (in the visitor's zone) into a UTC instant, handling the
//! two DST edge cases explicitly: a local time in a spring-forward gap does not exist and is moved forward by the
//! length of the gap (02:30 in Paris on 2026-03-29 becomes 03:30 CEST); a local time in an autumn overlap happens twice
//! and the earlier occurrence is taken, the later one reported. This is the "compatible" rule of RFC 5545 and
//! Temporal. Nothing here reads the clock.
//!
//! We use `chrono` + `chrono-tz` (the IANA database compiled in) because `TimeZone::from_local_datetime` returns
//! `LocalResult::{None, Single, Ambiguous}`, which makes both DST cases visible in the types rather than hidden in a
//! disambiguation default.

use std::collections::BTreeSet;

use chrono::{
    DateTime, Datelike, Duration as TimeDelta, LocalResult, NaiveDate, NaiveDateTime, NaiveTime,
    Offset, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// How many days ahead [`BusinessHours::next_open`] looks before giving up (a bit over a year of closed dates).
const SEARCH_DAYS: i64 = 400;

/// Errors building a schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// An interval whose opening is not strictly before its closing.
    #[error("opening {open} is not before closing {close}")]
    EmptyInterval {
        /// Opening local time.
        open: NaiveTime,
        /// Closing local time.
        close: NaiveTime,
    },
    /// Too many intervals on one day (the cap keeps lookups bounded).
    #[error("more than {max} intervals on one day")]
    TooManyIntervals {
        /// The cap.
        max: usize,
    },
}

/// Cap on intervals per weekday.
pub const MAX_INTERVALS_PER_DAY: usize = 16;

/// Opening hours of the call centre.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessHours {
    tz: Tz,
    /// Index 0 is Monday. Each day's intervals are sorted by opening time.
    weekly: [Vec<(NaiveTime, NaiveTime)>; 7],
    closed_dates: BTreeSet<NaiveDate>,
}

impl BusinessHours {
    /// Hours in `tz` with no opening at all; add days with [`BusinessHours::with_interval`].
    pub fn closed(tz: Tz) -> Self {
        BusinessHours {
            tz,
            weekly: Default::default(),
            closed_dates: BTreeSet::new(),
        }
    }

    /// Open every day, all day (00:00 to the last nanosecond), in UTC: the default when no hours are configured.
    pub fn always_open() -> Self {
        let mut h = Self::closed(Tz::UTC);
        let end = NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_999).unwrap_or(NaiveTime::MIN);
        for day in &mut h.weekly {
            day.push((NaiveTime::MIN, end));
        }
        h
    }

    /// Adds an `[open, close)` interval (local times) on `weekday`.
    pub fn with_interval(
        mut self,
        weekday: Weekday,
        open: NaiveTime,
        close: NaiveTime,
    ) -> Result<Self, ScheduleError> {
        if open >= close {
            return Err(ScheduleError::EmptyInterval { open, close });
        }
        let day = &mut self.weekly[weekday.num_days_from_monday() as usize];
        if day.len() >= MAX_INTERVALS_PER_DAY {
            return Err(ScheduleError::TooManyIntervals {
                max: MAX_INTERVALS_PER_DAY,
            });
        }
        day.push((open, close));
        day.sort();
        Ok(self)
    }

    /// Adds the same interval on each of `weekdays`.
    pub fn with_days(
        self,
        weekdays: &[Weekday],
        open: NaiveTime,
        close: NaiveTime,
    ) -> Result<Self, ScheduleError> {
        weekdays
            .iter()
            .try_fold(self, |h, d| h.with_interval(*d, open, close))
    }

    /// Marks a local date as closed (public holiday).
    pub fn with_closed_date(mut self, date: NaiveDate) -> Self {
        self.closed_dates.insert(date);
        self
    }

    /// The schedule's time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// Whether the centre is open at `at`.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.tz).naive_local();
        if self.closed_dates.contains(&local.date()) {
            return false;
        }
        let t = local.time();
        self.weekly[local.weekday().num_days_from_monday() as usize]
            .iter()
            .any(|(o, c)| *o <= t && t < *c)
    }

    /// `at` itself if open, else the next opening instant; `None` if nothing opens within about a year.
    pub fn next_open(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_open(at) {
            return Some(at);
        }
        let start = at.with_timezone(&self.tz).date_naive();
        for offset in 0..SEARCH_DAYS {
            let date = start.checked_add_signed(TimeDelta::days(offset))?;
            if self.closed_dates.contains(&date) {
                continue;
            }
            for (open, close) in &self.weekly[date.weekday().num_days_from_monday() as usize] {
                let opening = resolve_local(self.tz, date.and_time(*open)).utc;
                if opening > at {
                    return Some(opening);
                }
                // An interval already opened today but not closed would have made `is_open` true, unless the
                // opening fell in a DST gap; check the close too.
                let closing = resolve_local(self.tz, date.and_time(*close)).utc;
                if opening <= at && at < closing {
                    return Some(at);
                }
            }
        }
        None
    }
}

/// How a wished local time was mapped to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Adjustment {
    /// The local time exists exactly once.
    Exact,
    /// The local time fell in a DST gap and was moved forward by `shift`.
    SkippedGap {
        /// Length of the gap (usually one hour).
        shift: TimeDelta,
    },
    /// The local time happens twice; the earlier instant was taken.
    Ambiguous {
        /// The later instant that was not chosen.
        later: DateTime<Utc>,
    },
}

/// A local date-time resolved to a UTC instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The instant chosen.
    pub utc: DateTime<Utc>,
    /// How it was chosen.
    pub adjustment: Adjustment,
}

/// Resolves a local date-time in `tz` to UTC (gap: shifted forward by the gap; overlap: earlier instant).
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> Resolved {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Resolved {
            utc: t.with_timezone(&Utc),
            adjustment: Adjustment::Exact,
        },
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
            let (early, late) = if a <= b { (a, b) } else { (b, a) };
            Resolved {
                utc: early,
                adjustment: Adjustment::Ambiguous { later: late },
            }
        }
        LocalResult::None => {
            // Interpret the wall time with the offset in force before the gap: that lands after the gap, shifted
            // by the gap's length. The offset a day earlier is the pre-transition one (zones never change twice
            // within a day).
            let before = local - TimeDelta::days(1);
            let offset = match tz.from_local_datetime(&before) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.offset().fix(),
                LocalResult::None => Utc.fix(),
            };
            let utc = (local - TimeDelta::seconds(i64::from(offset.local_minus_utc()))).and_utc();
            let after = utc.with_timezone(&tz).naive_local();
            Resolved {
                utc,
                adjustment: Adjustment::SkippedGap {
                    shift: after - local,
                },
            }
        }
    }
}
