//! Every variable only the transformer reads, declared once: name, default and
//! meaning. [`super::Config`] reads them; the docs' table and `docker/` are
//! checked against [`VARS`].

use gateway_common::env::{self as shared, Listener, Var};

pub(super) const LISTEN_ADDRESS: Var = Var::new(
    "TRANSFORMER_LISTEN_ADDRESS",
    "0.0.0.0",
    "the address it listens on",
);
pub(super) const EVENT_TYPE: Var =
    Var::derived("EVENT_TYPE", "`GATEWAY_NAME`", "CloudEvent `type`");
pub(super) const SENSOR_WATCHERS: Var = Var::optional(
    "SENSOR_WATCHERS",
    "comma-separated sensor URLs that receive every CloudEvent",
);
pub(super) const GATEWAY_WATCHERS: Var = Var::optional(
    "GATEWAY_WATCHERS",
    "comma-separated URLs of other gateways' transformers (chaining)",
);
pub(super) const EVENT_PROTOCOL: Var =
    Var::new("EVENT_PROTOCOL", "HTTP", "`HTTP`, `NATS`, or `HTTP,NATS`");
pub(super) const NATS_TYPE: Var = Var::new(
    "NATS_TYPE",
    "Standard",
    "`Standard` (core publish, at most once) or `Streaming` (JetStream, acknowledged, stored, replayable)",
);
pub(super) const NATS_SUBJECT: Var = Var::new(
    "NATS_SUBJECT",
    "{gateway}.{src}",
    "subject template; `{gateway}`, `{namespace}`, `{src}`, `{type}` are replaced",
);
pub(super) const NATS_STREAM: Var = Var::derived(
    "NATS_STREAM",
    "`GATEWAY_NAME` upper-cased",
    "JetStream stream, created when missing to cover the gateway's subjects",
);
pub(super) const NATS_CE_MODE: Var = Var::new(
    "NATS_CE_MODE",
    "structured",
    "CloudEvents NATS binding mode: `structured` (payload is the JSON event) or `binary` (`ce-` headers, payload is the data)",
);
pub(super) const CE_MODE: Var = Var::new(
    "CE_MODE",
    "binary",
    "HTTP content mode to sensors and gateways: `binary` or `structured`",
);
pub(super) const QUEUE_CAPACITY: Var = Var::new(
    "TRANSFORMER_QUEUE_CAPACITY",
    "10000",
    "events queued per watcher (all its lanes and configurations together) before producers get 503",
);
/// Deliveries in flight per watcher. Each configuration keeps to one lane, so order
/// holds; more lanes let more configurations' events travel at once.
pub(super) const WATCHER_CONCURRENCY: Var = Var::new(
    "WATCHER_CONCURRENCY",
    "16",
    "parallel lanes per watcher; events of one configuration always share a lane, so their order holds",
);
pub(super) const WATCHER_TIMEOUT: Var = Var::new(
    "WATCHER_TIMEOUT",
    "5s",
    "per-attempt deadline of a delivery",
);
pub(super) const WATCHER_RETRY_BASE: Var =
    Var::new("WATCHER_RETRY_BASE", "100ms", "first delivery backoff");
pub(super) const WATCHER_RETRY_CAP: Var =
    Var::new("WATCHER_RETRY_CAP", "5s", "longest delivery backoff");
