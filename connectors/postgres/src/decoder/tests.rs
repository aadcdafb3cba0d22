//! Decoder tests on bytes captured from Postgres 15 (`tests/fixtures/capture.sh`).

use super::*;
use crate::values::{self, Kind};

const FIXTURE: &str = include_str!("../../tests/fixtures/pgoutput.hex");

/// The captured messages: (lsn, xid, bytes).
fn captured() -> Vec<(String, u32, Vec<u8>)> {
    FIXTURE
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let lsn = parts.next().unwrap().to_string();
            let xid = parts.next().unwrap().parse().unwrap();
            let hex = parts.next().unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (lsn, xid, bytes)
        })
        .collect()
}

fn text<'a>(v: &TupleValue<'a>) -> &'a str {
    match v {
        TupleValue::Text(b) => std::str::from_utf8(b).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn every_captured_message_decodes_and_tags_match() {
    let all = captured();
    assert_eq!(all.len(), 57);
    let tags: String = all
        .iter()
        .map(|(_, _, b)| match decode(b).unwrap() {
            Message::Begin(_) => 'B',
            Message::Commit(_) => 'C',
            Message::Origin(_) => 'O',
            Message::Relation(_) => 'R',
            Message::Type(_) => 'Y',
            Message::Insert(_) => 'I',
            Message::Update(_) => 'U',
            Message::Delete(_) => 'D',
            Message::Truncate(_) => 'T',
            Message::Message(_) => 'M',
        })
        .collect();
    assert_eq!(
        tags,
        "BYYRICBICBUCBUCBDCBRICBUCBDCBRICBUCBRIDCBMCMBRRTCBRICBOIC"
    );
}

#[test]
fn begin_and_commit_carry_positions_xid_and_time() {
    let all = captured();
    let Message::Begin(begin) = decode(&all[0].2).unwrap() else {
        panic!()
    };
    assert_eq!(begin.xid, 803);
    assert_eq!(begin.xid, all[0].1);
    let Message::Commit(commit) = decode(&all[5].2).unwrap() else {
        panic!()
    };
    assert_eq!(commit.commit_lsn, begin.final_lsn);
    assert_eq!(
        commit.end_lsn.to_string(),
        all[5].0,
        "the row's lsn is the commit end"
    );
    assert_eq!(commit.commit_time, begin.commit_time);
    assert_eq!(commit.flags, 0);
    // Captured on 2026-12-03: microseconds since 2000-01-01.
    let unix = commit.commit_time / 1_000_000 + 946_684_800;
    assert_eq!(
        unix / 86_400,
        20_790,
        "2026-12-03 is day 20790 of the Unix epoch"
    );
}

#[test]
fn relation_and_types_describe_columns() {
    let all = captured();
    let Message::Type(mood) = decode(&all[1].2).unwrap() else {
        panic!()
    };
    assert_eq!((mood.namespace, mood.name), ("public", "mood"));
    let Message::Type(domain) = decode(&all[2].2).unwrap() else {
        panic!()
    };
    // A domain is announced with its base type's name, in pg_catalog (empty namespace).
    assert_eq!((domain.namespace, domain.name), ("", "int4"));
    let Message::Relation(rel) = decode(&all[3].2).unwrap() else {
        panic!()
    };
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "typed")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    assert_eq!(rel.columns.len(), 24);
    let id = &rel.columns[0];
    assert!(id.is_key && id.name == "id" && id.type_oid == 20);
    assert!(rel.columns[1..].iter().all(|c| !c.is_key));
    let vc = rel.columns.iter().find(|c| c.name == "vc").unwrap();
    assert_eq!((vc.type_oid, vc.type_modifier), (1043, 14));
    assert_eq!(rel.columns[22].type_oid, mood.oid);
    assert_eq!(rel.columns[23].type_oid, domain.oid);

    let Message::Relation(full) = decode(&all[19].2).unwrap() else {
        panic!()
    };
    assert_eq!(full.replica_identity, ReplicaIdentity::Full);
    assert!(
        full.columns.iter().all(|c| c.is_key),
        "FULL marks every column"
    );
}

