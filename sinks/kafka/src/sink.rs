//! The Kafka sink: an idempotent librdkafka producer whose delivery reports drive acks.
//!
//! What it relies on from librdkafka (see librdkafka's INTRODUCTION.md, "Idempotent
//! Producer" and "Transactional Producer"):
//!
//! - `produce()` appends to a per-partition queue in call order; with
//!   `enable.idempotence=true` the producer numbers every message per partition and
//!   retries without reordering or duplicating, so messages of one key (one partition)
//!   are written in the order they were enqueued.
//! - Every enqueued message gets exactly one delivery report: success once all in-sync
//!   replicas have it (`acks=all`), or failure when the error is permanent or
//!   `message.timeout.ms` ran out. The sink acknowledges a batch only when every report is
//!   in and no message failed.
//! - A full local queue (`QueueFull`) rejects the enqueue without side effects; the sink
//!   waits and enqueues the same message again, so nothing is skipped and order holds.
//! - A transactional producer must wrap every produce in `begin_transaction` /
//!   `commit_transaction`; an abortable error fails the whole transaction.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use outflow_core::{
    BatchOutcome, Envelope, Error, ErrorKind, EventSink, Format, HeaderStyle, Pending, Rejection,
    Result, Template,
};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{debug, error, info, trace, warn};

use crate::config::KafkaConfig;
use crate::error::{client_error, message_error, missing_topic, MessageInfo};

/// librdkafka's default `message.max.bytes`, used in error messages when the key is unset.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: u64 = 1_000_000;
/// How long to wait before enqueueing again when the producer's local queue is full: long
/// enough for a batch to leave, short enough not to add visible latency.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);
/// How often a retriable commit error is retried before the transaction is aborted.
const COMMIT_ATTEMPTS: usize = 3;
/// The longest Kafka topic name.
const MAX_TOPIC_LEN: usize = 249;

/// Checks a topic name against Kafka's rules, saying what is wrong.
pub(crate) fn check_topic_name(topic: &str) -> std::result::Result<(), String> {
    if topic.is_empty() {
        return Err("the topic name is empty".into());
    }
    if topic == "." || topic == ".." {
        return Err(format!("{topic:?} is not a valid topic name"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "topic {topic:?} is {} characters long; Kafka allows at most {MAX_TOPIC_LEN}",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic {topic:?} contains {c:?}; Kafka topic names use only a-z, A-Z, 0-9, '.', \
             '_' and '-'"
        ));
    }
    Ok(())
}

/// Forwards librdkafka's logs and client errors to tracing.
struct SinkContext {
    pipeline: String,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let pipeline = &self.pipeline;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(%pipeline, fac, message, "librdkafka"),
            RDKafkaLogLevel::Warning => warn!(%pipeline, fac, message, "librdkafka"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                debug!(%pipeline, fac, message, "librdkafka")
            }
            RDKafkaLogLevel::Debug => trace!(%pipeline, fac, message, "librdkafka"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(pipeline = %self.pipeline, error = %error, reason, "kafka client error");
    }
}

/// The answer of a topic check, cached per rendered topic.
#[derive(Clone)]
enum TopicState {
    /// The topic exists, or the broker may create it.
    Ready,
    /// Events for this topic can never be delivered; the reason.
    Invalid(String),
}

/// Whether a transaction is open; guarded by the lock that also fixes enqueue order.
#[derive(Default)]
struct Order {
    open_transaction: bool,
}

/// A message ready to enqueue.
struct Prepared {
    topic: String,
    key: String,
    body: Vec<u8>,
    headers: OwnedHeaders,
    size: usize,
}

/// What waiting for a batch's delivery reports found.
struct Collected {
    /// Events refused for good, at enqueue or by the broker.
    rejected: Vec<Rejection>,
    /// Event ids of `rejected` entries that came from delivery reports (they abort a
    /// transaction).
    refused_by_broker: Vec<(String, String)>,
    /// The most severe non-per-event failure, if any.
    failure: Option<Error>,
}

/// The producer and how many times it was replaced after a fatal error.
#[derive(Clone)]
struct Handle {
    generation: u64,
    producer: FutureProducer<SinkContext>,
}

