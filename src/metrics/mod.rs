//! Prometheus metrics: what `GET /metrics` answers (`prometheus-client`; OpenMetrics text when the
//! scraper asks for it, as Prometheus does, else the Prometheus text format 0.0.4).
//!
//! Almost everything is read at scrape time from the counters the subsystems keep anyway (the
//! hub's, the recorder's [`RecorderStats`](crate::archive::recorder::RecorderStats), the
//! uploader's, retention's, the storage roots', the pools'), so nothing is counted twice and a
//! stream's series appear and disappear with its runtime. Only HTTP requests are counted here
//! ([`http::HttpMetrics`]), by route template (never the raw URL, so the label set stays bounded),
//! and the relay upstreams of `live::relay` (a layer above, so it reports into [`Metrics`]).
//!
//! One module per subsystem, each a function writing its families into the scrape's encoder:
//! [`streams`] (per stream: source, hub, viewers, HLS, recorder), [`storage`] (index, pools,
//! uploads, retention, roots), [`process`] (memory, descriptors, CPU, tasks), [`webrtc`] (WHEP
//! sessions and what they sent). A new subsystem adds
//! a module and one line in [`Scrape::encode`].

pub mod http;
pub mod process;
pub mod storage;
pub mod streams;
pub mod webrtc;

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::db::Db;

/// The `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Long-lived metric state: the HTTP request families, the connection pools to report, and the
/// count of open relay upstreams (kept by `live::relay`, which sits above this module).
#[derive(Default)]
pub struct Metrics {
    pub http: http::HttpMetrics,
    /// Cluster mode: upstream connections this node has open to relay live streams other nodes
    /// hold (one per stream at most).
    pub relay_upstreams: std::sync::atomic::AtomicU64,
    /// Pools besides the API's (`Sources::db`), by name: the recorders', the upkeep tasks'.
    pools: Mutex<Vec<(&'static str, Db)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Reports a connection pool as `pool="<name>"`.
    pub fn add_pool(&self, name: &'static str, db: Db) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|(n, _)| *n != name);
        pools.push((name, db));
    }

    fn pools(&self) -> Vec<(&'static str, Db)> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The labels of one series: `(name, value)` pairs. The encoder escapes values (`\\`, `\"`,
/// newlines), so any stream name is safe.
pub type Labels = Vec<(&'static str, String)>;

/// Labels from `(name, value)` pairs.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// Writes metric families into a scrape. Names are given without the `_total` suffix of
/// counters or the unit suffix (the encoder appends both).
pub struct Families<'a, 'e> {
    enc: &'a mut DescriptorEncoder<'e>,
}

impl<'a, 'e> Families<'a, 'e> {
    pub fn new(enc: &'a mut DescriptorEncoder<'e>) -> Self {
        Families { enc }
    }

    /// A counter family, one series per row.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (Labels, u64)>,
    ) -> std::fmt::Result {
        self.family(
            name,
            help,
            unit,
            MetricType::Counter,
            rows,
            ConstCounter::new,
        )
    }

    /// A counter family of real numbers (seconds).
    pub fn counter_f64(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (Labels, f64)>,
    ) -> std::fmt::Result {
        self.family(
            name,
            help,
            unit,
            MetricType::Counter,
            rows,
            ConstCounter::new,
        )
    }

    /// A gauge family of integers.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (Labels, i64)>,
    ) -> std::fmt::Result {
        self.family(name, help, unit, MetricType::Gauge, rows, ConstGauge::new)
    }

    /// A gauge family of real numbers (seconds, ratios).
    pub fn gauge_f64(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (Labels, f64)>,
    ) -> std::fmt::Result {
        self.family(name, help, unit, MetricType::Gauge, rows, ConstGauge::new)
    }

    fn family<V, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        kind: MetricType,
        rows: impl IntoIterator<Item = (Labels, V)>,
        make: impl Fn(V) -> M,
    ) -> std::fmt::Result {
        let mut rows: Vec<(Labels, V)> = rows.into_iter().collect();
        // A family without series is left out (as the crate does for registered families).
        if rows.is_empty() {
            return Ok(());
        }
        let mut family = self
            .enc
            .encode_descriptor(name, help, unit.as_ref(), kind)?;
        if rows.len() == 1 && rows[0].0.is_empty() {
            // One series without labels: `name value`, not `name{} value`.
            if let Some((_, value)) = rows.pop() {
                make(value).encode(family)?;
            }
            return Ok(());
        }
        for (labels, value) in rows {
            make(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// One row without labels.
pub fn one<V>(value: V) -> [(Labels, V); 1] {
    [(Vec::new(), value)]
}

/// A gauge value from an unsigned count (saturating; counts never reach `i64::MAX`).
pub fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// A compile-time check that our gauge value types encode.
const _: fn() = || {
    fn gauge_value<T: EncodeGaugeValue>() {}
    gauge_value::<i64>();
    gauge_value::<f64>();
};

/// What the metrics are read from: the server's subsystems, handed over by the `/metrics` route
/// (so this module depends on the subsystems, never on the HTTP layer).
#[derive(Clone)]
pub struct Sources {
    pub config: std::sync::Arc<crate::config::Config>,
    pub db: Db,
    pub manager: std::sync::Arc<crate::manager::StreamManager>,
    pub archive: std::sync::Arc<crate::archive::Archive>,
    pub uploads: std::sync::Arc<crate::archive::uploader::UploadStats>,
    pub roots: std::sync::Arc<crate::archive::markers::MarkedRoots>,
    pub reconcile: std::sync::Arc<crate::archive::repair::ReconcileCounters>,
    pub limits: std::sync::Arc<crate::limits::Limits>,
    pub metrics: std::sync::Arc<Metrics>,
    pub webrtc: std::sync::Arc<crate::webrtc::WebRtc>,
}

/// What one scrape reads: the server's state and the index facts gathered before encoding
/// (encoding is synchronous; the index is not).
struct Scrape {
    state: Sources,
    index: storage::IndexFacts,
    now_us: i64,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut out = Families::new(&mut enc);
        streams::encode(&self.state, self.now_us, &mut out)?;
        storage::encode(&self.state, &self.index, self.now_us, &mut out)?;
        process::encode(&self.state, &mut out)?;
        webrtc::encode(&self.state, &mut out)?;
        Ok(())
    }
}

/// The two text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text: what Prometheus asks for first (ends with `# EOF`).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain`): for clients that do not ask for
    /// OpenMetrics (curl, older scrapers).
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Renders every metric in `format`.
pub async fn render(state: &Sources, format: Format) -> String {
    let index = storage::IndexFacts::gather(&state.db).await;
    let mut registry = Registry::default();
    state.metrics.http.register(&mut registry);
    registry.register_collector(Box::new(Scrape {
        state: state.clone(),
        index,
        now_us: crate::db::now_us(),
    }));
    let mut text = String::new();
    let encoded = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry),
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        }
    };
    if let Err(e) = encoded {
        // Only a bug in a family (a name the encoder refuses) gets here.
        tracing::error!(error = %e, "metrics could not be encoded");
    }
    text
}