pub(super) const WATCHER_RETRY_ATTEMPTS: Var = Var::new(
    "WATCHER_RETRY_ATTEMPTS",
    "0",
    "attempts before an event becomes a dead letter (0: retry until delivered)",
);
/// Room for a 1 MiB event body from the processor-client plus its JSON envelope.
pub(super) const MAX_BODY_BYTES: Var = Var::new(
    "TRANSFORMER_MAX_BODY_BYTES",
    "1052672",
    "largest request body; larger gets 413",
);
pub(super) const QUEUE_MAX_BYTES: Var = Var::new(
    "TRANSFORMER_QUEUE_MAX_BYTES",
    "33554432",
    "bytes of queued events held in memory across all watchers before producers get 503",
);
/// Long enough to ride out a burst while the watchers catch up (the request is
/// simply answered later, which slows producers without a 503 round trip), short
/// enough that a dead sensor turns into 503s well inside any client's timeout.
pub(super) const DEDUP_WINDOW: Var = Var::new(
    "TRANSFORMER_DEDUP_WINDOW",
    "10m",
    "how long an event a user server named with an `id` (or a relayed CloudEvent's `source` and `id`) is remembered: a repeat within it is answered as taken, `\"duplicate\": true`, and delivered nowhere again; `0` turns this off",
);
pub(super) const DEDUP_MAX_IDS: Var = Var::new(
    "TRANSFORMER_DEDUP_MAX_IDS",
    "1000000",
    "most event names remembered at once (about 36 bytes each); past it a new name is answered 503 until the oldest expires, never taken unremembered",
);
pub(super) const TRIGGERS: Var = Var::optional(
    "TRANSFORMER_TRIGGERS",
    "a file, or a ConfigMap-like directory, of Knative `Trigger` documents: each a watcher with its filters, delivery and rate limit (`SENSOR_WATCHERS` and `GATEWAY_WATCHERS` stay, as triggers without filters)",
);
pub(super) const CE_OVERRIDES: Var = Var::optional(
    "K_CE_OVERRIDES",
    "Knative's source contract: JSON `{\"extensions\": {NAME: VALUE}}` added to every CloudEvent built from a user server's event",
);
pub(super) const ADMIT_WAIT: Var = Var::new(
    "TRANSFORMER_ADMIT_WAIT",
    "500ms",
    "how long a request may wait for room in a full queue before it is answered 503 (no wait while that queue's watcher is failing; a wait ends in 503 when it starts failing)",
);
pub(super) const DURABLE: Var = Var::new(
    "TRANSFORMER_DURABLE",
    "true",
    "`false` keeps the queue in a temporary directory: nothing survives a crash",
);
pub(super) const DATA_DIR: Var = Var::derived(
    "TRANSFORMER_DATA_DIR",
    "`gateway-data/transformer-NAME-PORT`",
    "the durable queue and dead letters (relative to the working directory; mount a volume here in a container)",
);
pub(super) const WATCHER_TOKEN: Var =
    Var::optional("WATCHER_TOKEN", "bearer token sent to HTTP watchers");
pub(super) const WATCHER_TLS_CA: Var = Var::optional(
    "WATCHER_TLS_CA",
    "PEM file of CA certificates trusted for `https://` watchers, beside the system's roots",
);
/// Dead letters are rare, and this is resident memory.
pub(super) const STORE_MEMTABLE_BYTES: Var = Var::new(
    "TRANSFORMER_STORE_MEMTABLE_BYTES",
    "1048576",
    "the in-memory table of the store that keeps dead letters (the queue itself is an append-only log and has none); larger costs resident memory",
);
pub(super) const FSYNC: Var = Var::new(
    "TRANSFORMER_FSYNC",
    "never",
    "`never`: writes reach the OS before the 2xx (survives the process being killed); `always`: an fsync before every 2xx (survives power loss); a period such as `100ms`: fsync that often",
);

/// The transformer's listener variables.
pub(super) const LISTENER: Listener = Listener {
    header_timeout: Var::new(
        "TRANSFORMER_HEADER_TIMEOUT",
        shared::HEADER_TIMEOUT,
        shared::HEADER_TIMEOUT_MEANING,
    ),
    idle_timeout: Var::new(
        "TRANSFORMER_IDLE_TIMEOUT",
        shared::IDLE_TIMEOUT,
        shared::IDLE_TIMEOUT_MEANING,
    ),
    body_timeout: Var::new(
        "TRANSFORMER_BODY_TIMEOUT",
        shared::BODY_TIMEOUT,
        shared::BODY_TIMEOUT_MEANING,
    ),
    max_connections: Var::new(
        "TRANSFORMER_MAX_CONNECTIONS",
        shared::MAX_CONNECTIONS,
        shared::MAX_CONNECTIONS_MEANING,
    ),
};

/// Every variable only the transformer reads, in the order the docs list them;
/// it also reads [`shared::SHARED`] and, with NATS, [`gateway_common::nats::VARS`].
pub const VARS: [Var; 33] = [
    LISTEN_ADDRESS,
    EVENT_TYPE,
    SENSOR_WATCHERS,
    GATEWAY_WATCHERS,
    EVENT_PROTOCOL,
    NATS_TYPE,
    NATS_SUBJECT,
    NATS_STREAM,
    NATS_CE_MODE,
    CE_MODE,
    QUEUE_CAPACITY,
    WATCHER_CONCURRENCY,
    WATCHER_TIMEOUT,
    WATCHER_RETRY_BASE,
    WATCHER_RETRY_CAP,
    WATCHER_RETRY_ATTEMPTS,
    MAX_BODY_BYTES,
    QUEUE_MAX_BYTES,
    ADMIT_WAIT,
    DEDUP_WINDOW,
    DEDUP_MAX_IDS,
    TRIGGERS,
    CE_OVERRIDES,
    DURABLE,
    DATA_DIR,
    WATCHER_TOKEN,
    WATCHER_TLS_CA,
    STORE_MEMTABLE_BYTES,
    LISTENER.header_timeout,
    LISTENER.idle_timeout,
    LISTENER.body_timeout,
    LISTENER.max_connections,
    FSYNC,
];