#[test]
fn insert_values_map_to_json_losslessly() {
    let all = captured();
    let Message::Relation(rel) = decode(&all[3].2).unwrap() else {
        panic!()
    };
    let Message::Insert(insert) = decode(&all[4].2).unwrap() else {
        panic!()
    };
    assert_eq!(insert.relation, rel.oid);
    let mut cache = values::TypeCache::default();
    cache.insert(rel.columns[22].type_oid, Kind::Text);
    cache.insert(rel.columns[23].type_oid, Kind::Int);
    let columns: Vec<(String, Kind)> = rel
        .columns
        .iter()
        .map(|c| (c.name.clone(), cache.get(c.type_oid).unwrap()))
        .collect();
    let mut unchanged = Vec::new();
    let members: Vec<String> = columns
        .iter()
        .map(|(name, _)| values::member_prefix(name))
        .collect();
    let row = values::row_image(&columns, &members, &insert.new, None, &mut unchanged).unwrap();
    assert!(unchanged.is_empty());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(row.text()).unwrap(),
        serde_json::json!({
            "id": 1, "b": true, "i2": -2, "i4": 4, "i8": "9007199254740993",
            "f4": "NaN", "f8": "-Infinity", "n": "12345678901234567890.000000001",
            "t": "tab\t\"quote\"", "vc": "v", "c": "ab ",
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "j": {"a": [1, 2]}, "jb": {"b": null}, "by": "AP8=",
            "d": "2026-12-03", "tm": "12:34:56.789", "ts": "2026-12-03T12:00:00.500000",
            "tz": "2026-12-03T12:00:00.123456Z", "iv": "1 year 2 mons 3 days 04:05:06",
            "ia": [1, null, 3], "ta": ["a b", "c\"d", null, "NULL"], "m": "happy", "p": 7
        })
    );
}

#[test]
fn updates_and_deletes_carry_old_values_by_identity() {
    let all = captured();
    // DEFAULT identity, key unchanged: no old tuple.
    let Message::Update(u) = decode(&all[10].2).unwrap() else {
        panic!()
    };
    assert!(u.old.is_none());
    assert_eq!(text(&u.new[8]), "changed");
    // DEFAULT identity, key changed: the old key.
    let Message::Update(u) = decode(&all[13].2).unwrap() else {
        panic!()
    };
    let Some(OldTuple::Key(old)) = &u.old else {
        panic!("{u:?}")
    };
    assert_eq!(text(&old[0]), "2");
    assert!(old[1..].iter().all(|v| *v == TupleValue::Null));
    assert_eq!(text(&u.new[0]), "3");
    // DEFAULT identity delete: the key only.
    let Message::Delete(d) = decode(&all[16].2).unwrap() else {
        panic!()
    };
    let OldTuple::Key(old) = &d.old else { panic!() };
    assert_eq!(text(&old[0]), "3");
    // FULL identity: whole old rows.
    let Message::Update(u) = decode(&all[23].2).unwrap() else {
        panic!()
    };
    let Some(OldTuple::Full(old)) = &u.old else {
        panic!()
    };
    assert_eq!((text(&old[1]), text(&u.new[1])), ("one", "uno"));
    let Message::Delete(d) = decode(&all[26].2).unwrap() else {
        panic!()
    };
    let OldTuple::Full(old) = &d.old else {
        panic!()
    };
    assert_eq!(text(&old[1]), "uno");
}

#[test]
fn unchanged_toast_is_marked() {
    let all = captured();
    let Message::Insert(i) = decode(&all[30].2).unwrap() else {
        panic!()
    };
    assert_eq!(text(&i.new[1]).len(), 6400);
    let Message::Update(u) = decode(&all[33].2).unwrap() else {
        panic!()
    };
    assert_eq!(u.new[1], TupleValue::UnchangedToast);
    assert_eq!(text(&u.new[2]), "1");
}

