//! SQLite backend of [`Store`]: one real file, WAL journal, `synchronous=FULL`, schema version in `user_version`.
//!
//! Tables: `requests` (the request as JSON plus indexed columns: state, created, due, attempts, updated) and
//! `events` (request id, sequence number, time, state after, the [`EventKind`] as JSON). Times
//! are Unix milliseconds. An event and the request's new state are written in one transaction.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{ListFilter, RequestRecord, RequestSummary, Store, StoreError, MAX_LIST};
use crate::callback::event::{EventKind, RequestEvent, State};
use crate::callback::request::{CallbackRequest, RequestId};
use crate::callback::Time;

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;

const MIGRATIONS: [&str; 1] = ["
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    due_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX requests_state_created ON requests(state, created_ms);
CREATE INDEX requests_created ON requests(created_ms);
CREATE TABLE events (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (request_id, seq)
);
"];

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

fn ms(t: Time) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> Result<Time, StoreError> {
    DateTime::<Utc>::from_timestamp_millis(v).ok_or(StoreError::Corrupt("timestamp"))
}

fn state(s: &str) -> Result<State, StoreError> {
    State::from_name(s).ok_or(StoreError::Corrupt("state"))
}

type Row = (String, String, i64, i64, i64);

impl SqliteStore {
    /// Opens (or creates) the database file and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            tx.execute_batch(sql)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(SCHEMA_VERSION),
            )?;
        }
        tx.commit()?;
        Ok(SqliteStore { conn })
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn summary(row: Row) -> Result<RequestSummary, StoreError> {
        let (body, st, due, attempts, updated) = row;
        Ok(RequestSummary {
            request: serde_json::from_str(&body)?,
            state: state(&st)?,
            due: from_ms(due)?,
            attempts: u32::try_from(attempts).map_err(|_| StoreError::Corrupt("attempts"))?,
            updated_at: from_ms(updated)?,
        })
    }

    fn events(&self, id: RequestId) -> Result<Vec<RequestEvent>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at_ms, state, kind FROM events WHERE request_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([id_sql(id)?], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (at, st, kind) = row?;
            out.push(RequestEvent {
                at: from_ms(at)?,
                state: state(&st)?,
                kind: serde_json::from_str(&kind)?,
            });
        }
        Ok(out)
    }

    fn summaries(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<RequestSummary>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.map(|r| Self::summary(r?)).collect()
    }
}

fn id_sql(id: RequestId) -> Result<i64, StoreError> {
    i64::try_from(id.0).map_err(|_| StoreError::Corrupt("id out of range"))
}

const COLUMNS: &str = "SELECT body, state, due_ms, attempts, updated_ms FROM requests";

impl Store for SqliteStore {
    fn insert_request(
        &mut self,
        req: &CallbackRequest,
        st: State,
        due: Time,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(req)?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO requests (id, created_ms, state, due_ms, attempts, updated_ms, body)
             VALUES (?1, ?2, ?3, ?4, 0, ?2, ?5)",
            params![id_sql(req.id)?, ms(req.created_at), st.as_str(), ms(due), body],
        )?;
        if n == 0 {
            return Err(StoreError::Duplicate(req.id));
        }
        Ok(())
    }

    fn append_event(&mut self, id: RequestId, event: &RequestEvent) -> Result<(), StoreError> {
        let kind = serde_json::to_string(&event.kind)?;
        let key = id_sql(id)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq: Option<i64> = tx
            .query_row("SELECT (SELECT COALESCE(MAX(seq), 0) FROM events WHERE request_id = ?1) FROM requests WHERE id = ?1", [key], |r| r.get(0))
            .optional()?;
        let Some(seq) = seq else {
            return Err(StoreError::UnknownRequest(id));
        };
        tx.execute(
            "INSERT INTO events (request_id, seq, at_ms, state, kind) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key, seq + 1, ms(event.at), event.state.as_str(), kind],
        )?;
        let due = match &event.kind {
            EventKind::Scheduled { due, .. } => Some(ms(*due)),
            _ => None,
        };
        let attempts = match &event.kind {
            EventKind::CallingVisitor { attempt } => Some(i64::from(*attempt)),
            _ => None,
        };
        tx.execute(
            "UPDATE requests SET state = ?2, updated_ms = ?3, due_ms = COALESCE(?4, due_ms),
             attempts = COALESCE(?5, attempts) WHERE id = ?1",
            params![key, event.state.as_str(), ms(event.at), due, attempts],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn load(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let sql = format!("{COLUMNS} WHERE id = ?1");
        let Some(summary) = self.summaries(&sql, &[&id_sql(id)?])?.pop() else {
            return Ok(None);
        };
        Ok(Some(RequestRecord {
            summary,
            events: self.events(id)?,
        }))
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<RequestSummary>, StoreError> {
        let limit = if filter.limit == 0 {
            MAX_LIST
        } else {
            filter.limit.min(MAX_LIST)
        };
        let sql = format!(
            "{COLUMNS} WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR created_ms >= ?2)
             AND (?3 IS NULL OR created_ms < ?3) ORDER BY created_ms, id LIMIT ?4"
        );
        let st = filter.state.map(State::as_str);
        let from = filter.created_from.map(ms);
        let to = filter.created_to.map(ms);
        let limit = i64::try_from(limit).unwrap_or(1000);
        self.summaries(&sql, &[&st, &from, &to, &limit])
    }

    fn list_unfinished(&self) -> Result<Vec<RequestRecord>, StoreError> {
        let sql = format!(
            "{COLUMNS} WHERE state NOT IN ('completed', 'missed', 'cancelled') ORDER BY id"
        );
        let mut out = Vec::new();
        for summary in self.summaries(&sql, &[])? {
            let events = self.events(summary.request.id)?;
            out.push(RequestRecord { summary, events });
        }
        Ok(out)
    }

    fn max_id(&self) -> Result<Option<RequestId>, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MAX(id) FROM requests", [], |r| r.get(0))?;
        Ok(v.and_then(|v| u64::try_from(v).ok()).map(RequestId))
    }
}
