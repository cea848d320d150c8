//! Prometheus metrics (the `prometheus` crate, default registry), served by the admin
//! listener at `/metrics`. Label sets on the per-request path are resolved once, here, so
//! counting a proxied request is an atomic add, not a label lookup.

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, Encoder, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, TextEncoder,
};
use std::sync::LazyLock;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_requests_total",
        "Requests answered, by route (native or proxied) and status class",
        &["route", "class"]
    )
    .expect("metric registers")
});

/// Where a request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Native,
    Proxied,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Native => "native",
            RouteKind::Proxied => "proxied",
        }
    }
}

const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// `[route][class]`, resolved once.
static REQUEST_COUNTERS: LazyLock<[[IntCounter; 6]; 2]> = LazyLock::new(|| {
    [RouteKind::Native, RouteKind::Proxied]
        .map(|route| CLASSES.map(|class| REQUESTS.with_label_values(&[route.as_str(), class])))
});

pub fn count_request(route: RouteKind, status: u16) {
    let class = match status {
        100..=599 => (status / 100) as usize,
        _ => 0,
    };
    REQUEST_COUNTERS[route as usize][class].inc();
}

static NATIVE_OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_native_outcomes_total",
        "Answers of the native disconnect route, by CONTRACT.md case",
        &["outcome"]
    )
    .expect("metric registers")
});

pub fn count_native_outcome(outcome: &'static str) {
    NATIVE_OUTCOMES.with_label_values(&[outcome]).inc();
}

static ORCHESTRATOR_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gateway_orchestrator_request_duration_seconds",
        "Orchestrator disconnect calls, by result",
        &["result"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers")
});

pub fn observe_orchestrator(result: &'static str, seconds: f64) {
    ORCHESTRATOR_SECONDS
        .with_label_values(&[result])
        .observe(seconds);
}

static DATABASE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gateway_database_duration_seconds",
        "Database work of the native route, by operation (read, lock_and_read, update, owed_write) and result",
        &["operation", "result"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers")
});

pub fn observe_database(operation: &'static str, ok: bool, seconds: f64) {
    DATABASE_SECONDS
        .with_label_values(&[operation, if ok { "ok" } else { "error" }])
        .observe(seconds);
}

static UPSTREAM_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_upstream_errors_total",
        "Proxied requests that failed at the Next.js upstream, by answer (502, 504)",
        &["status"]
    )
    .expect("metric registers")
});

pub fn count_upstream_error(status: u16) {
    let label = match status {
        502 => "502",
        504 => "504",
        _ => "other",
    };
    UPSTREAM_ERRORS.with_label_values(&[label]).inc();
}

pub static OWED_WRITES_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gateway_owed_writes_pending",
        "Row updates owed to the database (journaled, not yet landed)"
    )
    .expect("metric registers")
});

/// Every metric, in the Prometheus text format.
pub fn render() -> Vec<u8> {
    // Touch the lazily registered families so they appear before their first sample.
    LazyLock::force(&REQUEST_COUNTERS);
    LazyLock::force(&NATIVE_OUTCOMES);
    LazyLock::force(&ORCHESTRATOR_SECONDS);
    LazyLock::force(&DATABASE_SECONDS);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&OWED_WRITES_PENDING);
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        tracing::error!(error = %e, "could not encode metrics");
    }
    out
}
