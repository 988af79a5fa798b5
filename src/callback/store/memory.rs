//! In-memory [`Store`], for tests and for services that do not need durability. Same semantics as the SQLite one.

use std::collections::BTreeMap;

use super::{ListFilter, RequestRecord, RequestSummary, Store, StoreError, MAX_LIST};
use crate::callback::event::{EventKind, RequestEvent, State};
use crate::callback::request::{CallbackRequest, RequestId};
use crate::callback::Time;

/// A store in a `BTreeMap`; lost when dropped.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    records: BTreeMap<RequestId, RequestRecord>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn insert_request(
        &mut self,
        req: &CallbackRequest,
        state: State,
        due: Time,
    ) -> Result<(), StoreError> {
        if self.records.contains_key(&req.id) {
            return Err(StoreError::Duplicate(req.id));
        }
        let summary = RequestSummary {
            request: req.clone(),
            state,
            due,
            attempts: 0,
            updated_at: req.created_at,
        };
        self.records.insert(
            req.id,
            RequestRecord {
                summary,
                events: Vec::new(),
            },
        );
        Ok(())
    }

    fn append_event(&mut self, id: RequestId, event: &RequestEvent) -> Result<(), StoreError> {
        let rec = self
            .records
            .get_mut(&id)
            .ok_or(StoreError::UnknownRequest(id))?;
        let s = &mut rec.summary;
        s.state = event.state;
        s.updated_at = event.at;
        match &event.kind {
            EventKind::Scheduled { due, .. } => s.due = *due,
            EventKind::CallingVisitor { attempt } => s.attempts = *attempt,
            _ => {}
        }
        rec.events.push(event.clone());
        Ok(())
    }

    fn load(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self.records.get(&id).cloned())
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<RequestSummary>, StoreError> {
        let limit = if filter.limit == 0 {
            MAX_LIST
        } else {
            filter.limit.min(MAX_LIST)
        };
        let mut v: Vec<RequestSummary> = self
            .records
            .values()
            .map(|r| &r.summary)
            .filter(|s| filter.state.is_none_or(|st| s.state == st))
            .filter(|s| {
                filter
                    .created_from
                    .is_none_or(|t| s.request.created_at >= t)
            })
            .filter(|s| filter.created_to.is_none_or(|t| s.request.created_at < t))
            .cloned()
            .collect();
        v.sort_by_key(|s| (s.request.created_at, s.request.id));
        v.truncate(limit);
        Ok(v)
    }

    fn list_unfinished(&self) -> Result<Vec<RequestRecord>, StoreError> {
        Ok(self
            .records
            .values()
            .filter(|r| !r.summary.state.is_final())
            .cloned()
            .collect())
    }

    fn max_id(&self) -> Result<Option<RequestId>, StoreError> {
        Ok(self.records.keys().next_back().copied())
    }
}
