//! The `pgoutput` decoder: one logical replication message in, one [`Message`] out.
//!
//! The wire format is the one documented in the Postgres manual, "Logical Replication
//! Message Formats", for protocol version 1 (no streamed transactions, so no transaction
//! id in front of change messages). Every integer is big-endian; strings end with a zero
//! byte. The decoder borrows from the input and allocates only the column list of a
//! tuple and of a relation, so a change costs one pass over its bytes.
//!
//! Malformed input is an error, never a panic: the decoder is fuzzed
//! (`connectors/postgres/fuzz`) and tested on bytes captured from a real server
//! (`tests/fixtures/pgoutput.hex`).

use crate::lsn::Lsn;

/// A message that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field it announced.
    #[error("pgoutput message {tag:?} ended early: {what} needs more bytes")]
    Truncated {
        /// The message tag.
        tag: char,
        /// The field being read.
        what: &'static str,
    },
    /// The message carried a value the protocol does not allow.
    #[error("pgoutput message {tag:?} is malformed: {what}")]
    Malformed {
        /// The message tag.
        tag: char,
        /// What was wrong.
        what: String,
    },
    /// The message kind is unknown, or belongs to a protocol version outflow does not ask
    /// for (streamed transactions, two-phase commit).
    #[error("pgoutput message type {0:?} is not supported with protocol version 1")]
    Unsupported(char),
    /// The input was empty.
    #[error("empty pgoutput message")]
    Empty,
}

/// One decoded `pgoutput` message, borrowing its strings and values from the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    /// A transaction starts.
    Begin(Begin),
    /// A transaction ends.
    Commit(Commit),
    /// The transaction came from another node (replication origin).
    Origin(Origin<'a>),
    /// The description of a table, sent before its first change and again after its
    /// schema changed.
    Relation(Relation),
    /// The name of a non-built-in type used by a following Relation.
    Type(TypeMessage<'a>),
    /// A row was inserted.
    Insert(Insert<'a>),
    /// A row was updated.
    Update(Update<'a>),
    /// A row was deleted.
    Delete(Delete<'a>),
    /// Tables were truncated.
    Truncate(Truncate),
    /// A logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage<'a>),
}

/// `B`: the start of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
    /// The transaction id.
    pub xid: u32,
}

/// `C`: the end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (unused, zero).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm once the transaction is
    /// delivered.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
}

/// `O`: the transaction's replication origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: &'a str,
}

/// Replica identity setting of a relation, from `pg_class.relreplident`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: every column.
    Full,
    /// `i`: a chosen unique index.
    Index,
}

/// `R`: a table's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID, which change messages refer to.
    pub oid: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// The replica identity, which decides what old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in tuple order.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (every column under `FULL`).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// The column type's OID.
    pub type_oid: u32,
    /// The type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// `Y`: a type's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeMessage<'a> {
    /// The type's OID.
    pub oid: u32,
    /// Schema name.
    pub namespace: &'a str,
    /// Type name.
    pub name: &'a str,
}

/// One column value in a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleValue<'a> {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value: the server did not send it.
    UnchangedToast,
    /// The value's text form.
    Text(&'a [u8]),
    /// The value's binary form (only with the `binary` option, which outflow does not
    /// set).
    Binary(&'a [u8]),
}

/// The values of one row, in the relation's column order.
pub type Tuple<'a> = Vec<TupleValue<'a>>;

/// `I`: an inserted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert<'a> {
    /// The table's OID.
    pub relation: u32,
    /// The new row.
    pub new: Tuple<'a>,
}

/// What old values an update or delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// `K`: the replica identity columns (others are null).
    Key(Tuple<'a>),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple<'a>),
}

/// `U`: an updated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    /// The table's OID.
    pub relation: u32,
    /// The old key or row, when the identity changed or is `FULL`.
    pub old: Option<OldTuple<'a>>,
    /// The new row; unchanged TOAST values are [`TupleValue::UnchangedToast`].
    pub new: Tuple<'a>,
}

/// `D`: a deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    /// The table's OID.
    pub relation: u32,
    /// The old key or row.
    pub old: OldTuple<'a>,
}

/// `T`: truncated tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `TRUNCATE … CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY`.
    pub restart_identity: bool,
    /// The truncated tables' OIDs.
    pub relations: Vec<u32>,
}

/// `M`: a logical decoding message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    /// Whether it was emitted as part of a transaction (and so arrives after its commit).
    pub transactional: bool,
    /// The message's LSN.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: &'a str,
    /// The content.
    pub content: &'a [u8],
}

