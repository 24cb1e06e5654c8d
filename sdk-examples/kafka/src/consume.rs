//! One configuration's reader: join the group (or take the one partition),
//! read what the broker has in batches of up to a thousand, hand each batch to
//! the gateway as one `POST /events`, and store each partition's offset only
//! once the gateway took the message and every earlier one of its partition.
//! librdkafka commits the stored offsets every second, on a rebalance and on
//! close; a crash between taking and committing reads messages again, and the
//! gateway knows them by their ids (`TOPIC/PARTITION/OFFSET`): each reaches
//! the sensors once.

use std::collections::{BTreeMap, VecDeque};

use futures::{FutureExt as _, StreamExt as _};
use gateway_sdk::{CancellationToken, EmitError, Emitter, Event};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::{self, Alarms};
use crate::message::{self, Place};
use crate::pace::Pace;
use crate::spec::{Reading, Spec};

/// Most events in one batch (the processor-client's default bound).
const MOST: u64 = 1000;
/// Batches handed to the gateway and not yet answered.
const IN_FLIGHT: usize = 2;

/// What the gateway answered for one event.
type Answer = Result<String, EmitError>;

/// The oldest batch's answers, once they are there (never, with none).
async fn oldest(
    inflight: &mut VecDeque<(JoinHandle<Vec<Answer>>, Vec<Place>)>,
) -> Result<Vec<Answer>, tokio::task::JoinError> {
    match inflight.front_mut() {
        Some((sending, _)) => sending.await,
        None => std::future::pending().await,
    }
}

/// Why reading ended.
enum Ended {
    Stopped,
    /// The broker refused the client: the configuration is in Error.
    Refused(String),
}

/// Runs the configuration until `stop` is cancelled or the broker refuses it.
pub async fn run(spec: Spec, emitter: Emitter, stop: CancellationToken) {
    let src = emitter.config().src.clone();
    let (consumer, alarms) = match client::consumer(&spec, &src) {
        Ok(c) => c,
        Err(why) => {
            let _ = emitter.error(&why).await;
            return;
        }
    };
    let consumer = std::sync::Arc::new(consumer);
    let ended = match begin(&consumer, &spec).await {
        Err(why) => Ended::Refused(why),
        Ok(()) => {
            tracing::info!(%src, topic = %spec.topic, brokers = %spec.brokers, "reading");
            if emitter.running().await.is_err() {
                Ended::Stopped
            } else {
                let mut reader = Reader {
                    spec: &spec,
                    emitter: &emitter,
                    consumer: &consumer,
                };
                reader.read(alarms, &stop).await
            }
        }
    };
    if let Ended::Refused(why) = ended {
        tracing::warn!(%src, brokers = %spec.brokers, %why, "the Kafka configuration cannot run");
        let _ = emitter.error(&why).await;
    }
    close(consumer, &src).await;
}

/// Subscribes to the topic as a member of the group, or assigns the one
/// partition from its committed offset (else from the newest message,
/// resolved now, so that nothing produced after Running is skipped).
async fn begin(
    consumer: &std::sync::Arc<StreamConsumer<Alarms>>,
    spec: &Spec,
) -> Result<(), String> {
    match spec.reading {
        Reading::Group { .. } => consumer
            .subscribe(&[&spec.topic])
            .map_err(|e| format!("cannot subscribe to topic {:?}: {e}", spec.topic)),
        Reading::Partition(p) => {
            let c = consumer.clone();
            let topic = spec.topic.clone();
            tokio::task::spawn_blocking(move || assign_one(&c, &topic, p))
                .await
                .map_err(|e| format!("assigning partition {p}: {e}"))?
        }
    }
}

fn assign_one(consumer: &StreamConsumer<Alarms>, topic: &str, p: i32) -> Result<(), String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let committed = consumer
        .committed_offsets(tpl.clone(), client::LOOK_TIMEOUT)
        .map_err(|e| format!("reading the committed offset of {topic}/{p}: {e}"))?;
    let start = match committed.find_partition(topic, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Offset::Offset(o),
        _ => {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, client::LOOK_TIMEOUT)
                .map_err(|e| format!("reading the newest offset of {topic}/{p}: {e}"))?;
            Offset::Offset(high)
        }
    };
    tpl.set_partition_offset(topic, p, start)
        .map_err(|e| format!("partition {p}: {e}"))?;
    consumer
        .assign(&tpl)
        .map_err(|e| format!("cannot read partition {p} of topic {topic:?}: {e}"))
}

