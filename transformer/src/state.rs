//! What every handler of the transformer shares: its settings, metrics, and the
//! intake, the one place that knows whether events are still taken. Routes and
//! the dead-letter API both read it; neither reaches into the other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::dispatch::{Dispatcher, Refused};
use crate::loops::Seen;
use crate::metrics::Metrics;
use gateway_common::error::{ApiError, ErrorCode};

pub struct AppState {
    pub gateway_name: String,
    pub event_type: String,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub intake: Intake,
    /// The events taken last, to recognise one that comes back.
    pub seen: Seen,
    /// Named events taken within `TRANSFORMER_DEDUP_WINDOW`; `None` when off.
    pub dedup: Option<crate::dedup::Dedup>,
    /// `K_CE_OVERRIDES`: extensions of every CloudEvent built here.
    pub ce_overrides: Vec<(String, String)>,
    /// What `GET /triggers` shows; a reload replaces it.
    pub triggers: RwLock<Vec<TriggerView>>,
}

/// One trigger as `GET /triggers` shows it, with its live queue depth.
pub struct TriggerView {
    pub name: String,
    /// Credentials as `***`.
    pub subscriber: String,
    pub filter: serde_json::Value,
    pub delivery: serde_json::Value,
    pub rate_limit: serde_json::Value,
    pub queue_depth: prometheus_client::metrics::gauge::Gauge,
}

impl TriggerView {
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "subscriber": self.subscriber,
            "filter": self.filter,
            "delivery": self.delivery,
            "rateLimit": self.rate_limit,
            "queueDepth": self.queue_depth.get(),
        })
    }
}

/// Open until shutdown begins; then every request that would queue an event,
/// or touch the queues, is answered 503 `shutting_down`, while the dispatcher
/// is kept until the listener has finished so the workers can drain.
pub struct Intake {
    dispatcher: RwLock<Option<Arc<Dispatcher>>>,
    closed: AtomicBool,
}

impl Intake {
    pub fn new(dispatcher: Dispatcher) -> Intake {
        Intake {
            dispatcher: RwLock::new(Some(Arc::new(dispatcher))),
            closed: AtomicBool::new(false),
        }
    }

    /// The dispatcher, unless shutdown has begun.
    pub fn dispatcher(&self) -> Result<Arc<Dispatcher>, ApiError> {
        let closed = || ApiError::shutting_down("transformer");
        if self.is_closed() {
            return Err(closed());
        }
        self.dispatcher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(closed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Shutdown began: refuse new events from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Gives the dispatcher up, so that dropping it lets the workers drain.
    pub fn take(&self) -> Option<Arc<Dispatcher>> {
        self.close();
        self.dispatcher
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Every refusal but an unknown watcher is "try again later": the queue or the
/// store cannot take the event now.
pub fn refused(r: Refused) -> ApiError {
    match r {
        Refused::UnknownWatcher(_) => ApiError::new(ErrorCode::UnknownWatcher, r.to_string()),
        Refused::Store(e) => {
            tracing::error!(error = %e, "event store write failed");
            ApiError::new(
                ErrorCode::StoreUnavailable,
                format!("the event could not be stored: {e}"),
            )
        }
        other => ApiError::new(ErrorCode::Backpressure, format!("{other}; retry later")),
    }
}
