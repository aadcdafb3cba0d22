//! A consumer of the sink's broker for the lag run: it receives every message the sink
//! delivers, as an application would, and records the time from the commit time in the
//! envelope to the moment the message reached it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outflow_core::{Error, Timestamp};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// `(commit time, lag)` in microseconds, one per message received.
type Samples = Arc<Mutex<Vec<(i64, i64)>>>;

/// A running consumer; [`stop`](Receipts::stop) ends it (dropping it aborts it).
pub(crate) struct Receipts {
    samples: Samples,
    /// Messages whose body had no readable `source.commit_time`.
    unreadable: Arc<Mutex<u64>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Receipts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receipts {
    fn start<F>(
        consume: impl FnOnce(Samples, Arc<Mutex<u64>>, oneshot::Receiver<()>) -> F,
    ) -> Receipts
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let samples = Samples::default();
        let unreadable = Arc::new(Mutex::new(0));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(consume(
            Arc::clone(&samples),
            Arc::clone(&unreadable),
            stopped,
        ));
        Receipts {
            samples,
            unreadable,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the consumer and waits until it closed its connection: a Kafka consumer
    /// must be gone before the run deletes its topics (librdkafka crashed on the
    /// metadata of a topic deleted under a live consumer).
    pub(crate) async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            let _ = (&mut self.task).await;
        }
    }

    /// Waits until `expected` messages were received or `limit` passed; returns how many
    /// arrived.
    pub(crate) async fn wait_for(&self, expected: usize, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let received = self.received();
            if received >= expected || tokio::time::Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn received(&self) -> usize {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let unreadable = *self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
        samples.len() + unreadable as usize
    }

    /// Lags in microseconds of the messages committed at or after `from` (Unix
    /// microseconds); an error when a message had no readable commit time.
    pub(crate) fn lags_after(&self, from: i64) -> Result<Vec<i64>, Error> {
        let unreadable = *self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
        if unreadable > 0 {
            return Err(Error::fatal(format!(
                "{unreadable} received messages had no readable source.commit_time; the lag \
                 run needs the envelope format"
            )));
        }
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        Ok(samples
            .iter()
            .filter(|(commit, _)| *commit >= from)
            .map(|(_, lag)| *lag)
            .collect())
    }
}

/// Records one received envelope body.
fn record(samples: &Samples, unreadable: &Arc<Mutex<u64>>, body: &[u8]) {
    let now = Timestamp::now().unix_micros();
    let commit = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/source/commit_time")
                .and_then(|t| t.as_str())
                .and_then(Timestamp::parse_rfc3339)
        });
    match commit {
        Some(commit) => samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((commit.unix_micros(), now - commit.unix_micros())),
        None => *unreadable.lock().unwrap_or_else(|p| p.into_inner()) += 1,
    }
}

/// Subscribes to `subject` (core NATS: a JetStream publish reaches the stream and every
/// matching subscriber alike) and returns once the server has registered the
/// subscription.
pub(crate) async fn nats(url: &str, subject: String) -> Result<Receipts, Error> {
    use futures::StreamExt;
    let client = async_nats::connect(url).await.map_err(|e| {
        Error::fatal(format!("the lag consumer cannot connect to {url}")).with_source(e)
    })?;
    let mut sub = client.subscribe(subject.clone()).await.map_err(|e| {
        Error::fatal(format!("the lag consumer cannot subscribe to {subject}")).with_source(e)
    })?;
    // A request answered by the server on the same connection: the SUB before it was
    // handled by then (a flush only writes it). The answer itself does not matter.
    let _ = client
        .request("$JS.API.INFO", "".into())
        .await
        .map_err(|e| Error::fatal("the lag consumer's first request failed").with_source(e))?;
    Ok(Receipts::start(
        |samples, unreadable, mut stopped| async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    msg = sub.next() => match msg {
                        Some(msg) => record(&samples, &unreadable, &msg.payload),
                        None => break,
                    },
                }
            }
            drop(sub);
            drop(client);
        },
    ))
}

/// Consumes partition 0 of each of `topics` (the harness creates them with one) from the
/// beginning, assigned directly (no group to join), fetching without waiting for more
/// data than there is.
#[cfg(feature = "kafka")]
pub(crate) async fn kafka(
    brokers: &str,
    topics: &[String],
    group: &str,
) -> Result<Receipts, Error> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        .create()
        .map_err(|e| Error::fatal("cannot create the lag consumer").with_source(e))?;
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        partitions
            .add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| Error::fatal(format!("cannot assign {topic}")).with_source(e))?;
    }
    consumer.assign(&partitions).map_err(|e| {
        Error::fatal(format!("the lag consumer cannot read {topics:?}")).with_source(e)
    })?;
    Ok(Receipts::start(
        |samples, unreadable, mut stopped| async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    msg = consumer.recv() => match msg {
                        Ok(msg) => record(&samples, &unreadable, msg.payload().unwrap_or_default()),
                        Err(e) => tracing::warn!(error = %e, "the lag consumer's fetch failed"),
                    },
                }
            }
            drop(consumer);
        },
    ))
}