struct Reader<'a> {
    spec: &'a Spec,
    emitter: &'a Emitter,
    consumer: &'a StreamConsumer<Alarms>,
}

impl Reader<'_> {
    /// Reads batches and hands each to the gateway on a task of its own, at
    /// most [`IN_FLIGHT`] at once (the SDK sends them one after another, in
    /// order), so the next batch is read and encoded while the last is
    /// travelling; each batch's offsets are stored once it is answered, in
    /// the order the batches were read.
    async fn read(
        &mut self,
        mut alarms: mpsc::UnboundedReceiver<String>,
        stop: &CancellationToken,
    ) -> Ended {
        let mut pace = Pace::new(self.spec.limit_per_second);
        let mut stream = self.consumer.stream();
        let mut troubles = 0u64;
        let mut inflight: VecDeque<(JoinHandle<Vec<Answer>>, Vec<Place>)> = VecDeque::new();
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return Ended::Stopped,
                Some(why) = alarms.recv() => return Ended::Refused(why),
                done = oldest(&mut inflight) => {
                    let Some((_, places)) = inflight.pop_front() else { continue };
                    // Stopping, or the task is gone: nothing after it may be
                    // stored.
                    match done.map(|answers| self.settle(answers, places)) {
                        Ok(true) => continue,
                        _ => return Ended::Stopped,
                    }
                }
                m = stream.next(), if inflight.len() < IN_FLIGHT => m,
            };
            // Paced after the first message (reading it is cancel-safe;
            // waiting for the pace here is not cancelled).
            let room = pace.take(MOST).await;
            let mut batch: Vec<(Event, Place)> = Vec::new();
            let mut next = first;
            loop {
                match next {
                    Some(Ok(m)) => batch.push(message::event(&m, self.spec.json_body)),
                    Some(Err(e)) => {
                        // Transport trouble, a partition's end, a rebalance:
                        // librdkafka retries by itself.
                        troubles += 1;
                        if troubles.is_power_of_two() {
                            tracing::warn!(src = %self.emitter.config().src, error = %e, troubles, "Kafka consumer");
                        }
                    }
                    None => return Ended::Stopped,
                }
                if batch.len() as u64 >= room {
                    break;
                }
                match stream.next().now_or_never() {
                    Some(m) => next = m,
                    None => break,
                }
            }
            pace.refund(room.saturating_sub(batch.len() as u64));
            if batch.is_empty() {
                continue;
            }
            let (events, places): (Vec<Event>, Vec<Place>) = batch.into_iter().unzip();
            // Queued on the SDK's pile here, in read order; only the waiting
            // for the answers runs on the task.
            let sending = tokio::spawn(self.emitter.emit_all(events));
            inflight.push_back((sending, places));
        }
    }

    /// Stores the offsets the gateway took of one batch; false once the
    /// configuration is stopping.
    fn settle(&self, answers: Vec<Answer>, places: Vec<Place>) -> bool {
        let mut stored: BTreeMap<i32, i64> = BTreeMap::new();
        let mut going = true;
        for (answer, place) in answers.into_iter().zip(places) {
            match answer {
                Ok(_) => {}
                // The gateway will never take this message (too large for
                // it): skipped, said, so one message cannot hold its
                // partition for ever.
                Err(EmitError::Refused { status, body }) => {
                    tracing::warn!(src = %self.emitter.config().src, topic = %self.spec.topic,
                        partition = place.partition, offset = place.offset, status, %body,
                        "the gateway refused a message; skipping it");
                }
                Err(EmitError::Stopped) => {
                    going = false;
                    break;
                }
            }
            stored.insert(place.partition, place.offset);
        }
        tracing::debug!(src = %self.emitter.config().src, ?stored, "taken up to");
        for (partition, offset) in stored {
            // Fails only for a partition this reader no longer owns (a
            // rebalance took it): its new owner reads from the last commit.
            if let Err(e) = self
                .consumer
                .store_offset(&self.spec.topic, partition, offset)
            {
                tracing::debug!(partition, offset, error = %e, "offset not stored");
            }
        }
        going
    }
}

/// Commits what was taken in the partitions still assigned, then closes the
/// consumer (it leaves its group), off the async threads: both block.
async fn close(consumer: std::sync::Arc<StreamConsumer<Alarms>>, src: &str) {
    let src = src.to_owned();
    let closing = tokio::task::spawn_blocking(move || {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!(%src, "offsets committed"),
            Err(e) => tracing::debug!(%src, error = %e, "no offsets to commit"),
        }
        drop(consumer);
    });
    let _ = closing.await;
}
