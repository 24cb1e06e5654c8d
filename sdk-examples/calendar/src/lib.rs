//! The calendar event source: each configuration fires on a cron `schedule` or
//! every `interval`, in a `timezone`, skipping the dates its `recurrence` excludes,
//! and emits `{"eventTime": ..., "userPayload": ...}`.
//!
//! ```yaml
//! schedule: "*/10 * * * * *"     # cron, 5 or 6 fields (seconds first when 6)
//! interval: 55s                  # or this instead of schedule
//! recurrence:                    # iCalendar exclusions: dates or date-times
//!   - "EXDATE:20261224,20261225"
//!   - "EXDATE:20261231T235959Z"
//! timezone: Europe/Berlin        # default UTC
//! userPayload: {"any": "JSON"}   # passed through in every event
//! ```

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use gateway_sdk::{CancellationToken, ConfigData, ConfigExecutor, Emitter};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    schedule: Option<String>,
    interval: Option<String>,
    #[serde(default)]
    recurrence: Vec<String>,
    timezone: Option<String>,
    user_payload: Option<serde_json::Value>,
}

enum Timing {
    Cron(Box<Cron>),
    Every(chrono::Duration),
}

/// One parsed configuration.
pub struct Spec {
    timing: Timing,
    timezone: Tz,
    excluded_dates: Vec<NaiveDate>,
    excluded_instants: Vec<DateTime<Utc>>,
    user_payload: serde_json::Value,
}

impl Spec {
    pub fn parse(text: &str) -> Result<Spec, String> {
        let raw: RawSpec = serde_norway::from_str(text)
            .map_err(|e| format!("invalid calendar configuration: {e}"))?;
        let timing = match (raw.schedule, raw.interval) {
            (Some(s), None) => Timing::Cron(Box::new(
                croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .build()
                    .parse(&s)
                    .map_err(|e| format!("schedule {s:?} is not a cron expression: {e}"))?,
            )),
            (None, Some(i)) => {
                let d =
                    humantime::parse_duration(&i).map_err(|e| format!("interval {i:?}: {e}"))?;
                if d.is_zero() {
                    return Err("interval must be longer than zero".into());
                }
                Timing::Every(
                    chrono::Duration::from_std(d).map_err(|e| format!("interval {i:?}: {e}"))?,
                )
            }
            (Some(_), Some(_)) => return Err("give either schedule or interval, not both".into()),
            (None, None) => {
                return Err("a calendar configuration needs a schedule or an interval".into())
            }
        };
        let timezone = match raw.timezone.as_deref() {
            None | Some("") => Tz::UTC,
            Some(name) => Tz::from_str(name)
                .map_err(|_| format!("timezone {name:?} is not an IANA time zone"))?,
        };
        let mut excluded_dates = Vec::new();
        let mut excluded_instants = Vec::new();
        for line in &raw.recurrence {
            let Some(values) = line.trim().strip_prefix("EXDATE:") else {
                return Err(format!(
                    "recurrence {line:?}: only EXDATE: lines are supported"
                ));
            };
            for v in values.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                if let Ok(d) = NaiveDate::parse_from_str(v, "%Y%m%d") {
                    excluded_dates.push(d);
                } else if let Ok(t) =
                    NaiveDateTime::parse_from_str(v.trim_end_matches('Z'), "%Y%m%dT%H%M%S")
                {
                    let instant = if v.ends_with('Z') {
                        Utc.from_utc_datetime(&t)
                    } else {
                        timezone
                            .from_local_datetime(&t)
                            .earliest()
                            .ok_or(format!("EXDATE {v} does not exist in {timezone}"))?
                            .with_timezone(&Utc)
                    };
                    excluded_instants.push(instant);
                } else {
                    return Err(format!(
                        "EXDATE value {v:?} is neither YYYYMMDD nor YYYYMMDDTHHMMSS[Z]"
                    ));
                }
            }
        }
        Ok(Spec {
            timing,
            timezone,
            excluded_dates,
            excluded_instants,
            user_payload: raw.user_payload.unwrap_or(serde_json::Value::Null),
        })
    }

    /// The first firing strictly after `after` that no exclusion removes.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut candidate = after;
        for _ in 0..100_000 {
            candidate = match &self.timing {
                Timing::Cron(cron) => cron
                    .find_next_occurrence(&candidate.with_timezone(&self.timezone), false)
                    .ok()?
                    .with_timezone(&Utc),
                Timing::Every(step) => candidate + *step,
            };
            if !self.excluded(candidate) {
                return Some(candidate);
            }
        }
        None
    }

    fn excluded(&self, t: DateTime<Utc>) -> bool {
        self.excluded_instants.contains(&t)
            || self
                .excluded_dates
                .contains(&t.with_timezone(&self.timezone).date_naive())
    }

    pub fn event(&self, at: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({
            "eventTime": at.with_timezone(&self.timezone).to_rfc3339(),
            "userPayload": self.user_payload,
        })
    }
}

