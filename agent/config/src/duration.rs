//! Durations as Istio and Kubernetes write them: `30s`, `1m30s`, `100ms`,
//! `24h`, `1.5s`.
use std::time::Duration;

/// Parses a sequence of `<number><unit>` (units: h, m, s, ms, us, ns).
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad =
        |why: &str| format!("{text:?} is not a duration ({why}; write e.g. 30s, 1m30s, 100ms)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("no unit"))?;
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| bad("bad number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad(&format!("unknown unit {unit:?}"))),
        };
        total += Duration::try_from_secs_f64(value * seconds).map_err(|_| bad("out of range"))?;
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_forms() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["", "30", "s", "30x", "1..5s", "-1s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
