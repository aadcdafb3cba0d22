//! Reading a JetStream stream back, shared by the NATS sink's integration tests.

// Each test binary uses the helpers it needs.
#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

/// A JetStream context of a plain test client.
pub(crate) async fn js_for(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url)
        .await
        .expect("test client connects");
    jetstream::new(client)
}

/// Every message of a stream in stream order, read with an ephemeral pull consumer,
/// after checking the stream holds exactly `expected` messages.
pub(crate) async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    expected: usize,
) -> Vec<jetstream::Message> {
    let mut st = js.get_stream(stream).await.expect("stream exists");
    let held = st.info().await.expect("stream info").state.messages;
    assert_eq!(
        held, expected as u64,
        "stream {stream} holds {held} messages"
    );
    let consumer = st
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer created");
    let mut messages = consumer.messages().await.expect("consumer messages");
    let mut out = Vec::new();
    while out.len() < expected {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} messages arrived", out.len()));
        out.push(next.expect("stream open").expect("message"));
    }
    out
}

/// How many messages a stream holds; 0 while it cannot be read.
pub(crate) async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut st) => st.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

pub(crate) fn header<'a>(msg: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    msg.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// A message's `Nats-Msg-Id`.
pub(crate) fn msg_id(msg: &jetstream::Message) -> String {
    header(msg, "Nats-Msg-Id").expect("Nats-Msg-Id").to_string()
}

/// The `Nats-Msg-Id`s of messages, in order.
pub(crate) fn msg_ids(messages: &[jetstream::Message]) -> Vec<String> {
    messages.iter().map(msg_id).collect()
}
