//! [`CallbackApi`] for the tokio [`CallbackService`]: the web layer's view of the real service.

use tokio::sync::broadcast;

use super::{ApiError, BoxFuture, CallbackApi, ListFilter, RequestView, Submission};
use crate::callback::service::{self, CallbackService, ServiceError};
use crate::callback::store;
use crate::callback::{NewRequest, RequestEvent, RequestId};

fn api_error(e: ServiceError) -> ApiError {
    match e {
        ServiceError::Request(r) => ApiError::Invalid(r),
        ServiceError::AlreadyOpen(_) => ApiError::AlreadyOpen,
        ServiceError::Store(_) => ApiError::Storage,
        _ => ApiError::Unavailable,
    }
}

fn view(v: service::RequestView) -> RequestView {
    RequestView {
        id: v.id,
        state: v.state,
        due: v.due,
        queue_position: v.queue_position,
        estimated_wait: v.estimated_wait,
        events: v.events,
        phone: v.phone,
        topic: v.topic,
        created: v.created,
    }
}

impl CallbackApi for CallbackService {
    fn submit(&self, req: NewRequest) -> BoxFuture<'_, Result<Submission, ApiError>> {
        Box::pin(async move {
            let s = CallbackService::submit(self, req)
                .await
                .map_err(api_error)?;
            Ok(Submission {
                id: s.id,
                state: s.state,
                due: s.due,
            })
        })
    }

    fn status(&self, id: RequestId) -> BoxFuture<'_, Result<Option<RequestView>, ApiError>> {
        Box::pin(async move {
            Ok(CallbackService::status(self, id)
                .await
                .map_err(api_error)?
                .map(view))
        })
    }

    fn cancel(&self, id: RequestId) -> BoxFuture<'_, Result<bool, ApiError>> {
        Box::pin(async move { CallbackService::cancel(self, id).await.map_err(api_error) })
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<RequestView>, ApiError>> {
        Box::pin(async move {
            // The store lists oldest first up to its cap; the web layer sorts (missed first, newest first) and
            // truncates, so ask for the whole capped list.
            let f = store::ListFilter {
                state: filter.state,
                ..store::ListFilter::default()
            };
            let views = CallbackService::list(self, f).await.map_err(api_error)?;
            Ok(views.into_iter().map(view).collect())
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<(RequestId, RequestEvent)> {
        CallbackService::subscribe(self)
    }

    fn metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(CallbackService::metrics(self))
    }

    fn open_request_for<'a>(&'a self, e164: &'a str) -> BoxFuture<'a, Option<RequestId>> {
        Box::pin(CallbackService::open_request_for(self, e164))
    }

    fn live_calls(&self) -> usize {
        CallbackService::live_calls(self)
    }
}
