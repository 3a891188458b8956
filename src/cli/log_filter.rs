//! The log filter of every ironboot command: `RUST_LOG` (or the command's default level),
//! with the dependencies that log per frame, per poll or per connection kept at `info`
//! when the level asked for is `debug` or `trace`, unless `RUST_LOG` names them.
//!
//! At `trace` the HTTP/2 stack alone (h2: every frame, window update and stream state
//! change of the Omni client and the agent tunnel) wrote 84% of ironboot's lines, tens of
//! megabytes a minute under a small load (RELIABILITY.md, "Log volume at trace"); what
//! an operator asking for `trace` wants to see is ironboot's own reasoning. Naming a
//! dependency brings it back: `RUST_LOG=trace,h2=trace`, or a module of it
//! (`RUST_LOG=debug,h2::codec=trace`: that module at trace, the rest of h2 at info).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, ParseError};

/// Dependencies kept at `info` under a `debug` or `trace` default, unless named.
const QUIET_DEPENDENCIES: [&str; 14] = [
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "tower_http",
    "axum",
    "rustls",
    "tokio_rustls",
    "reqwest",
    "redb",
    "mio",
    "want",
    "tokio_util",
];

/// The OpenPGP crate's debug lines dump the packets it parses, the service-account secret
/// key among them: never below warn, whatever `RUST_LOG` says.
const SECRET_SAFE: &str = "pgp=warn";

/// The filter from `RUST_LOG`, or from `default` (a level, e.g. `debug`) when it is unset
/// or invalid.
pub(crate) fn from_env(default: &str) -> EnvFilter {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|spec| !spec.trim().is_empty())
        .and_then(|spec| build(&spec).ok())
        .unwrap_or_else(|| build(default).expect("the default log level is a valid directive"))
}

/// The filter for `spec` (`RUST_LOG` syntax) with the caps described above.
pub(crate) fn build(spec: &str) -> Result<EnvFilter, ParseError> {
    let mut filter = EnvFilter::builder().parse(spec)?;
    for directive in added_directives(spec) {
        filter = filter.add_directive(directive.parse()?);
    }
    Ok(filter)
}

/// The directives added to `spec`: each quiet dependency not named in it at `info` when
/// its default level is more verbose than that, and the OpenPGP crate at `warn`.
fn added_directives(spec: &str) -> Vec<String> {
    let directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    // The default level: the last bare level (a directive without a target).
    let default = directives
        .iter()
        .rev()
        .find_map(|d| d.parse::<LevelFilter>().ok());
    // Targets named: the part before a span filter (`[`) or a level (`=`).
    let named: Vec<&str> = directives
        .iter()
        .filter(|d| d.parse::<LevelFilter>().is_err())
        .map(|d| d.split(['[', '=']).next().unwrap_or(d).trim())
        .collect();
    let mut added = Vec::new();
    if default.is_some_and(|level| level > LevelFilter::INFO) {
        for dep in QUIET_DEPENDENCIES {
            if !named.contains(&dep) {
                added.push(format!("{dep}=info"));
            }
        }
    }
    added.push(SECRET_SAFE.to_owned());
    added
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing::Level;

    use super::*;

    #[test]
    fn caps_only_what_the_spec_leaves_to_its_default() {
        let caps = |spec: &str| -> Vec<String> {
            added_directives(spec)
                .into_iter()
                .filter(|d| d.ends_with("=info"))
                .collect()
        };
        // A debug or trace default: every quiet dependency at info.
        assert_eq!(caps("trace").len(), QUIET_DEPENDENCIES.len());
        assert_eq!(
            caps("info,ironboot=trace,debug").len(),
            QUIET_DEPENDENCIES.len()
        );
        // Named ones keep what the spec says; a module of one still caps the rest of it.
        let named = caps("trace,h2=trace,hyper[conn]=debug");
        assert!(!named.iter().any(|d| d == "h2=info" || d == "hyper=info"));
        assert!(caps("debug,h2::codec=trace").contains(&"h2=info".to_owned()));
        // Quieter or no default: nothing made louder.
        assert!(caps("info").is_empty());
        assert!(caps("warn").is_empty());
        assert!(caps("ironboot=trace").is_empty());
        // The OpenPGP crate always at warn.
        assert!(added_directives("info").contains(&"pgp=warn".to_owned()));
        assert!(added_directives("trace,pgp=trace").contains(&"pgp=warn".to_owned()));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines a subscriber with `build(spec)` writes for one event per (target, level).
    fn logged(spec: &str) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(build(spec).unwrap())
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::event!(target: "ironboot::agent", Level::TRACE, "own-trace");
            tracing::event!(target: "h2::codec::framed_write", Level::DEBUG, "h2-debug");
            tracing::event!(target: "h2::codec::framed_write", Level::INFO, "h2-info");
            tracing::event!(target: "hyper_util::client", Level::TRACE, "hyper-util-trace");
            tracing::event!(target: "pgp::packet", Level::DEBUG, "pgp-debug");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn trace_keeps_ironboot_and_quiets_the_named_dependencies() {
        let text = logged("trace");
        assert!(
            text.contains("own-trace") && text.contains("h2-info"),
            "{text}"
        );
        assert!(
            !text.contains("h2-debug") && !text.contains("hyper-util-trace"),
            "{text}"
        );
        assert!(!text.contains("pgp-debug"), "{text}");

        let text = logged("trace,h2=trace");
        assert!(text.contains("h2-debug"), "{text}");
        assert!(!text.contains("hyper-util-trace"), "{text}");

        let text = logged("trace,pgp=trace");
        assert!(!text.contains("pgp-debug"), "{text}");
    }
}