struct Inner {
    handle: RwLock<Handle>,
    client_config: ClientConfig,
    pipeline: String,
    topic: Template,
    key: Template,
    format: Format,
    limit: u64,
    auto_create: bool,
    metadata_timeout: Duration,
    flush_timeout: Duration,
    transactional: bool,
    topics: StdMutex<HashMap<String, TopicState>>,
    order: Arc<Mutex<Order>>,
    /// Transactional mode: events the broker refused in an aborted transaction, by id, with
    /// the reason; the retried batch reports them as rejected instead of sending them.
    refused: StdMutex<HashMap<String, String>>,
}

/// The Kafka sink. See the crate documentation for its guarantees.
pub struct KafkaSink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("pipeline", &self.inner.pipeline)
            .field("topic", &self.inner.topic.as_str())
            .field("transactional", &self.inner.transactional)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates the producer. In transactional mode it also initialises transactions
    /// (which needs the brokers); with a constant topic it checks that the topic exists.
    ///
    /// Errors: fatal for bad configuration, a missing topic or failed authorization;
    /// transient when the brokers cannot be reached.
    pub async fn connect(config: KafkaConfig, pipeline: &str) -> Result<KafkaSink> {
        let mut client_config = config.producer_config()?;
        if !config.properties.contains_key("client.id") {
            client_config.set("client.id", format!("outflow-{pipeline}"));
        }
        let producer = create_producer(&client_config, pipeline)?;
        let metadata_timeout = Duration::from_millis(config.metadata_timeout_ms);
        let inner = Arc::new(Inner {
            handle: RwLock::new(Handle {
                generation: 0,
                producer,
            }),
            client_config,
            pipeline: pipeline.to_string(),
            topic: config.topic.clone(),
            key: config.key.clone(),
            format: config.format,
            limit: config
                .message_max_bytes
                .unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES),
            auto_create: config.allow_auto_create_topics,
            metadata_timeout,
            flush_timeout: Duration::from_millis(config.message_timeout_ms),
            transactional: config.transactional_id.is_some(),
            topics: StdMutex::new(HashMap::new()),
            order: Arc::new(Mutex::new(Order::default())),
            refused: StdMutex::new(HashMap::new()),
        });
        if let Some(id) = &config.transactional_id {
            let producer = inner.handle().producer;
            let timeout = metadata_timeout.max(Duration::from_millis(config.message_timeout_ms));
            blocking(move || producer.init_transactions(timeout))
                .await?
                .map_err(|e| client_error(&e, "initialising transactions"))?;
            info!(pipeline, transactional_id = %id, "kafka transactions initialised");
        }
        if config.topic.is_constant() {
            if let TopicState::Invalid(reason) = inner.check_topic(config.topic.as_str()).await? {
                return Err(Error::fatal(format!("kafka sink: `topic`: {reason}")));
            }
        }
        info!(
            pipeline,
            brokers = %config.brokers.join(","),
            topic = %config.topic,
            format = %config.format,
            "kafka sink ready"
        );
        Ok(KafkaSink { inner })
    }
}

fn create_producer(config: &ClientConfig, pipeline: &str) -> Result<FutureProducer<SinkContext>> {
    let context = SinkContext {
        pipeline: pipeline.to_string(),
    };
    config.create_with_context(context).map_err(|e| {
        Error::fatal(format!(
            "kafka sink: cannot create the producer: {e}; fix the sink configuration"
        ))
    })
}

/// Runs blocking librdkafka calls (metadata, transactions, flush) off the async threads.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Error::transient("kafka: a blocking producer call was cancelled").with_source(e)
    })
}

