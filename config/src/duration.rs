//! Durations in the config: `500ms`, `5s`, `2m`, or a bare integer of milliseconds.

use std::time::Duration;

/// Parse `500ms`, `1.5s`, `5s`, `2m`, `1h` or a bare integer (milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration '{text}' (examples: 500ms, 5s, 2m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "invalid duration '{text}': must be a non-negative number"
        ));
    }
    let ms = value * unit_ms;
    if ms > 86_400_000.0 * 365.0 {
        return Err(format!("duration '{text}' is too long"));
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
