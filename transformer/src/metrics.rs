//! Prometheus metrics of the transformer. Handles for each watcher are created once
//! and cloned into its workers, so the per-event path only bumps atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatcherLabel {
    pub watcher: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

type HistogramFamily = Family<WatcherLabel, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub received: Family<KindLabel, Counter>,
    pub rejected: Family<ReasonLabel, Counter>,
    /// Changes of `TRANSFORMER_TRIGGERS` taken (`applied`) or refused.
    pub trigger_reloads: Family<ResultLabel, Counter>,
    pub replayed: Counter,
    /// Events a gateway delivered that were taken here before (a loop).
    pub returned: Counter,
    pub admission_waiting: Gauge,
    pub batches: Counter,
    /// Events taken that no watcher's filter wanted: stored for nobody.
    pub for_nobody: Counter,
    /// Named events taken before within the window, answered as duplicates.
    pub duplicates: Counter,
    /// New names refused because the memory of names was full.
    pub dedup_full: Counter,
    /// Names remembered now.
    pub dedup_remembered: Gauge,
    delivered: Family<WatcherLabel, Counter>,
    retries: Family<WatcherLabel, Counter>,
    dead_lettered: Family<WatcherLabel, Counter>,
    filtered: Family<WatcherLabel, Counter>,
    queue_depth: Family<WatcherLabel, Gauge>,
    latency: HistogramFamily,
    /// Time the store's writer spends on one group write.
    pub store_write: Histogram,
    pub nats: NatsMetrics,
    /// The HTTP listener's connections.
    pub server: gateway_common::server::ServerMetrics,
}

/// The NATS connection's and publishers' counters.
#[derive(Clone, Default)]
pub struct NatsMetrics {
    pub published: Counter,
    pub acked: Counter,
    pub duplicates: Counter,
    pub failures: Counter,
    /// Connects and disconnects of the NATS connection.
    pub connection: gateway_common::nats::ConnectionMetrics,
}

