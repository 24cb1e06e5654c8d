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
    /// What the routes take and refuse.
    pub intake: IntakeMetrics,
    /// The memory of event names.
    pub dedup: DedupMetrics,
    /// Changes of `TRANSFORMER_TRIGGERS` taken (`applied`) or refused.
    pub trigger_reloads: Family<ResultLabel, Counter>,
    pub replayed: Counter,
    /// Time the store's writer spends on one group write.
    pub store_write: Histogram,
    watchers: WatcherFamilies,
    pub nats: NatsMetrics,
    /// The HTTP listener's connections.
    pub server: gateway_common::server::ServerMetrics,
}

/// Events as they arrive: taken, refused, and how.
#[derive(Clone)]
pub struct IntakeMetrics {
    pub received: Family<KindLabel, Counter>,
    pub rejected: Family<ReasonLabel, Counter>,
    /// Events a gateway delivered that were taken here before (a loop).
    pub returned: Counter,
    pub admission_waiting: Gauge,
    pub batches: Counter,
    /// Events taken that no watcher's filter wanted: stored for nobody.
    pub for_nobody: Counter,
}

/// The memory of event names (`TRANSFORMER_DEDUP_WINDOW`).
#[derive(Clone)]
pub struct DedupMetrics {
    /// Named events taken before within the window, answered as duplicates.
    pub duplicates: Counter,
    /// New names refused because the memory of names was full.
    pub full: Counter,
    /// Names remembered now (set when the metrics are read).
    pub remembered: Gauge,
}

/// Every watcher's metrics, labelled by watcher.
struct WatcherFamilies {
    delivered: Family<WatcherLabel, Counter>,
    retries: Family<WatcherLabel, Counter>,
    dead_lettered: Family<WatcherLabel, Counter>,
    filtered: Family<WatcherLabel, Counter>,
    queue_depth: Family<WatcherLabel, Gauge>,
    latency: HistogramFamily,
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

impl IntakeMetrics {
    fn register(r: &mut Registry) -> Self {
        IntakeMetrics {
            received: registered(
                r,
                "transformer_events_received",
                "Events accepted for delivery, by input kind (gateway or cloudevent)",
                Family::default(),
            ),
            rejected: registered(
                r,
                "transformer_events_rejected",
                "Events refused, by reason (bad_request, too_large, backpressure, shutting_down)",
                Family::default(),
            ),
            returned: registered(
                r,
                "transformer_events_returned",
                "CloudEvents another gateway delivered that were taken here before (same source and id): GATEWAY_WATCHERS form a loop, or an upstream repeated one. Answered 2xx, not delivered again",
                Counter::default(),
            ),
            admission_waiting: registered(
                r,
                "transformer_admission_waiting",
                "Producer requests waiting for room in a full queue (TRANSFORMER_ADMIT_WAIT)",
                Gauge::default(),
            ),
            batches: registered(
                r,
                "transformer_batches",
                "Requests to POST /batch (events received over all inputs / this = mean batch size when the processor-client batches)",
                Counter::default(),
            ),
            for_nobody: registered(
                r,
                "transformer_events_for_nobody",
                "Events taken that no trigger's filter wanted (answered 2xx, stored for nobody)",
                Counter::default(),
            ),
        }
    }
}

impl DedupMetrics {
    fn register(r: &mut Registry) -> Self {
        DedupMetrics {
            duplicates: registered(
                r,
                "transformer_events_duplicate",
                "Events whose name (a user server's id, or a CloudEvent's source and id) was taken within TRANSFORMER_DEDUP_WINDOW: answered 200 with \"duplicate\": true, delivered nowhere again",
                Counter::default(),
            ),
            full: registered(
                r,
                "transformer_dedup_full",
                "Named events refused (503) because TRANSFORMER_DEDUP_MAX_IDS names within the window are remembered already",
                Counter::default(),
            ),
            remembered: registered(
                r,
                "transformer_dedup_remembered",
                "Event names remembered for deduplication now",
                Gauge::default(),
            ),
        }
    }
}

impl WatcherFamilies {
    fn register(r: &mut Registry) -> Self {
        WatcherFamilies {
            delivered: registered(
                r,
                "transformer_events_delivered",
                "Events a watcher acknowledged",
                Family::default(),
            ),
            retries: registered(
                r,
                "transformer_delivery_retries",
                "Failed delivery attempts that will be retried",
                Family::default(),
            ),
            dead_lettered: registered(
                r,
                "transformer_events_dead_lettered",
                "Events that exhausted their retries or were refused permanently",
                Family::default(),
            ),
            filtered: registered(
                r,
                "transformer_events_filtered",
                "Events a watcher's trigger filter passed over",
                Family::default(),
            ),
            queue_depth: registered(
                r,
                "transformer_queue_depth",
                "Events queued for a watcher and not yet delivered",
                Family::default(),
            ),
            latency: registered(
                r,
                "transformer_delivery_duration_seconds",
                "Time from acceptance to acknowledgement by the watcher",
                Family::new_with_constructor(latency_histogram),
            ),
        }
    }
}

impl NatsMetrics {
    fn register(r: &mut Registry) -> Self {
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
            r.register(name, help, c.clone());
        }
        nats
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        Metrics {
            intake: IntakeMetrics::register(&mut r),
            dedup: DedupMetrics::register(&mut r),
            trigger_reloads: registered(
                &mut r,
                "transformer_trigger_reloads",
                "Changes of TRANSFORMER_TRIGGERS taken (applied) or refused (the last good set stays)",
                Family::default(),
            ),
            replayed: registered(
                &mut r,
                "transformer_dead_letters_replayed",
                "Dead letters put back into a watcher's queue",
                Counter::default(),
            ),
            store_write: registered(
                &mut r,
                "transformer_store_write_duration_seconds",
                "Time the store's writer took for one group write of events and acknowledgements (commit, and fsync under TRANSFORMER_FSYNC=always); producers wait for it",
                Histogram::new(exponential_buckets(0.00002, 2.0, 16)),
            ),
            watchers: WatcherFamilies::register(&mut r),
            nats: NatsMetrics::register(&mut r),
            server: gateway_common::server::ServerMetrics::register(&mut r, "transformer"),
            registry: r,
        }
    }

    pub fn watcher(&self, name: &str) -> WatcherMetrics {
        let label = WatcherLabel {
            watcher: name.to_owned(),
        };
        let w = &self.watchers;
        WatcherMetrics {
            delivered: w.delivered.get_or_create(&label).clone(),
            retries: w.retries.get_or_create(&label).clone(),
            dead_lettered: w.dead_lettered.get_or_create(&label).clone(),
            filtered: w.filtered.get_or_create(&label).clone(),
            queue_depth: w.queue_depth.get_or_create(&label).clone(),
            latency: w.latency.get_or_create(&label).clone(),
        }
    }

    pub fn reject(&self, reason: &'static str) {
        self.intake
            .rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
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

use gateway_common::metrics::registered;
pub use gateway_common::metrics::{encode_registry, CONTENT_TYPE};
