//! The node's one metrics registry, served as OpenMetrics text at `GET /metrics`.
//!
//! Registration happens while the node is built ([`MetricsRegistry`]); then the registry is
//! frozen ([`FrozenMetrics`]) and shared with the control API, which only encodes it. The
//! metrics themselves are atomics the node updates directly, so serving a scrape takes no lock
//! the node's event loop could wait on.

use std::sync::Arc;

use prometheus_client::encoding::text;
use prometheus_client::registry::Registry;

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry while the node registers its metrics.
#[derive(Debug)]
pub struct MetricsRegistry {
    /// Our own metrics, every name prefixed `fogmesh_`.
    fogmesh: Registry,
    /// libp2p's metrics, under the `libp2p_` names libp2p-metrics gives them.
    libp2p: Registry,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRegistry {
    pub fn new() -> Self {
        Self {
            fogmesh: Registry::with_prefix("fogmesh"),
            libp2p: Registry::default(),
        }
    }

    /// Where fogmesh's own metrics go (names get the `fogmesh_` prefix).
    pub fn fogmesh(&mut self) -> &mut Registry {
        &mut self.fogmesh
    }

    /// libp2p's own metrics (swarm, gossipsub, identify, kad, ping), registered here. Call it
    /// once: a second call registers a second set under the same names.
    pub fn libp2p(&mut self) -> libp2p::metrics::Metrics {
        libp2p::metrics::Metrics::new(&mut self.libp2p)
    }

    /// Wraps the node's transport so every connection's bytes are counted, by direction and
    /// by its address's protocol stack (`libp2p_bandwidth_bytes_total{protocols,direction}`:
    /// TCP, QUIC, relayed circuits, the radio, the memory transport apart). One atomic add
    /// per read or write.
    pub fn count_bandwidth(
        &mut self,
        transport: fogmesh_transports::BoxedTransport,
    ) -> fogmesh_transports::BoxedTransport {
        use libp2p::core::muxing::StreamMuxerBox;
        use libp2p::core::Transport as _;
        libp2p::metrics::BandwidthTransport::new(transport, &mut self.libp2p)
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed()
    }

    /// Ends registration; what is left is served.
    pub fn freeze(self) -> Arc<FrozenMetrics> {
        Arc::new(FrozenMetrics { registry: self })
    }
}

/// The registry once registration is over, shared with the control API.
#[derive(Debug)]
pub struct FrozenMetrics {
    registry: MetricsRegistry,
}

impl FrozenMetrics {
    /// Every metric as OpenMetrics text, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, and the encoders fail only when the writer does.
        let _ = text::encode_registry(&mut out, &self.registry.fogmesh)
            .and_then(|()| text::encode_registry(&mut out, &self.registry.libp2p))
            .and_then(|()| text::encode_eof(&mut out));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn our_metrics_are_prefixed_and_the_text_ends_in_eof() {
        let mut registry = MetricsRegistry::new();
        let counter = Counter::<u64>::default();
        registry
            .fogmesh()
            .register("widgets", "Widgets made", counter.clone());
        let _libp2p = registry.libp2p();
        let frozen = registry.freeze();
        counter.inc_by(3);
        let text = frozen.encode();
        assert!(text.contains("\nfogmesh_widgets_total 3\n"), "{text}");
        assert!(text.contains("# TYPE libp2p_"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