/// One watcher's handles.
#[derive(Clone)]
pub struct WatcherMetrics {
    pub delivered: Counter,
    pub retries: Counter,
    pub dead_lettered: Counter,
    /// Events the watcher's filter passed over.
    pub filtered: Counter,
    pub queue_depth: Gauge,
    pub latency: Histogram,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let received = Family::<KindLabel, Counter>::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let trigger_reloads = Family::<ResultLabel, Counter>::default();
        let replayed = Counter::default();
        let returned = Counter::default();
        let admission_waiting = Gauge::default();
        let batches = Counter::default();
        let for_nobody = Counter::default();
        let duplicates = Counter::default();
        let dedup_full = Counter::default();
        let dedup_remembered = Gauge::default();
        let delivered = Family::<WatcherLabel, Counter>::default();
        let retries = Family::<WatcherLabel, Counter>::default();
        let dead_lettered = Family::<WatcherLabel, Counter>::default();
        let filtered = Family::<WatcherLabel, Counter>::default();
        let queue_depth = Family::<WatcherLabel, Gauge>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let store_write = Histogram::new(exponential_buckets(0.00002, 2.0, 16));
        registry.register(
            "transformer_events_received",
            "Events accepted for delivery, by input kind (gateway or cloudevent)",
            received.clone(),
        );
        registry.register(
            "transformer_events_rejected",
            "Events refused, by reason (bad_request, too_large, backpressure, shutting_down)",
            rejected.clone(),
        );
        registry.register(
            "transformer_dead_letters_replayed",
            "Dead letters put back into a watcher's queue",
            replayed.clone(),
        );
        registry.register(
            "transformer_events_returned",
            "CloudEvents another gateway delivered that were taken here before (same source and id): GATEWAY_WATCHERS form a loop, or an upstream repeated one. Answered 2xx, not delivered again",
            returned.clone(),
        );
        registry.register(
            "transformer_admission_waiting",
            "Producer requests waiting for room in a full queue (TRANSFORMER_ADMIT_WAIT)",
            admission_waiting.clone(),
        );
        registry.register(
            "transformer_batches",
            "Requests to POST /batch (events received over all inputs / this = mean batch size when the processor-client batches)",
            batches.clone(),
        );
        registry.register(
            "transformer_events_for_nobody",
            "Events taken that no trigger's filter wanted (answered 2xx, stored for nobody)",
            for_nobody.clone(),
        );
        registry.register(
            "transformer_events_duplicate",
            "Events whose name (a user server's id, or a CloudEvent's source and id) was taken within TRANSFORMER_DEDUP_WINDOW: answered 200 with \"duplicate\": true, delivered nowhere again",
            duplicates.clone(),
        );
        registry.register(
            "transformer_dedup_full",
            "Named events refused (503) because TRANSFORMER_DEDUP_MAX_IDS names within the window are remembered already",
            dedup_full.clone(),
        );
        registry.register(
            "transformer_dedup_remembered",
            "Event names remembered for deduplication now",
            dedup_remembered.clone(),
        );
        registry.register(
            "transformer_trigger_reloads",
            "Changes of TRANSFORMER_TRIGGERS taken (applied) or refused (the last good set stays)",
            trigger_reloads.clone(),
        );
        registry.register(
            "transformer_events_delivered",
            "Events a watcher acknowledged",
            delivered.clone(),
        );
        registry.register(
            "transformer_delivery_retries",
            "Failed delivery attempts that will be retried",
            retries.clone(),
        );
        registry.register(
            "transformer_events_dead_lettered",
            "Events that exhausted their retries or were refused permanently",
            dead_lettered.clone(),
        );
        registry.register(
            "transformer_events_filtered",
            "Events a watcher's trigger filter passed over",
            filtered.clone(),
        );
        registry.register(
            "transformer_queue_depth",
            "Events queued for a watcher and not yet delivered",
            queue_depth.clone(),
        );
        registry.register(
            "transformer_delivery_duration_seconds",
            "Time from acceptance to acknowledgement by the watcher",
            latency.clone(),
        );
        registry.register(
            "transformer_store_write_duration_seconds",
            "Time the store's writer took for one group write of events and acknowledgements (commit, and fsync under TRANSFORMER_FSYNC=always); producers wait for it",
            store_write.clone(),
        );
        let nats = NatsMetrics::default();
        for (name, help, c) in [
            (
                "transformer_nats_published",
                "Events published to NATS (core: written; JetStream: acknowledged)",
                &nats.published,
            ),
            (
                "transformer_nats_acks",
                "JetStream publish acknowledgements received",
                &nats.acked,
            ),
            (
                "transformer_nats_duplicates",
                "JetStream acknowledgements that reported a duplicate (stored once)",
                &nats.duplicates,
            ),
            (
                "transformer_nats_failures",
                "NATS publishes that failed and will be retried",
                &nats.failures,
            ),
            (
                "transformer_nats_connects",
                "Connections (and reconnections) to NATS",
                &nats.connection.connects,
            ),
            (
                "transformer_nats_disconnects",
                "Losses of the NATS connection",
                &nats.connection.disconnects,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
        let server = gateway_common::server::ServerMetrics::register(&mut registry, "transformer");
        Metrics {
            server,
            registry,
            received,
            rejected,
            trigger_reloads,
            replayed,
            returned,
            admission_waiting,
            batches,
            for_nobody,
            duplicates,
            dedup_full,
            dedup_remembered,
            delivered,
            retries,
            dead_lettered,
            filtered,
            queue_depth,
            latency,
            store_write,
            nats,
        }
    }

    pub fn watcher(&self, name: &str) -> WatcherMetrics {
        let label = WatcherLabel {
            watcher: name.to_owned(),
        };
        WatcherMetrics {
            delivered: self.delivered.get_or_create(&label).clone(),
            retries: self.retries.get_or_create(&label).clone(),
            dead_lettered: self.dead_lettered.get_or_create(&label).clone(),
            filtered: self.filtered.get_or_create(&label).clone(),
            queue_depth: self.queue_depth.get_or_create(&label).clone(),
            latency: self.latency.get_or_create(&label).clone(),
        }
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The text exposition format, as `/metrics` serves it.
    pub fn encode(&self) -> String {
        encode_registry(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub use gateway_common::metrics::{encode_registry, CONTENT_TYPE};
