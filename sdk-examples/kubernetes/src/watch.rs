//! One configuration's watch: kube's watcher lists the objects, then watches
//! from the list's resourceVersion (with bookmarks, so a resumed watch starts
//! late enough), resumes a watch that ends, lists again on 410 Gone, and backs
//! off on errors. Each report becomes changes against what the configuration
//! knows (an object not known is added, one with a new resourceVersion
//! updated, a known one missing from a relist deleted), and a batch of
//! reports' wanted changes goes to the gateway as one `POST /events`; the
//! state file moves on once the gateway took them.

use std::collections::HashSet;
use std::path::PathBuf;

use futures::StreamExt as _;
use gateway_sdk::{CancellationToken, EmitError, Emitter, Event};
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt as _;
use kube::Client;
use serde_json::Value;
use time::OffsetDateTime;

use crate::change;
use crate::client;
use crate::known::{self, Known};
use crate::spec::{Change, Spec};

/// Most watcher reports turned into one request.
const BATCH: usize = 500;

/// What one configuration's watch keeps between reports.
struct Watch {
    spec: Spec,
    known: Known,
    started: OffsetDateTime,
    /// The uids listed since a relist began, until it is done.
    relisting: Option<HashSet<String>>,
}

pub async fn run(
    spec: Spec,
    client: Client,
    state_dir: Option<PathBuf>,
    emitter: Emitter,
    stop: CancellationToken,
) {
    let src = emitter.config().src.clone();
    let mut config = watcher::Config::default();
    if !spec.label_selector.is_empty() {
        config = config.labels(&spec.label_selector);
    }
    if !spec.field_selector.is_empty() {
        config = config.fields(&spec.field_selector);
    }
    let stream = watcher(client::api(client, &spec), config)
        .default_backoff()
        .ready_chunks(BATCH);
    futures::pin_mut!(stream);
    let mut w = Watch {
        known: Known::load(state_dir.as_deref(), &src),
        spec,
        started: OffsetDateTime::now_utc(),
        relisting: None,
    };
    tracing::info!(%src, watching = %w.spec.describe(), "watching");
    if emitter.running().await.is_err() {
        return;
    }
    loop {
        let reports = tokio::select! {
            _ = stop.cancelled() => return,
            r = stream.next() => match r { Some(r) => r, None => return },
        };
        let events: Vec<Event> = reports
            .into_iter()
            .flat_map(|r| match r {
                Ok(report) => w.changes(report),
                Err(e) => {
                    tracing::warn!(%src, error = %e, "watch failed; resuming");
                    Vec::new()
                }
            })
            .collect();
        if !w.hand_on(&emitter, events).await {
            return;
        }
    }
}

