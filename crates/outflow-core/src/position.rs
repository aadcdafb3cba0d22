//! Source positions.
//!
//! A position is opaque to everything but the source that made it: the pipeline stores
//! it, orders it by the sequence in which the source emitted it, and hands it back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A position in one partition of a source, safe to resume from once every event the
/// source emitted before it has been acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The partition: empty for single-partition sources (the Postgres slot), a shard
    /// id or a feed range otherwise.
    pub partition: String,
    /// The position in the source's own notation.
    pub position: String,
}

impl Checkpoint {
    /// A checkpoint of a single-partition source.
    pub fn new(position: impl Into<String>) -> Self {
        Checkpoint {
            partition: String::new(),
            position: position.into(),
        }
    }

    /// A checkpoint of one partition.
    pub fn in_partition(partition: impl Into<String>, position: impl Into<String>) -> Self {
        Checkpoint {
            partition: partition.into(),
            position: position.into(),
        }
    }
}

/// The latest committed position of every partition of a pipeline.
pub type Checkpoints = BTreeMap<String, String>;
