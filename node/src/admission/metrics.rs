//! The secure channel's counters as Prometheus metrics.
//!
//! The channel counts admissions, refusals, rekeys and stream errors itself (in the
//! transports crate, which knows nothing of Prometheus). This collector reads those same
//! counters at scrape time, so `/metrics` and `fogmesh status` can never disagree.

use std::sync::Arc;

use fogmesh_transports::secure::SecurityStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

/// See the module docs.
#[derive(Debug)]
pub struct HandshakeCollector {
    stats: Arc<SecurityStats>,
}

impl HandshakeCollector {
    pub fn new(stats: Arc<SecurityStats>) -> Self {
        Self { stats }
    }
}

impl Collector for HandshakeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.stats.snapshot();
        let mut admitted = encoder.encode_descriptor(
            "handshakes_admitted",
            "Connections the secure channel admitted, by direction and protocol",
            None,
            MetricType::Counter,
        )?;
        for (direction, protocol, n) in [
            (
                "inbound",
                "xk",
                s.admitted_inbound.saturating_sub(s.admitted_noise_inbound),
            ),
            (
                "outbound",
                "xk",
                s.admitted_outbound
                    .saturating_sub(s.admitted_noise_outbound),
            ),
            ("inbound", "noise", s.admitted_noise_inbound),
            ("outbound", "noise", s.admitted_noise_outbound),
        ] {
            let labels = [("direction", direction), ("protocol", protocol)];
            ConstCounter::new(n).encode(admitted.encode_family(&labels)?)?;
        }
        let mut refused = encoder.encode_descriptor(
            "handshakes_refused",
            "Handshakes that did not admit the remote, by direction and reason",
            None,
            MetricType::Counter,
        )?;
        for (key, n) in &s.refused {
            // Keys are "<direction>.<reason>" (see SecurityStats::count_refused).
            let (direction, reason) = key.split_once('.').unwrap_or(("unknown", key));
            let labels = [("direction", direction), ("reason", reason)];
            ConstCounter::new(*n).encode(refused.encode_family(&labels)?)?;
        }
        let mut rekeys = encoder.encode_descriptor(
            "rekeys",
            "Transport key updates, by who started them",
            None,
            MetricType::Counter,
        )?;
        for (side, n) in [("sent", s.rekeys_sent), ("received", s.rekeys_received)] {
            ConstCounter::new(n).encode(rekeys.encode_family(&[("side", side)])?)?;
        }
        let mut stream_errors = encoder.encode_descriptor(
            "secure_stream_errors",
            "Admitted connections closed by a bad transport frame, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &s.stream_errors {
            ConstCounter::new(*n)
                .encode(stream_errors.encode_family(&[("reason", reason.as_str())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use fogmesh_transports::secure::stats::Direction;
    use prometheus_client::registry::Registry;

    #[test]
    fn scrapes_show_the_channels_own_counters() {
        let stats = Arc::new(SecurityStats::default());
        let mut registry = Registry::default();
        registry
            .sub_registry_with_prefix("fogmesh")
            .register_collector(Box::new(HandshakeCollector::new(stats.clone())));
        stats.count_admitted(Direction::Inbound);
        stats.count_refused(Direction::Outbound, "expired");
        stats.count_refused(Direction::Outbound, "expired");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "fogmesh_handshakes_admitted_total{direction=\"inbound\",protocol=\"xk\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "fogmesh_handshakes_refused_total{direction=\"outbound\",reason=\"expired\"} 2"
            ),
            "{text}"
        );
    }
}
