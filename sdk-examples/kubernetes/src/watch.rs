//! One configuration's watch: kube's watcher lists the objects, then watches
//! from the list's resourceVersion (with bookmarks, so a resumed watch starts
//! late enough), resumes a watch that ends, lists again on 410 Gone, and backs
//! off on errors. Each batch of what it reports becomes changes against what
//! the configuration knows (an object not known is added, one with a new
//! resourceVersion updated, a known one missing from a relist deleted), and
//! the wanted changes go to the gateway as one `POST /events`; the known
//! state moves on once the gateway took them.

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

/// A change, and what it does to the known state once taken.
struct Step {
    event: Option<Event>,
    after: After,
}

enum After {
    Set(Value),
    Remove(String),
    Nothing,
}

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
        let steps: Vec<Step> = reports
            .into_iter()
            .flat_map(|r| match r {
                Ok(report) => w.steps(report),
                Err(e) => {
                    tracing::warn!(%src, error = %e, "watch failed; resuming");
                    Vec::new()
                }
            })
            .collect();
        if !w.hand_on(&emitter, steps).await {
            return;
        }
    }
}

impl Watch {
    /// What one watcher report means.
    fn steps(&mut self, report: watcher::Event<DynamicObject>) -> Vec<Step> {
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
            watcher::Event::Delete(obj) => vec![self.deleted(as_value(obj))],
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let gone: Vec<Value> = self
                    .known
                    .uids()
                    .filter(|uid| !listed.contains(*uid))
                    .filter_map(|uid| self.known.get(uid).cloned())
                    .collect();
                gone.into_iter().map(|obj| self.deleted(obj)).collect()
            }
        }
    }

    fn applied(&self, obj: Value) -> Option<Step> {
        let (change, old) = match self.known.get(known::uid(&obj)) {
            None => (Change::Add, None),
            Some(old) if known::version(old) == known::version(&obj) => return None,
            Some(old) => (Change::Update, Some(old)),
        };
        Some(Step {
            event: self.event(change, &obj, old),
            after: After::Set(obj),
        })
    }

    fn deleted(&self, obj: Value) -> Step {
        let uid = known::uid(&obj).to_owned();
        let old = self.known.get(&uid);
        Step {
            event: self.event(Change::Delete, &obj, old),
            after: if old.is_some() {
                After::Remove(uid)
            } else {
                After::Nothing
            },
        }
    }

    fn event(&self, change: Change, obj: &Value, old: Option<&Value>) -> Option<Event> {
        change::wanted(&self.spec, change, obj, self.started).then(|| {
            Event::new(change::payload(&self.spec, change, obj, old))
                .with_id(change::id(change, obj))
        })
    }

    /// Hands the wanted changes to the gateway and, once it took them (or
    /// refused one for good: logged, skipped), moves the known state on.
    /// False when the configuration was stopped meanwhile.
    async fn hand_on(&mut self, emitter: &Emitter, steps: Vec<Step>) -> bool {
        let mut afters = Vec::with_capacity(steps.len());
        let mut events = Vec::new();
        for s in steps {
            events.extend(s.event);
            afters.push(s.after);
        }
        for answer in emitter.emit_all(events).await {
            match answer {
                Ok(_) => {}
                Err(EmitError::Stopped) => return false,
                Err(e) => {
                    tracing::error!(src = %emitter.config().src, error = %e, "a change was refused for good; skipped")
                }
            }
        }
        for after in afters {
            match after {
                After::Set(obj) => self.known.set(obj),
                After::Remove(uid) => self.known.remove(&uid),
                After::Nothing => {}
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