struct Reader<'a> {
    tag: char,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                what,
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64(what)? as u64))
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated {
                tag: self.tag,
                what,
            })?;
        let (text, rest) = self.buf.split_at(end);
        self.buf = &rest[1..];
        std::str::from_utf8(text).map_err(|_| self.malformed(format!("{what} is not UTF-8")))
    }

    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| self.malformed(format!("negative {what} {n}")))
    }

    fn malformed(&self, what: String) -> DecodeError {
        DecodeError::Malformed {
            tag: self.tag,
            what,
        }
    }

    fn finish<T>(&self, value: T) -> Result<T, DecodeError> {
        if self.buf.is_empty() {
            Ok(value)
        } else {
            Err(self.malformed(format!("{} unexpected trailing bytes", self.buf.len())))
        }
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.count("tuple column count")?;
        // Each column takes at least one byte: a count beyond the input is a lie, and
        // must not size an allocation.
        if n > self.buf.len() {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                what: "tuple columns",
            });
        }
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let value = match self.u8("column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len = self.i32("column length")?;
                    let len = usize::try_from(len)
                        .map_err(|_| self.malformed(format!("negative column length {len}")))?;
                    let data = self.take(len, "column value")?;
                    if kind == b't' {
                        TupleValue::Text(data)
                    } else {
                        TupleValue::Binary(data)
                    }
                }
                other => {
                    return Err(self.malformed(format!("unknown column kind {:?}", other as char)))
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    fn old_tuple(&mut self, kind: u8) -> Result<OldTuple<'a>, DecodeError> {
        match kind {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(self.malformed(format!("unknown old tuple kind {:?}", other as char))),
        }
    }
}

/// Decodes one `pgoutput` (protocol version 1) message.
pub fn decode(data: &[u8]) -> Result<Message<'_>, DecodeError> {
    let (&tag, rest) = data.split_first().ok_or(DecodeError::Empty)?;
    let mut r = Reader {
        tag: tag as char,
        buf: rest,
    };
    let message = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.lsn("final lsn")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit lsn")?,
            end_lsn: r.lsn("end lsn")?,
            commit_time: r.i64("commit time")?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: r.lsn("origin commit lsn")?,
            name: r.str("origin name")?,
        }),
        b'R' => {
            let oid = r.u32("relation oid")?;
            let namespace = r.str("namespace")?.to_string();
            let name = r.str("relation name")?.to_string();
            let replica_identity = match r.u8("replica identity")? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                other => {
                    return Err(r.malformed(format!("unknown replica identity {:?}", other as char)))
                }
            };
            let n = r.count("column count")?;
            if n > r.buf.len() {
                return Err(DecodeError::Truncated {
                    tag: r.tag,
                    what: "relation columns",
                });
            }
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                columns.push(RelationColumn {
                    is_key: r.u8("column flags")? & 1 == 1,
                    name: r.str("column name")?.to_string(),
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type(TypeMessage {
            oid: r.u32("type oid")?,
            namespace: r.str("type namespace")?,
            name: r.str("type name")?,
        }),
        b'I' => {
            let relation = r.u32("relation oid")?;
            match r.u8("tuple kind")? {
                b'N' => {}
                other => {
                    return Err(
                        r.malformed(format!("insert without new tuple ({:?})", other as char))
                    )
                }
            }
            Message::Insert(Insert {
                relation,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation = r.u32("relation oid")?;
            let mut kind = r.u8("tuple kind")?;
            let old = if kind == b'K' || kind == b'O' {
                let old = r.old_tuple(kind)?;
                kind = r.u8("tuple kind")?;
                Some(old)
            } else {
                None
            };
            if kind != b'N' {
                return Err(r.malformed(format!("update without new tuple ({:?})", kind as char)));
            }
            Message::Update(Update {
                relation,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation = r.u32("relation oid")?;
            let kind = r.u8("tuple kind")?;
            Message::Delete(Delete {
                relation,
                old: r.old_tuple(kind)?,
            })
        }
        b'T' => {
            let n = r.u32("relation count")? as usize;
            let options = r.u8("truncate options")?;
            if n > r.buf.len() / 4 {
                return Err(DecodeError::Truncated {
                    tag: r.tag,
                    what: "truncated relations",
                });
            }
            let mut relations = Vec::with_capacity(n);
            for _ in 0..n {
                relations.push(r.u32("relation oid")?);
            }
            Message::Truncate(Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            })
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.lsn("message lsn")?;
            let prefix = r.str("message prefix")?;
            let len = r.i32("message length")?;
            let len = usize::try_from(len)
                .map_err(|_| r.malformed(format!("negative message length {len}")))?;
            Message::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.take(len, "message content")?,
            })
        }
        other => return Err(DecodeError::Unsupported(other as char)),
    };
    r.finish(message)
}

#[cfg(test)]
mod tests;
