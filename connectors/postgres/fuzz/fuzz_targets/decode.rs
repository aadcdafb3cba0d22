//! Feeds arbitrary bytes to the pgoutput decoder and, when a message decodes, its tuple
//! values to the value mapping: neither may panic, and every JSON text the mapping
//! returns must be valid JSON (`RawJson::from_text_unchecked` asserts it in this build,
//! which has debug assertions on). jsonb (3802) is left out: its text is the server's
//! own jsonb output, embedded as it is; json (114) is checked and is fuzzed instead.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outflow_postgres::decoder::{decode, Message, TupleValue};
use outflow_postgres::values::{builtin, to_json};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode(data) else { return };
    let tuple = match &message {
        Message::Insert(i) => &i.new,
        Message::Update(u) => &u.new,
        _ => return,
    };
    // Read each text value as several kinds, chosen by the value's position.
    const KINDS: [u32; 10] = [16, 20, 21, 700, 1700, 114, 17, 1114, 1184, 1007];
    for (n, value) in tuple.iter().enumerate() {
        if let TupleValue::Text(bytes) = value {
            if let Ok(text) = std::str::from_utf8(bytes) {
                let kind = builtin(KINDS[n % KINDS.len()]).expect("built-in kind");
                let _ = to_json(&kind, text);
            }
        }
    }
});