/// The executor. It remembers the last instant each key fired, so a changed
/// schedule (a stop, then a start) never fires twice for the same instant.
#[derive(Default, Clone)]
pub struct Calendar {
    last_fired: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
}

impl ConfigExecutor for Calendar {
    fn validate(&self, config: &ConfigData) -> Result<(), String> {
        Spec::parse(&config.config).map(|_| ())
    }

    fn start(
        &self,
        config: ConfigData,
        emitter: Emitter,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let last_fired = self.last_fired.clone();
        async move {
            let Ok(spec) = Spec::parse(&config.config) else {
                return;
            };
            let _ = emitter.running().await;
            let mut after = {
                let last = last_fired.lock().unwrap_or_else(|p| p.into_inner());
                last.get(&config.src)
                    .copied()
                    .map_or(Utc::now(), |l| l.max(Utc::now()))
            };
            while let Some(next) = spec.next_after(after) {
                let wait = (next - Utc::now()).to_std().unwrap_or_default();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                last_fired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(config.src.clone(), next);
                let body = spec.event(next).to_string();
                if emitter.emit(body.as_bytes()).await.is_err() {
                    return;
                }
                after = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_with_five_or_six_fields_in_a_timezone() {
        let five = Spec::parse("schedule: '0 9 * * *'\ntimezone: Europe/Berlin").unwrap();
        assert_eq!(
            five.next_after(at("2026-11-22T07:00:00Z")),
            Some(at("2026-11-22T08:00:00Z"))
        );
        let six = Spec::parse("schedule: '*/10 * * * * *'").unwrap();
        assert_eq!(
            six.next_after(at("2026-11-22T07:00:03Z")),
            Some(at("2026-11-22T07:00:10Z"))
        );
    }

    #[test]
    fn interval_and_exclusions() {
        let s = Spec::parse("interval: 12h\nrecurrence: ['EXDATE:20261123']").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-22T18:00:00Z")),
            Some(at("2026-11-24T06:00:00Z"))
        );
        let s =
            Spec::parse("schedule: '0 0 * * *'\nrecurrence: ['EXDATE:20261123T000000Z']").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-22T18:00:00Z")),
            Some(at("2026-11-24T00:00:00Z"))
        );
    }

    #[test]
    fn events_carry_time_and_payload() {
        let s = Spec::parse(
            r#"{"interval": "1s", "timezone": "Asia/Tokyo", "userPayload": {"k": [1]}}"#,
        )
        .unwrap();
        let e = s.event(at("2026-11-22T00:00:00Z"));
        assert_eq!(e["eventTime"], "2026-11-22T09:00:00+09:00");
        assert_eq!(e["userPayload"]["k"][0], 1);
    }

    #[test]
    fn invalid_configurations_say_why() {
        for (text, needle) in [
            ("schedule: 'every day'", "cron"),
            ("interval: soon", "interval"),
            ("{}", "schedule or an interval"),
            ("interval: 1s\ntimezone: Mars/Olympus", "time zone"),
            ("interval: 1s\nrecurrence: ['RRULE:FREQ=DAILY']", "EXDATE"),
            ("interval: 1s\ncolour: red", "unknown field"),
        ] {
            let e = Spec::parse(text).err().unwrap_or_default();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
