//! A callback request as submitted by the web page, validated.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Identifier of a request (assigned in arrival order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who is called first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Strategy {
    /// Call the visitor, hold them, then call an agent (the default).
    #[default]
    VisitorFirst,
    /// Call the visitor, ask them to press 1, only then call an agent.
    Confirmation,
    /// Call an agent, whisper, then call the visitor.
    AgentFirst,
}

/// When the visitor wants to be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WishedTime {
    /// A local date-time in the visitor's time zone (`visitor_tz` required).
    Local(NaiveDateTime),
    /// An absolute instant.
    At(DateTime<Utc>),
}

/// A request as submitted (not yet validated).
#[derive(Debug, Clone, Default)]
pub struct NewRequest {
    /// Phone number to call (`+`, digits, spaces, dots and dashes; at least 3 digits), or the key of a parked
    /// browser leg ([`BrowserLegs`](super::calls::BrowserLegs)) for a call from the browser.
    pub phone: String,
    /// Wished time; `None` for "now".
    pub wished: Option<WishedTime>,
    /// Topic (selects the whisper; shown to the agent).
    pub topic: Option<String>,
    /// Skills an agent needs.
    pub skills: BTreeSet<String>,
    /// Page the visitor was on.
    pub page_url: Option<String>,
    /// Free-form context for the agent.
    pub context: Option<String>,
    /// Visitor's time zone.
    pub visitor_tz: Option<Tz>,
    /// Visitor's language (BCP 47 tag, e.g. `fr-FR`).
    pub language: Option<String>,
    /// Strategy; `None` for the configured default.
    pub strategy: Option<Strategy>,
}

/// Caps on submitted fields.
pub const MAX_PHONE: usize = 32;
/// Cap on short text fields (topic, skill, language).
pub const MAX_SHORT: usize = 64;
/// Cap on the page URL.
pub const MAX_URL: usize = 2048;
/// Cap on the free-form context.
pub const MAX_CONTEXT: usize = 4096;
/// Cap on the number of skills.
pub const MAX_SKILLS: usize = 16;

/// A request that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The phone number is empty, too long, or has characters other than `+ 0-9 . - space`.
    #[error("invalid phone number")]
    BadPhone,
    /// A text field is over its cap.
    #[error("field {field} longer than {max} bytes")]
    TooLong {
        /// Field name.
        field: &'static str,
        /// Cap.
        max: usize,
    },
    /// More skills than [`MAX_SKILLS`].
    #[error("more than {MAX_SKILLS} skills")]
    TooManySkills,
    /// A local wished time without the visitor's time zone.
    #[error("a local wished time needs the visitor's time zone")]
    MissingTimeZone,
    /// The call centre never opens (no hours within a year).
    #[error("the call centre has no opening within a year")]
    NeverOpen,
}

/// A validated request, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackRequest {
    /// Identifier.
    pub id: RequestId,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// Normalised phone number (spaces, dots and dashes removed).
    pub phone: String,
    /// The wished instant (resolved to UTC), if any.
    pub wished_at: Option<DateTime<Utc>>,
    /// Topic.
    pub topic: Option<String>,
    /// Skills an agent needs.
    pub skills: BTreeSet<String>,
    /// Page URL.
    pub page_url: Option<String>,
    /// Context.
    pub context: Option<String>,
    /// Visitor's time zone (IANA name).
    pub visitor_tz: Option<String>,
    /// Visitor's language.
    pub language: Option<String>,
    /// Strategy.
    pub strategy: Strategy,
}

fn cap(field: &'static str, v: &Option<String>, max: usize) -> Result<(), RequestError> {
    match v {
        Some(s) if s.len() > max => Err(RequestError::TooLong { field, max }),
        _ => Ok(()),
    }
}

/// Normalises a phone number, or `None` if it is not one.
pub fn normalise_phone(raw: &str) -> Option<String> {
    if raw.len() > MAX_PHONE {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    for (i, c) in raw.trim().chars().enumerate() {
        match c {
            '+' if i == 0 => out.push(c),
            '0'..='9' => out.push(c),
            ' ' | '.' | '-' => {}
            _ => return None,
        }
    }
    (out.chars().filter(char::is_ascii_digit).count() >= 3).then_some(out)
}

impl NewRequest {
    /// Validates the request and resolves its wished time to UTC.
    pub fn validate(
        self,
        id: RequestId,
        now: DateTime<Utc>,
        default_strategy: Strategy,
    ) -> Result<CallbackRequest, RequestError> {
        // A browser call's visitor is a parked browser leg, named by its key (see `calls::BrowserLegs`).
        let phone = if super::calls::is_browser_target(&self.phone) {
            self.phone.clone()
        } else {
            normalise_phone(&self.phone).ok_or(RequestError::BadPhone)?
        };
        cap("topic", &self.topic, MAX_SHORT)?;
        cap("language", &self.language, MAX_SHORT)?;
        cap("page_url", &self.page_url, MAX_URL)?;
        cap("context", &self.context, MAX_CONTEXT)?;
        if self.skills.len() > MAX_SKILLS {
            return Err(RequestError::TooManySkills);
        }
        if self.skills.iter().any(|s| s.len() > MAX_SHORT) {
            return Err(RequestError::TooLong {
                field: "skills",
                max: MAX_SHORT,
            });
        }
        let wished_at = match self.wished {
            None => None,
            Some(WishedTime::At(t)) => Some(t),
            Some(WishedTime::Local(local)) => {
                let tz = self.visitor_tz.ok_or(RequestError::MissingTimeZone)?;
                Some(super::schedule::resolve_local(tz, local).utc)
            }
        };
        Ok(CallbackRequest {
            id,
            created_at: now,
            phone,
            wished_at,
            topic: self.topic,
            skills: self.skills,
            page_url: self.page_url,
            context: self.context,
            visitor_tz: self.visitor_tz.map(|t| t.name().to_owned()),
            language: self.language,
            strategy: self.strategy.unwrap_or(default_strategy),
        })
    }
}
