//! The access log: one JSON line per request, in the shape of the
//! waypoint's other log lines (`timestamp`, `level`, `fields`, `target`
//! `access`), written straight to the log's writer thread. Formatting it
//! through a tracing event cost a twelfth of the waypoint's CPU (a map of
//! fields built, the connection span's fields parsed again); this writes
//! the line in one pass. `STRAIT_LOG` still turns it off (`access=off`).
use std::{
    fmt::Write as _,
    io::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing_appender::non_blocking::NonBlocking;

/// One line's fields, in order: a name and a string or a number.
pub enum Value<'a> {
    Text(&'a str),
    Number(u64),
}

pub struct AccessLog {
    out: NonBlocking,
}

impl AccessLog {
    pub fn new(out: NonBlocking) -> Self {
        Self { out }
    }

    /// Writes a line with `fields`, unless the filter turns it off.
    pub fn write(&self, fields: &[(&str, Value<'_>)]) {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let line = line(SystemTime::now(), fields);
        // The writer's thread takes it; a full queue drops it (counted by
        // tracing-appender), never blocking a request.
        let _ = self.out.clone().write_all(line.as_bytes());
    }
}

fn line(now: SystemTime, fields: &[(&str, Value<'_>)]) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("{\"timestamp\":\"");
    timestamp(&mut out, now);
    out.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\"");
    for (name, value) in fields {
        out.push_str(",\"");
        escape(&mut out, name);
        out.push_str("\":");
        match value {
            Value::Text(text) => {
                out.push('"');
                escape(&mut out, text);
                out.push('"');
            }
            Value::Number(n) => {
                let _ = write!(out, "{n}");
            }
        }
    }
    out.push_str("},\"target\":\"access\"}\n");
    out
}

/// JSON string contents: quotes, backslashes and control characters
/// escaped (a path or a header is the client's to choose).
fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// RFC 3339 in UTC with microseconds, as the other log lines.
fn timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_micros()
    );
}

/// The date `days` after 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_line_is_json_with_hostile_text_escaped() {
        // 2026-12-06T08:50:10.847817Z
        let at = UNIX_EPOCH + Duration::from_micros(1_796_547_010_847_817);
        let text = line(
            at,
            &[
                ("path", Value::Text("/a\"b\\c\n\u{1}é")),
                ("status", Value::Number(200)),
            ],
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["timestamp"], "2026-12-06T08:50:10.847817Z");
        assert_eq!(parsed["target"], "access");
        assert_eq!(parsed["fields"]["message"], "request");
        assert_eq!(parsed["fields"]["path"], "/a\"b\\c\n\u{1}é");
        assert_eq!(parsed["fields"]["status"], 200);
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn dates_are_right_across_leap_years() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (11_016, (2000, 2, 29)),
            (19_782, (2024, 2, 29)),
            (20_793, (2026, 12, 6)),
        ] {
            assert_eq!(civil(days), date);
        }
    }
}
