//! The `tracing` events of dependencies (h2, quinn, h3), written to the process log.
//!
//! Those crates report through `tracing`; the proxy logs through `log`. `tracing`'s own
//! bridge (its `log` feature) forwards every span of theirs to `log` when no subscriber is
//! set, including the trace-level spans h2 opens for each frame and stream, which a level
//! filter then discards: about 5,400 instructions of an HTTP/2 request (callgrind, 9.5%).
//! This subscriber takes events at info and above (warnings about a peer, a failed send)
//! and no spans at all, so the spans cost the callsite's cached "never".

use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// The most detailed level of a dependency's events that reaches the log.
const MAX: Level = Level::INFO;

struct ToLog;

fn log_level(l: &Level) -> log::Level {
    match *l {
        Level::ERROR => log::Level::Error,
        Level::WARN => log::Level::Warn,
        Level::INFO => log::Level::Info,
        Level::DEBUG => log::Level::Debug,
        Level::TRACE => log::Level::Trace,
    }
}

impl Subscriber for ToLog {
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        if m.is_span() || *m.level() > MAX {
            Interest::never()
        } else {
            // the log's own filter (RUST_LOG) is asked per event
            Interest::sometimes()
        }
    }

    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.is_event() && *m.level() <= MAX && {
            let meta = log::Metadata::builder()
                .level(log_level(m.level()))
                .target(m.target())
                .build();
            log::logger().enabled(&meta)
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(MAX))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // never called: every span callsite is `never`; an id is still owed
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, e: &Event<'_>) {
        let m = e.metadata();
        let line = render(e);
        log::logger().log(
            &log::Record::builder()
                .level(log_level(m.level()))
                .target(m.target())
                .module_path(m.module_path())
                .file(m.file())
                .line(m.line())
                .args(format_args!("{line}"))
                .build(),
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event as one line: its message, then its other fields as `name=value`.
fn render(e: &Event<'_>) -> String {
    let mut v = Line::default();
    e.record(&mut v);
    if !v.fields.is_empty() {
        if !v.message.is_empty() {
            v.message.push(' ');
        }
        v.message.push_str(v.fields.trim_start());
    }
    v.message
}

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, f: &Field, value: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", f.name());
        }
    }

    fn record_str(&mut self, f: &Field, value: &str) {
        if f.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", f.name());
        }
    }
}

/// Send the dependencies' `tracing` events to the log, from now on (once per process; a
/// second call changes nothing).
pub fn install() {
    // Err: one is set already (a second call, or a test harness); that one stays
    let _ = tracing::subscriber::set_global_default(ToLog);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event becomes its message and fields; under this subscriber spans (any level)
    /// are disabled, so h2's per-frame spans cost nothing.
    #[test]
    fn events_render_and_spans_are_refused() {
        use std::sync::{Arc, Mutex};
        struct Grab(Arc<Mutex<Vec<String>>>);
        impl Subscriber for Grab {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, e: &Event<'_>) {
                if let Ok(mut g) = self.0.lock() {
                    g.push(render(e));
                }
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
        let store = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Grab(store.clone()), || {
            tracing::warn!(peer = "10.0.0.1:443", code = 7, "sendmsg failed");
            tracing::info!("plain");
        });
        let lines = store.lock().map(|g| g.clone()).unwrap_or_default();
        assert_eq!(
            lines,
            vec!["sendmsg failed peer=10.0.0.1:443 code=7", "plain"]
        );

        tracing::subscriber::with_default(ToLog, || {
            assert!(tracing::error_span!("e").is_disabled());
            assert!(tracing::info_span!("i").is_disabled());
            assert!(tracing::trace_span!("t").is_disabled());
        });
    }
}