impl Inner {
    fn handle(&self) -> Handle {
        self.handle
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// After a fatal error of the idempotent producer (it can no longer guarantee order,
    /// e.g. after a sequence gap or being fenced), replaces the producer and turns the
    /// error into a transient one, so the pipeline sends the batch again through the new
    /// producer. Every message still queued in the failed producer fails with it, so no
    /// later batch can overtake the retried one. Transactional producers are not replaced:
    /// their fatal errors (fencing) need an operator.
    fn recover(&self, used: &Handle, cause: &KafkaError, err: Error) -> Error {
        if self.transactional || err.kind() != ErrorKind::Fatal {
            return err;
        }
        // A broker may also fence an idempotent producer's epoch (tansu does after a
        // delivery timeout); a new producer gets a new id and epoch.
        let fenced = matches!(
            cause.rdkafka_error_code(),
            Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        );
        let (code, reason) = match used.producer.client().fatal_error() {
            Some(fatal) => fatal,
            None if fenced => (RDKafkaErrorCode::ProducerFenced, cause.to_string()),
            None => return err,
        };
        let mut slot = self
            .handle
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.generation == used.generation {
            match create_producer(&self.client_config, &self.pipeline) {
                Ok(producer) => {
                    warn!(
                        pipeline = %self.pipeline,
                        error = %code,
                        reason = %reason,
                        "kafka producer failed; replaced by a new one"
                    );
                    // Fail whatever the old producer still holds, so none of it is written
                    // after the retried batch.
                    used.producer
                        .purge(PurgeConfig::default().queue().inflight());
                    let old = std::mem::replace(
                        &mut *slot,
                        Handle {
                            generation: used.generation + 1,
                            producer,
                        },
                    );
                    // Dropping a producer waits for its threads: not on an async thread.
                    tokio::task::spawn_blocking(move || drop(old));
                }
                Err(create) => return create,
            }
        }
        Error::transient(format!(
            "kafka: the idempotent producer failed ({code}: {reason}); a new producer \
             replaces it and the batch is sent again"
        ))
        .with_source(err)
    }

    fn lock_topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, TopicState>> {
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_refused(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks a topic before the first send to it: a valid name, and existing (or
    /// creatable by the broker). The answer is cached; a missing topic is fatal.
    async fn check_topic(&self, topic: &str) -> Result<TopicState> {
        if let Some(state) = self.lock_topics().get(topic) {
            return Ok(state.clone());
        }
        let state = match check_topic_name(topic) {
            Err(reason) => TopicState::Invalid(format!("kafka: {reason}")),
            Ok(()) => {
                let producer = self.handle().producer;
                let name = topic.to_string();
                let timeout = self.metadata_timeout;
                let metadata = blocking(move || {
                    producer
                        .client()
                        .fetch_metadata(Some(&name), timeout)
                        .map(|m| {
                            m.topics()
                                .iter()
                                .find(|t| t.name() == name)
                                .map(|t| (t.error(), t.partitions().len()))
                        })
                })
                .await?
                .map_err(|e| {
                    let err = client_error(&e, &format!("fetching metadata for topic {topic:?}"));
                    if err.kind() == ErrorKind::Transient {
                        Error::transient(format!(
                            "kafka: cannot fetch metadata for topic {topic:?} within {} ms; \
                             are the brokers up and reachable?",
                            timeout.as_millis()
                        ))
                        .with_source(e)
                    } else {
                        err
                    }
                })?;
                self.topic_state(topic, metadata)?
            }
        };
        self.lock_topics().insert(topic.to_string(), state.clone());
        Ok(state)
    }

    fn topic_state(
        &self,
        topic: &str,
        metadata: Option<(Option<rdkafka::types::RDKafkaRespErr>, usize)>,
    ) -> Result<TopicState> {
        let Some((error, partitions)) = metadata else {
            return self.absent_topic(topic);
        };
        match error.map(RDKafkaErrorCode::from) {
            None if partitions > 0 => {
                debug!(pipeline = %self.pipeline, topic, partitions, "kafka topic found");
                Ok(TopicState::Ready)
            }
            None => self.absent_topic(topic),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                self.absent_topic(topic)
            }
            Some(RDKafkaErrorCode::LeaderNotAvailable) => Ok(TopicState::Ready),
            Some(RDKafkaErrorCode::InvalidTopic) => Ok(TopicState::Invalid(format!(
                "kafka: the broker says topic {topic:?} is not a valid topic name"
            ))),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Err(Error::fatal(format!(
                "kafka: not authorized to describe topic {topic:?}; grant the sink's \
                 principal WRITE and DESCRIBE on it"
            ))),
            Some(code) => Err(Error::transient(format!(
                "kafka: metadata for topic {topic:?} has error {code}"
            ))),
        }
    }

    fn absent_topic(&self, topic: &str) -> Result<TopicState> {
        if self.auto_create {
            info!(
                pipeline = %self.pipeline,
                topic,
                "kafka topic missing; the broker may create it (allow_auto_create_topics)"
            );
            Ok(TopicState::Ready)
        } else {
            Err(missing_topic(topic, false))
        }
    }

    fn prepare(&self, event: &Envelope, topic: String) -> Prepared {
        let encoded = self.format.encode(event, HeaderStyle::Underscore);
        let key = self.key.render(event);
        let mut size = key.len() + encoded.body.len();
        let mut headers = OwnedHeaders::new_with_capacity(encoded.headers.len() + 2);
        for (name, value) in &encoded.headers {
            if name == "id" || name == "content-type" {
                continue;
            }
            size += name.len() + value.len();
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        size += "id".len() + event.id.len() + "content-type".len() + encoded.content_type.len();
        headers = headers
            .insert(Header {
                key: "id",
                value: Some(event.id.as_bytes()),
            })
            .insert(Header {
                key: "content-type",
                value: Some(encoded.content_type.as_bytes()),
            });
        Prepared {
            topic,
            key,
            body: encoded.body,
            headers,
            size,
        }
    }

    fn info<'a>(&self, topic: &'a str, size: usize) -> MessageInfo<'a> {
        MessageInfo {
            topic,
            size,
            limit: self.limit,
            auto_create: self.auto_create,
        }
    }

    /// Enqueues one message, waiting while the local queue is full. The caller holds the
    /// order lock, so messages are enqueued in call order.
    async fn enqueue(
        &self,
        handle: &Handle,
        message: Prepared,
    ) -> std::result::Result<DeliveryFuture, Error> {
        let Prepared {
            topic,
            key,
            body,
            headers,
            size,
        } = message;
        let mut record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&body)
            .headers(headers);
        let mut waited = false;
        loop {
            match handle.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if !waited {
                        debug!(pipeline = %self.pipeline, "kafka producer queue full; waiting");
                        waited = true;
                    }
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((err, _)) => {
                    let mapped = message_error(&err, &self.info(&topic, size));
                    return Err(self.recover(handle, &err, mapped));
                }
            }
        }
    }