#[test]
fn outbox_insert_and_delete_in_one_transaction() {
    let all = captured();
    let Message::Insert(i) = decode(&all[37].2).unwrap() else {
        panic!()
    };
    assert_eq!(text(&i.new[0]), "5f0c1a2b-0000-4000-8000-000000000001");
    assert_eq!(text(&i.new[3]), "OrderCreated");
    assert_eq!(
        text(&i.new[5]),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let Message::Delete(d) = decode(&all[38].2).unwrap() else {
        panic!()
    };
    assert!(matches!(d.old, OldTuple::Key(_)));
}

#[test]
fn messages_truncate_schema_change_and_origin() {
    let all = captured();
    let Message::Message(m) = decode(&all[41].2).unwrap() else {
        panic!()
    };
    assert!(m.transactional);
    assert_eq!(m.prefix, "outbox");
    let content: serde_json::Value = serde_json::from_slice(m.content).unwrap();
    assert_eq!(content["type"], "Shipped");
    let Message::Message(m) = decode(&all[43].2).unwrap() else {
        panic!()
    };
    assert!(!m.transactional);
    assert_eq!(m.content, b"not transactional");
    assert_eq!(m.lsn.to_string(), all[43].0);

    let Message::Truncate(t) = decode(&all[47].2).unwrap() else {
        panic!()
    };
    assert!(t.cascade && t.restart_identity);
    assert_eq!(t.relations.len(), 2);

    let Message::Relation(r) = decode(&all[50].2).unwrap() else {
        panic!()
    };
    assert_eq!(
        r.columns.len(),
        3,
        "the Relation after ALTER TABLE has the new column"
    );
    assert_eq!(r.columns[2].name, "extra");
    let Message::Insert(i) = decode(&all[51].2).unwrap() else {
        panic!()
    };
    assert_eq!(text(&i.new[2]), "6");

    let Message::Origin(o) = decode(&all[54].2).unwrap() else {
        panic!()
    };
    assert_eq!(o.name, "fixture_origin");
    assert_eq!(o.commit_lsn.to_string(), "0/ABCDEF");
}

#[test]
fn malformed_input_is_an_error() {
    assert_eq!(decode(b""), Err(DecodeError::Empty));
    assert_eq!(
        decode(b"S\0\0\0\x01\x01"),
        Err(DecodeError::Unsupported('S'))
    );
    assert!(matches!(
        decode(b"B\0\0"),
        Err(DecodeError::Truncated { tag: 'B', .. })
    ));
    // A tuple claiming 32767 columns in a few bytes.
    assert!(decode(b"I\0\0\0\x01N\x7f\xff").is_err());
    // Negative column length.
    assert!(decode(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff").is_err());
    // Trailing garbage after a complete message.
    let all = captured();
    let mut long = all[0].2.clone();
    long.push(0);
    assert!(matches!(
        decode(&long),
        Err(DecodeError::Malformed { tag: 'B', .. })
    ));
}

/// Every prefix of every captured message, and every captured message with bytes
/// flipped by a fixed pseudo-random sequence, must decode or fail without panicking.
/// The real fuzzer lives in `connectors/postgres/fuzz`; this keeps a cheap version in
/// every `cargo test`.
#[test]
fn truncated_and_mutated_input_never_panics() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let all = captured();
    let mut decoded = 0usize;
    for (_, _, bytes) in &all {
        for end in 0..bytes.len().min(400) {
            decoded += usize::from(decode(&bytes[..end]).is_ok());
        }
        for _ in 0..200 {
            let mut mutated = bytes.clone();
            let flips = 1 + (next() % 4) as usize;
            for _ in 0..flips {
                let at = (next() as usize) % mutated.len();
                mutated[at] = next() as u8;
            }
            let _ = decode(&mutated);
        }
    }
    for len in 0..64 {
        let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = decode(&random);
        for tag in b"BCORYIUDTM" {
            let mut tagged = random.clone();
            tagged.insert(0, *tag);
            let _ = decode(&tagged);
        }
    }
    assert_eq!(
        decoded, 0,
        "a strict prefix of a message is never a whole message"
    );
}
