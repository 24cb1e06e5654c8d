//! The configurations the processor-client knows, with their phase. Supervisor tasks
//! write it as they start and stop configurations; HTTP handlers read it to route
//! events and write it on running and error notices; `GET /configs` lists it.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What the user server receives on `/start` and `/stop`, as the contract fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigData {
    pub id: String,
    #[serde(rename = "timeID")]
    pub time_id: String,
    pub src: String,
    pub config: String,
}

impl ConfigData {
    /// A configuration about to be started: its id and a fresh `timeID`.
    pub fn new(src: &str, config: &str) -> Self {
        ConfigData {
            id: crate::id::config_id(src, config),
            time_id: crate::id::time_id(),
            src: src.to_owned(),
            config: config.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    Pending,
    Running,
    Error,
    Stopped,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Pending, Phase::Running, Phase::Error, Phase::Stopped];
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Error => "Error",
            Phase::Stopped => "Stopped",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    data: ConfigData,
    phase: Phase,
    message: String,
    since: OffsetDateTime,
    /// The user server answered 2xx to the current `/start`.
    accepted: bool,
}

/// One line of `GET /configs`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    pub src: String,
    pub id: String,
    #[serde(rename = "timeID")]
    pub time_id: String,
    pub phase: Phase,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// With sharing: the replica that runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Why a notice or event names no usable configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no configuration named {0:?}")]
    Unknown(String),
    #[error("configuration {0:?} was removed and is stopped")]
    Stopped(String),
    #[error("configuration {src:?} is now id {current}, not {given}; the notice is for an older version")]
    StaleId {
        src: String,
        given: String,
        current: String,
    },
    #[error("no configuration named in the request (send src in the body or as ?src=), and there is not exactly one configuration to assume")]
    Ambiguous,
}

#[derive(Default)]
pub struct Registry {
    entries: RwLock<HashMap<String, Entry>>,
}

impl Registry {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A start is about to be attempted for `data` (new, changed or restarted).
    pub fn starting(&self, data: &ConfigData, message: &str) {
        let mut map = self.write();
        let entry = map.entry(data.src.clone()).or_insert_with(|| Entry {
            data: data.clone(),
            phase: Phase::Pending,
            message: String::new(),
            since: OffsetDateTime::now_utc(),
            accepted: false,
        });
        entry.data = data.clone();
        entry.accepted = false;
        set_phase(entry, Phase::Pending, message);
    }

    /// The user server took the start. A running notice may already have arrived
    /// while the start request was in flight; it is not overwritten.
    pub fn start_accepted(&self, src: &str) {
        if let Some(e) = self.write().get_mut(src) {
            e.accepted = true;
            if e.phase == Phase::Pending {
                e.message = "started; waiting for the running notice".into();
            }
        }
    }

    /// Back to Pending with a reason (start failing, user server gone).
    pub fn pending(&self, src: &str, message: &str) {
        if let Some(e) = self.write().get_mut(src) {
            set_phase(e, Phase::Pending, message);
        }
    }

    pub fn error(&self, src: &str, message: &str) {
        if let Some(e) = self.write().get_mut(src) {
            set_phase(e, Phase::Error, message);
        }
    }

    pub fn stopped(&self, src: &str, message: &str) {
        if let Some(e) = self.write().get_mut(src) {
            e.accepted = false;
            set_phase(e, Phase::Stopped, message);
        }
    }

    /// Resolves the configuration a notice or event is about: the named one, or,
    /// when none is named, the only active one (Argo's user servers send plain-text
    /// errors without a name).
    pub fn resolve(&self, src: Option<&str>) -> Result<String, LookupError> {
        let map = self.read();
        match src {
            Some(s) => match map.get(s) {
                None => Err(LookupError::Unknown(s.to_owned())),
                Some(e) if e.phase == Phase::Stopped => Err(LookupError::Stopped(s.to_owned())),
                Some(_) => Ok(s.to_owned()),
            },
            None => {
                let mut active = map.values().filter(|e| e.phase != Phase::Stopped);
                match (active.next(), active.next()) {
                    (Some(only), None) => Ok(only.data.src.clone()),
                    _ => Err(LookupError::Ambiguous),
                }
            }
        }
    }

    /// Checks that an event's `src` is a live configuration. An event from a started
    /// configuration that is still Pending shows it runs, so it becomes Running.
    pub fn admit_event(&self, src: &str) -> Result<(), LookupError> {
        {
            let map = self.read();
            match map.get(src) {
                None => return Err(LookupError::Unknown(src.to_owned())),
                Some(e) if e.phase == Phase::Stopped => {
                    return Err(LookupError::Stopped(src.to_owned()))
                }
                Some(e) if !(e.phase == Phase::Pending && e.accepted) => return Ok(()),
                Some(_) => {}
            }
        }
        if let Some(e) = self.write().get_mut(src) {
            if e.phase == Phase::Pending && e.accepted {
                set_phase(e, Phase::Running, "running (events arriving)");
            }
        }
        Ok(())
    }

