//! The agent's log: JSON lines, filtered by `STRAIT_LOG` (an `EnvFilter`
//! spec, default `info`), a filter that can be read and changed while the
//! agent runs, through the admin endpoint (`straitctl log`).
use std::sync::Mutex;

use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

/// The longest filter accepted: a spec is a few targets and levels.
const MAX_SPEC: usize = 1024;

pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The spec in force, as it was given.
    spec: Mutex<String>,
}

impl Logging {
    /// Installs the log for the whole process.
    pub fn init() -> Self {
        let spec = std::env::var("STRAIT_LOG")
            .ok()
            .filter(|s| EnvFilter::try_new(s).is_ok())
            .unwrap_or_else(|| "info".into());
        let (filter, handle) = reload::Layer::new(EnvFilter::new(&spec));
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init();
        Self {
            handle,
            spec: Mutex::new(spec),
        }
    }

    /// The filter in force.
    pub fn level(&self) -> String {
        self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the filter (`debug`, `strait=debug,info`, ...); a spec
    /// that does not parse changes nothing.
    pub fn set(&self, spec: &str) -> Result<(), String> {
        let spec = spec.trim();
        if spec.is_empty() || spec.len() > MAX_SPEC {
            return Err(format!(
                "a log filter is 1 to {MAX_SPEC} bytes (`info`, `debug`, `strait_agent=debug,info`)"
            ));
        }
        let filter = EnvFilter::try_new(spec).map_err(|err| format!("{spec:?}: {err}"))?;
        self.handle
            .reload(filter)
            .map_err(|err| format!("the log filter could not be changed: {err}"))?;
        *self.spec.lock().unwrap_or_else(|p| p.into_inner()) = spec.to_string();
        Ok(())
    }
}
