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

/// libp2p-swarm says the local PeerId at info when a swarm is built; the node says it once
/// itself (`node started`), so the swarm is kept to warnings unless the filter names it or
/// asks for debug detail anyway.
fn with_quiet_swarm(filter: &str) -> String {
    if ["libp2p_swarm", "debug", "trace"]
        .iter()
        .any(|word| filter.contains(word))
    {
        filter.to_owned()
    } else {
        format!("{filter},libp2p_swarm=warn")
    }
}