    /// Waits for every delivery report of a batch.
    async fn collect(
        &self,
        handle: &Handle,
        batch: &[Envelope],
        deliveries: Vec<(usize, DeliveryFuture, usize)>,
        mut rejected: Vec<Rejection>,
    ) -> Collected {
        let mut refused_by_broker = Vec::new();
        let mut failure: Option<Error> = None;
        for (index, delivery, size) in deliveries {
            let err = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((err, message))) => {
                    let topic = rdkafka::Message::topic(&message).to_string();
                    self.recover(handle, &err, message_error(&err, &self.info(&topic, size)))
                }
                Err(_) => Error::transient(
                    "kafka: the producer was closed before the delivery report arrived",
                ),
            };
            if err.kind() == ErrorKind::PerEvent {
                trace!(pipeline = %self.pipeline, index, error = %err, "kafka event refused");
                if let Some(event) = batch.get(index) {
                    refused_by_broker.push((event.id.clone(), err.to_string()));
                }
                rejected.push(Rejection { index, error: err });
            } else if failure
                .as_ref()
                .is_none_or(|f| f.kind() != ErrorKind::Fatal && err.kind() == ErrorKind::Fatal)
            {
                failure = Some(err);
            }
        }
        rejected.sort_by_key(|r| r.index);
        Collected {
            rejected,
            refused_by_broker,
            failure,
        }
    }

    /// Aborts the open transaction, if any.
    async fn abort_open(&self, order: &mut Order) -> Result<()> {
        if !order.open_transaction {
            return Ok(());
        }
        let producer = self.handle().producer;
        let timeout = self.flush_timeout;
        blocking(move || producer.abort_transaction(timeout))
            .await?
            .map_err(|e| client_error(&e, "aborting a transaction"))?;
        order.open_transaction = false;
        debug!(pipeline = %self.pipeline, "kafka transaction aborted");
        Ok(())
    }

    async fn begin(&self, order: &mut Order) -> Result<()> {
        self.abort_open(order).await?;
        self.handle()
            .producer
            .begin_transaction()
            .map_err(|e| client_error(&e, "beginning a transaction"))?;
        order.open_transaction = true;
        Ok(())
    }

    /// Commits the open transaction; on failure aborts it and returns the error
    /// (transient unless the producer failed for good).
    async fn commit(&self, order: &mut Order) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let producer = self.handle().producer;
            let timeout = self.flush_timeout;
            let result = blocking(move || producer.commit_transaction(timeout)).await?;
            let err = match result {
                Ok(()) => {
                    order.open_transaction = false;
                    return Ok(());
                }
                Err(err) => err,
            };
            let retriable = matches!(&err, KafkaError::Transaction(t) if t.is_retriable());
            let mapped = client_error(&err, "committing a transaction");
            if mapped.kind() == ErrorKind::Fatal {
                return Err(mapped);
            }
            if retriable && attempt < COMMIT_ATTEMPTS {
                warn!(pipeline = %self.pipeline, error = %err, attempt, "kafka commit failed; retrying");
                continue;
            }
            warn!(pipeline = %self.pipeline, error = %err, "kafka commit failed; aborting");
            if let Err(abort) = self.abort_open(order).await {
                warn!(pipeline = %self.pipeline, error = %abort.chain(), "kafka abort failed");
            }
            return Err(mapped);
        }
    }

    /// Ends a batch's transaction after its delivery reports: commit when everything was
    /// delivered, otherwise abort and fail the batch so the pipeline sends it again.
    async fn finish_transaction(
        &self,
        mut order: OwnedMutexGuard<Order>,
        collected: Collected,
    ) -> Result<BatchOutcome> {
        let failure = if let Some(failure) = collected.failure {
            Some(failure)
        } else if !collected.refused_by_broker.is_empty() {
            let count = collected.refused_by_broker.len();
            self.lock_refused().extend(collected.refused_by_broker);
            Some(Error::transient(format!(
                "kafka: the broker refused {count} event(s) of the batch, which aborts its \
                 transaction; the batch is sent again without them"
            )))
        } else {
            None
        };
        if let Some(failure) = failure {
            if let Err(abort) = self.abort_open(&mut order).await {
                warn!(pipeline = %self.pipeline, error = %abort.chain(), "kafka abort failed");
            }
            return Err(failure);
        }
        self.commit(&mut order).await?;
        Ok(BatchOutcome {
            rejected: collected.rejected,
        })
    }

    /// Enqueues a batch in order under the order lock. Returns the delivery futures and
    /// the events rejected before enqueueing.
    async fn enqueue_batch(
        &self,
        batch: &[Envelope],
        topics: Vec<String>,
        invalid: &HashMap<String, String>,
        handle: &Handle,
    ) -> Result<(Vec<(usize, DeliveryFuture, usize)>, Vec<Rejection>)> {
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        for (index, (event, topic)) in batch.iter().zip(topics).enumerate() {
            if let Some(reason) = invalid.get(&topic) {
                rejected.push(Rejection {
                    index,
                    error: Error::per_event(reason.clone()),
                });
                continue;
            }
            if self.transactional {
                if let Some(reason) = self.lock_refused().remove(&event.id) {
                    rejected.push(Rejection {
                        index,
                        error: Error::per_event(reason),
                    });
                    continue;
                }
            }
            let message = self.prepare(event, topic);
            let size = message.size;
            match self.enqueue(handle, message).await {
                Ok(delivery) => deliveries.push((index, delivery, size)),
                Err(err) if err.kind() == ErrorKind::PerEvent => {
                    rejected.push(Rejection { index, error: err })
                }
                Err(err) => return Err(err),
            }
        }
        Ok((deliveries, rejected))
    }
}