impl Watch {
    /// The events one watcher report makes, the known state moved on with
    /// it (in memory: the state file is written once the gateway took them).
    fn changes(&mut self, report: watcher::Event<DynamicObject>) -> Vec<Event> {
        match report {
            watcher::Event::Init => {
                self.relisting = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                let obj = as_value(obj);
                if let Some(listed) = &mut self.relisting {
                    listed.insert(known::uid(&obj).to_owned());
                }
                self.applied(obj).into_iter().collect()
            }
            watcher::Event::Delete(obj) => self.deleted(as_value(obj)).into_iter().collect(),
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let gone: Vec<Value> = self
                    .known
                    .uids()
                    .filter(|uid| !listed.contains(*uid))
                    .filter_map(|uid| self.known.get(uid).cloned())
                    .collect();
                gone.into_iter()
                    .filter_map(|obj| self.deleted(obj))
                    .collect()
            }
        }
    }

    fn applied(&mut self, obj: Value) -> Option<Event> {
        let event = match self.known.get(known::uid(&obj)) {
            None => self.event(Change::Add, &obj, None),
            Some(old) if known::version(old) == known::version(&obj) => return None,
            Some(old) => self.event(Change::Update, &obj, Some(old)),
        };
        self.known.set(obj);
        event
    }

    fn deleted(&mut self, obj: Value) -> Option<Event> {
        let old = self.known.remove(known::uid(&obj));
        self.event(Change::Delete, &obj, old.as_ref())
    }

    fn event(&self, change: Change, obj: &Value, old: Option<&Value>) -> Option<Event> {
        change::wanted(&self.spec, change, obj, self.started).then(|| {
            Event::new(change::payload(&self.spec, change, obj, old))
                .with_id(change::id(change, obj))
        })
    }

    /// Hands the events to the gateway and, once it took them (or refused
    /// one for good: logged, skipped), writes the state file. False when the
    /// configuration was stopped meanwhile (the file keeps the state before
    /// these changes, so a restart reports them again, by the same ids).
    async fn hand_on(&mut self, emitter: &Emitter, events: Vec<Event>) -> bool {
        for answer in emitter.emit_all(events).await {
            match answer {
                Ok(_) => {}
                Err(EmitError::Stopped) => return false,
                Err(e) => {
                    tracing::error!(src = %emitter.config().src, error = %e, "a change was refused for good; skipped")
                }
            }
        }
        if let Err(e) = self.known.save() {
            tracing::warn!(src = %emitter.config().src, error = %e, "cannot write the state file; a restart reports changes again");
        }
        true
    }
}

fn as_value(obj: DynamicObject) -> Value {
    serde_json::to_value(obj).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": rv}
        }))
        .expect("object")
    }

    fn watch() -> Watch {
        Watch {
            spec: Spec::parse("version: v1\nresource: pods").expect("spec"),
            known: Known::load(None, "pods"),
            started: OffsetDateTime::now_utc(),
            relisting: None,
        }
    }

    /// What the events say: (type, name, oldBody's version).
    fn read(events: &[Event]) -> Vec<(String, String, String)> {
        events
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_slice(&e.payload).expect("json");
                let s = |x: &Value| x.as_str().unwrap_or("").to_owned();
                (
                    s(&v["type"]),
                    s(&v["body"]["metadata"]["name"]),
                    s(&v["oldBody"]["metadata"]["resourceVersion"]),
                )
            })
            .collect()
    }

    #[test]
    fn changes_to_one_object_within_one_batch_follow_each_other() {
        let mut w = watch();
        let reports = [
            watcher::Event::Apply(obj("a", "1")),
            watcher::Event::Apply(obj("a", "2")),
            watcher::Event::Apply(obj("a", "2")),
            watcher::Event::Delete(obj("a", "3")),
        ];
        let events: Vec<Event> = reports.into_iter().flat_map(|r| w.changes(r)).collect();
        let t = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            read(&events),
            vec![
                t("ADD", "a", ""),
                t("UPDATE", "a", "1"),
                t("DELETE", "a", "")
            ]
        );
        assert_eq!(w.known.uids().count(), 0);
    }

    #[test]
    fn a_relist_reports_what_it_no_longer_lists_as_deleted() {
        let mut w = watch();
        for r in [
            watcher::Event::Apply(obj("a", "1")),
            watcher::Event::Apply(obj("b", "1")),
        ] {
            w.changes(r);
        }
        let reports = [
            watcher::Event::Init,
            watcher::Event::InitApply(obj("a", "1")),
            watcher::Event::InitApply(obj("c", "4")),
            watcher::Event::InitDone,
        ];
        let events: Vec<Event> = reports.into_iter().flat_map(|r| w.changes(r)).collect();
        let names: Vec<(String, String)> =
            read(&events).into_iter().map(|(t, n, _)| (t, n)).collect();
        assert_eq!(
            names,
            vec![("ADD".into(), "c".into()), ("DELETE".into(), "b".into())]
        );
        assert_eq!(events[1].id.as_deref(), Some("uid-b/deleted"));
    }
}
