//! Log set-up: `tracing` to stderr, filtered by `RUST_LOG` if set, else by the `log` setting.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored).
pub fn init(filter: &str, format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(with_quiet_swarm(filter)).unwrap_or_else(|_| EnvFilter::new("info"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Libraries kept quieter than the node's filter, unless the filter names them or asks for
/// debug detail anyway:
/// - libp2p-swarm says the local PeerId at info when a swarm is built; the node says it once
///   itself (`node started`);
/// - libp2p-kad warns "Failed to trigger bootstrap: No known peers" at every start of a lone
///   node (a new listen address with no peer schedules a bootstrap, and its throttle is not
///   configurable); the peer manager walks the DHT itself once peers are known. The module's
///   one other warning is about record replication, which fogmesh does not use.
const QUIETER: [(&str, &str); 2] = [
    ("libp2p_swarm", "libp2p_swarm=warn"),
    ("libp2p_kad", "libp2p_kad::behaviour=error"),
];

fn with_quiet_swarm(filter: &str) -> String {
    if ["debug", "trace"].iter().any(|word| filter.contains(word)) {
        return filter.to_owned();
    }
    let mut directives = filter.to_owned();
    for (named, directive) in QUIETER {
        if !filter.contains(named) {
            directives.push(',');
            directives.push_str(directive);
        }
    }
    directives
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_libraries_are_quieter_unless_named_or_debugging() {
        assert_eq!(
            with_quiet_swarm("info"),
            "info,libp2p_swarm=warn,libp2p_kad::behaviour=error"
        );
        assert_eq!(
            with_quiet_swarm("info,libp2p_kad=warn"),
            "info,libp2p_kad=warn,libp2p_swarm=warn"
        );
        assert_eq!(with_quiet_swarm("debug"), "debug");
    }
}
