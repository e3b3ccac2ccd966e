//! How a command prints: a table (or text), JSON or YAML.
use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

impl Output {
    /// `value` as JSON or YAML, or as `table` writes it.
    pub fn render<T: Serialize + ?Sized>(
        self,
        value: &T,
        table: fn(&T) -> String,
    ) -> Result<String> {
        Ok(match self {
            Self::Table => table(value),
            Self::Json => format!(
                "{}\n",
                serde_json::to_string_pretty(value).context("writing JSON")?
            ),
            Self::Yaml => {
                let value = serde_json::to_value(value).context("writing YAML")?;
                serde_saphyr::to_string(&value).context("writing YAML")?
            }
        })
    }
}
