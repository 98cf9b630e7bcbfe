//! HTTP requests of both listeners, by route template, method and status, with a latency
//! histogram. The route is the template the router matched (`/api/v1/streams/{id}`), or
//! `unmatched` for requests no route took (404s of random URLs), and unknown methods are
//! `other`: the label set is bounded by the route table, whatever clients send.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Upper bounds of the latency buckets, in seconds (1 ms to 10 s). Media bodies are streamed
/// after the headers, so this is the time to the response head.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Labels of a request count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `api` or `video`.
    pub listener: &'static str,
    pub method: &'static str,
    /// The matched route template, or [`UNMATCHED`].
    pub route: String,
    /// The status code of the response.
    pub status: u16,
}

/// Labels of a latency observation (the status is left out to keep the histogram small).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: &'static str,
    pub method: &'static str,
    pub route: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The request families. Cloning shares them.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }
}

/// The method label: the standard methods by name, anything else `other`.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

impl HttpMetrics {
    /// Counts one answered request.
    pub fn observe(
        &self,
        listener: &'static str,
        method: &'static str,
        route: &str,
        status: u16,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                listener,
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                listener,
                method,
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Adds the families to a scrape's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "video_server_http_requests",
            "HTTP requests answered, by listener, method, route template and status",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "video_server_http_request_duration",
            "Time from a request to its response head, by listener, method and route template",
            Unit::Seconds,
            self.latency.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PROPFIND"), "other");
        assert_eq!(method_label("get"), "other");
    }
}