    /// A running notice: the configuration is Running. An `id` that names an older
    /// version of the configuration is refused rather than misreported.
    pub fn running(&self, src: &str, id: Option<&str>) -> Result<(), LookupError> {
        let mut map = self.write();
        let e = map
            .get_mut(src)
            .ok_or_else(|| LookupError::Unknown(src.to_owned()))?;
        if e.phase == Phase::Stopped {
            return Err(LookupError::Stopped(src.to_owned()));
        }
        if let Some(given) = id.filter(|i| !i.is_empty()) {
            if given != e.data.id {
                return Err(LookupError::StaleId {
                    src: src.to_owned(),
                    given: given.to_owned(),
                    current: e.data.id.clone(),
                });
            }
        }
        set_phase(e, Phase::Running, "running");
        Ok(())
    }

    pub fn list(&self) -> Vec<ConfigStatus> {
        let mut out: Vec<ConfigStatus> = self
            .read()
            .values()
            .map(|e| ConfigStatus {
                src: e.data.src.clone(),
                id: e.data.id.clone(),
                time_id: e.data.time_id.clone(),
                phase: e.phase,
                message: e.message.clone(),
                since: e.since,
                owner: None,
            })
            .collect();
        out.sort_by(|a, b| a.src.cmp(&b.src));
        out
    }

    /// The phase of `src` here, if it is known here.
    pub fn phase_of(&self, src: &str) -> Option<Phase> {
        self.read().get(src).map(|e| e.phase)
    }

    pub fn count_by_phase(&self) -> [(Phase, i64); 4] {
        let map = self.read();
        Phase::ALL.map(|p| (p, map.values().filter(|e| e.phase == p).count() as i64))
    }
}

/// `since` moves only when the phase changes; the message always reflects the latest.
/// The most characters of a phase's message kept: what a user server says
/// (an error notice, a refusal of `/start`) goes into `/configs` and the logs.
pub const MESSAGE_MAX_CHARS: usize = 2048;

/// `message` cut to [`MESSAGE_MAX_CHARS`], saying how much was cut. A message
/// over by less than that note is left whole, so cutting twice changes nothing.
pub fn clip(message: &str) -> std::borrow::Cow<'_, str> {
    const NOTE: usize = 40;
    if message
        .char_indices()
        .nth(MESSAGE_MAX_CHARS + NOTE)
        .is_none()
    {
        return message.into();
    }
    let end = message
        .char_indices()
        .nth(MESSAGE_MAX_CHARS)
        .map_or(message.len(), |(i, _)| i);
    let rest = message[end..].chars().count();
    format!("{}… ({rest} more characters)", &message[..end]).into()
}

fn set_phase(e: &mut Entry, phase: Phase, message: &str) {
    if e.phase != phase {
        e.phase = phase;
        e.since = OffsetDateTime::now_utc();
    }
    e.message = clip(message).into_owned();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_and_say_so() {
        assert_eq!(clip("short"), "short");
        let exact = "é".repeat(MESSAGE_MAX_CHARS);
        assert_eq!(clip(&exact), exact);
        let long = "é".repeat(MESSAGE_MAX_CHARS + 10);
        assert_eq!(clip(&long), long, "over by less than the note: whole");
        let long = "é".repeat(MESSAGE_MAX_CHARS + 100);
        let cut = clip(&long);
        assert!(cut.starts_with(&exact), "{cut}");
        assert!(cut.ends_with("… (100 more characters)"), "{cut}");
        assert_eq!(clip(&cut), cut, "cut once only");
    }

    fn reg_with(src: &str) -> (Registry, ConfigData) {
        let r = Registry::default();
        let d = ConfigData::new(src, "v");
        r.starting(&d, "starting");
        (r, d)
    }

    #[test]
    fn configdata_serialises_with_contract_names() {
        let d = ConfigData::new("k", "v");
        let v = serde_json::to_value(&d).unwrap();
        for key in ["id", "timeID", "src", "config"] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn running_notice_and_stale_id() {
        let (r, d) = reg_with("a");
        assert_eq!(r.list()[0].phase, Phase::Pending);
        assert!(matches!(
            r.running("a", Some("123")),
            Err(LookupError::StaleId { .. })
        ));
        r.running("a", Some(&d.id)).unwrap();
        assert_eq!(r.list()[0].phase, Phase::Running);
        assert!(matches!(r.running("b", None), Err(LookupError::Unknown(_))));
    }

    #[test]
    fn first_event_of_accepted_start_means_running() {
        let (r, _) = reg_with("a");
        r.admit_event("a").unwrap();
        assert_eq!(r.list()[0].phase, Phase::Pending, "not accepted yet");
        r.start_accepted("a");
        r.admit_event("a").unwrap();
        assert_eq!(r.list()[0].phase, Phase::Running);
        r.stopped("a", "removed");
        assert_eq!(r.admit_event("a"), Err(LookupError::Stopped("a".into())));
        assert_eq!(
            r.admit_event("zzz"),
            Err(LookupError::Unknown("zzz".into()))
        );
    }

    #[test]
    fn resolve_assumes_the_only_configuration() {
        let (r, _) = reg_with("a");
        assert_eq!(r.resolve(None).unwrap(), "a");
        r.starting(&ConfigData::new("b", "v"), "starting");
        assert_eq!(r.resolve(None), Err(LookupError::Ambiguous));
        r.stopped("b", "removed");
        assert_eq!(r.resolve(None).unwrap(), "a");
    }

    #[test]
    fn since_moves_only_on_phase_change() {
        let (r, _) = reg_with("a");
        let t0 = r.list()[0].since;
        r.pending("a", "still pending");
        assert_eq!(r.list()[0].since, t0);
        assert_eq!(r.list()[0].message, "still pending");
    }
}