#[async_trait]
impl EventSink for KafkaSink {
    async fn send(&self, batch: Arc<[Envelope]>) -> Result<Pending> {
        let inner = &self.inner;
        let topics: Vec<String> = batch.iter().map(|e| inner.topic.render(e)).collect();
        let mut invalid = HashMap::new();
        let mut seen = HashSet::new();
        for topic in &topics {
            if seen.insert(topic.as_str()) {
                if let TopicState::Invalid(reason) = inner.check_topic(topic).await? {
                    invalid.insert(topic.clone(), reason);
                }
            }
        }
        let mut order = inner.order.clone().lock_owned().await;
        if inner.transactional {
            inner.begin(&mut order).await?;
        }
        let handle = inner.handle();
        let enqueued = inner.enqueue_batch(&batch, topics, &invalid, &handle).await;
        let (deliveries, rejected) = match enqueued {
            Ok(enqueued) => enqueued,
            Err(err) => {
                if let Err(abort) = inner.abort_open(&mut order).await {
                    warn!(pipeline = %inner.pipeline, error = %abort.chain(), "kafka abort failed");
                }
                return Err(err);
            }
        };
        trace!(pipeline = %inner.pipeline, events = batch.len(), "kafka batch enqueued");
        let inner = Arc::clone(inner);
        if !inner.transactional {
            drop(order);
            return Ok(Box::pin(async move {
                let collected = inner.collect(&handle, &batch, deliveries, rejected).await;
                match collected.failure {
                    Some(failure) => Err(failure),
                    None => Ok(BatchOutcome {
                        rejected: collected.rejected,
                    }),
                }
            }));
        }
        // The transaction must end whether or not the pipeline polls this batch's future
        // (it may be waiting on `send` for the next batch, which needs the order lock), so
        // it runs on its own task.
        let task = tokio::spawn(async move {
            let collected = inner.collect(&handle, &batch, deliveries, rejected).await;
            inner.finish_transaction(order, collected).await
        });
        Ok(Box::pin(async move {
            task.await.map_err(|e| {
                Error::transient("kafka: the transaction task stopped unexpectedly").with_source(e)
            })?
        }))
    }

