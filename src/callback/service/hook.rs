//! Webhook delivery: one worker task POSTs every persisted event, in order, signed, with retries.
//!
//! The service hands events over with `try_send` on a bounded queue, so a slow or dead receiver never slows the
//! calls: when the queue is full, events are dropped and counted (the store keeps the full history). Each attempt
//! is signed afresh (the timestamp is part of the signature) with [`webhook::delivery`]; a failure (network error,
//! timeout, non-2xx status) is retried after [`webhook::retry_delay`], then given up and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Clock, WebhookConfig};
use crate::callback::event::RequestEvent;
use crate::callback::request::RequestId;
use crate::callback::webhook;

/// Outcomes of webhook deliveries.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events delivered (2xx).
    pub delivered: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Events given up after the last retry.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// Starts the worker; returns its queue.
pub(crate) fn spawn(
    cfg: WebhookConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<WebhookStats>,
) -> (mpsc::Sender<(RequestId, RequestEvent)>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let task = tokio::spawn(run(cfg, clock, stats, rx));
    (tx, task)
}

async fn run(
    cfg: WebhookConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<WebhookStats>,
    mut rx: mpsc::Receiver<(RequestId, RequestEvent)>,
) {
    let client = match reqwest::Client::builder().timeout(cfg.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client unavailable; events will not be delivered");
            while rx.recv().await.is_some() {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    while let Some((id, event)) = rx.recv().await {
        let mut retry = 0;
        loop {
            if post(&client, &cfg, clock.as_ref(), id, &event).await {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                break;
            }
            retry += 1;
            match webhook::retry_delay(retry, cfg.max_retries) {
                Some(d) => {
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(d).await;
                }
                None => {
                    tracing::warn!(request = %id, "webhook delivery given up");
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// One signed POST; `true` on a 2xx answer.
async fn post(
    client: &reqwest::Client,
    cfg: &WebhookConfig,
    clock: &dyn Clock,
    id: RequestId,
    event: &RequestEvent,
) -> bool {
    let d = match webhook::delivery(&cfg.secret, id, event, clock.now()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "webhook body");
            return false;
        }
    };
    let r = client
        .post(&cfg.url)
        .header("content-type", "application/json")
        .header("x-rappel-timestamp", d.timestamp.to_string())
        .header("x-rappel-signature", d.signature)
        .body(d.body)
        .send()
        .await;
    match r {
        Ok(resp) if resp.status().is_success() => true,
        Ok(resp) => {
            tracing::debug!(status = %resp.status(), "webhook refused");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "webhook failed");
            false
        }
    }
}
