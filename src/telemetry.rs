//! Structured logging: `tracing` events to stderr as text or JSON lines, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Without `RUST_LOG`, Hearth logs `info` and above for itself
/// and `warn` and above for its dependencies.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,hearth=info,tower_http=info"));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` so that a second call (tests that start several servers) is harmless.
    if json {
        let _ = registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init();
    } else {
        let ansi = std::io::stderr().is_terminal();
        let _ = registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init();
    }
}