    async fn dead_letter(&self, destination: &str, event: &Envelope, reason: &str) -> Result<()> {
        let inner = &self.inner;
        if let TopicState::Invalid(why) = inner.check_topic(destination).await? {
            return Err(Error::fatal(format!("kafka: dead-letter topic: {why}")));
        }
        let body = event.to_json_vec();
        let key = inner.key.render(event);
        let size = key.len() + body.len() + event.id.len() + reason.len();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "id",
                value: Some(event.id.as_bytes()),
            })
            .insert(Header {
                key: "outflow-error",
                value: Some(reason.as_bytes()),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json".as_bytes()),
            });
        let message = Prepared {
            topic: destination.to_string(),
            key,
            body,
            headers,
            size,
        };
        let mut order = inner.order.clone().lock_owned().await;
        if inner.transactional {
            inner.begin(&mut order).await?;
        }
        let handle = inner.handle();
        let delivery = match inner.enqueue(&handle, message).await {
            Ok(delivery) => delivery,
            Err(err) => {
                if let Err(abort) = inner.abort_open(&mut order).await {
                    warn!(pipeline = %inner.pipeline, error = %abort.chain(), "kafka abort failed");
                }
                return Err(err);
            }
        };
        // Without transactions the order lock only covers the enqueue.
        let mut order = inner.transactional.then_some(order);
        let outcome = match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((err, _))) => {
                let mapped = message_error(&err, &inner.info(destination, size));
                Err(inner.recover(&handle, &err, mapped))
            }
            Err(_) => Err(Error::transient(
                "kafka: the producer was closed before the delivery report arrived",
            )),
        };
        if let Some(order) = order.as_mut() {
            match outcome {
                Ok(()) => inner.commit(order).await?,
                Err(err) => {
                    if let Err(abort) = inner.abort_open(order).await {
                        warn!(pipeline = %inner.pipeline, error = %abort.chain(), "kafka abort failed");
                    }
                    return Err(err);
                }
            }
        } else {
            outcome?;
        }
        debug!(pipeline = %inner.pipeline, topic = destination, id = %event.id, "kafka event dead-lettered");
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        // Waits for a running transaction to end.
        let _order = inner.order.lock().await;
        let producer = inner.handle().producer;
        let timeout = inner.flush_timeout;
        blocking(move || producer.flush(timeout))
            .await?
            .map_err(|e| client_error(&e, "flushing the producer"))?;
        info!(pipeline = %inner.pipeline, "kafka sink closed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(check_topic_name("outbox.event.order_v2-x").is_ok());
        assert!(check_topic_name("").unwrap_err().contains("empty"));
        assert!(check_topic_name("..").is_err());
        let err = check_topic_name("outbox.event.my order").unwrap_err();
        assert!(err.contains("contains ' '"), "{err}");
        let long = "a".repeat(250);
        assert!(check_topic_name(&long).unwrap_err().contains("at most 249"));
    }
}
