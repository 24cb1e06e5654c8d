//! ISO 8601 durations, as Knative writes its delivery settings (`PT0.5S`,
//! `PT10S`, `PT1M30S`, `P1D`): days, hours, minutes and (fractional) seconds;
//! years and months have no fixed length and are refused.

use std::time::Duration;

/// Parses `text`; the error says what is wrong with it.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not an ISO 8601 duration such as PT0.5S or PT1M");
    let rest = text.strip_prefix('P').ok_or_else(bad)?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(bad()),
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return Err(bad());
    }
    let mut secs = 0f64;
    for (value, unit) in parts(date).ok_or_else(bad)? {
        secs += value
            * match unit {
                'W' => 7.0 * 86_400.0,
                'D' => 86_400.0,
                'Y' | 'M' => {
                    return Err(format!(
                        "{text:?}: years and months have no fixed length; use days"
                    ))
                }
                _ => return Err(bad()),
            };
    }
    for (value, unit) in time
        .map(parts)
        .unwrap_or(Some(Vec::new()))
        .ok_or_else(bad)?
    {
        secs += value
            * match unit {
                'H' => 3600.0,
                'M' => 60.0,
                'S' => 1.0,
                _ => return Err(bad()),
            };
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// `5D`, `1H30M0.5S` as (number, unit) pairs in order.
fn parts(text: &str) -> Option<Vec<(f64, char)>> {
    let mut out = Vec::new();
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' || c == ',' {
            number.push(if c == ',' { '.' } else { c });
        } else {
            let v: f64 = number.parse().ok()?;
            out.push((v, c));
            number.clear();
        }
    }
    number.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knative_durations() {
        assert_eq!(parse("PT0.5S"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("PT10S"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("PT1M30S"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("PT2H"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("P1D"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("P1DT1S"), Ok(Duration::from_secs(86_401)));
        assert_eq!(parse("PT0,25S"), Ok(Duration::from_millis(250)));
        for bad in ["", "P", "PT", "10s", "PT5", "PTS", "P1M", "PT-1S", "PT1X"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
