//! Unique names for objects that tests create on shared services.

use std::sync::atomic::{AtomicU64, Ordering};

/// Longest name [`unique_name`] returns. Postgres truncates identifiers at 63 bytes and some
/// tests append their own suffixes, so names stay well below that.
pub const MAX_NAME_LEN: usize = 40;

/// Random characters at the end of every name, so two processes whose pids repeat (across
/// machines, containers or reboots) still differ.
const RANDOM_LEN: usize = 4;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name that no other call, in this process or another, returns: `<prefix>_<pid>_<n>_<rand>`
/// with the pid, a per-process counter and random characters in base 36.
///
/// The name uses only `[a-z0-9_]`, starts with a letter and is at most [`MAX_NAME_LEN`]
/// characters long, so it is valid unquoted as a Postgres database, slot or publication
/// name, a JetStream stream name, a NATS subject token and a Kafka topic. The prefix is
/// lowercased, other characters become `_`, and it is shortened when needed; an empty prefix
/// or one that starts with a digit gets `t` in front.
pub fn unique_name(prefix: &str) -> String {
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !clean.starts_with(|c: char| c.is_ascii_lowercase()) {
        clean.insert(0, 't');
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: String = (0..RANDOM_LEN)
        .map(|_| base36_digit(rand::random_range(0..36u64)))
        .collect();
    let suffix = format!(
        "_{}_{}_{}",
        base36(u64::from(std::process::id())),
        base36(n),
        random
    );
    let room = MAX_NAME_LEN.saturating_sub(suffix.len()).max(1);
    clean.truncate(room);
    clean.push_str(&suffix);
    clean
}

fn base36(mut n: u64) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(base36_digit(n % 36));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

fn base36_digit(d: u64) -> char {
    char::from_digit(u32::try_from(d % 36).unwrap_or(0), 36).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_round_trips() {
        for n in [0u64, 1, 35, 36, 1295, 4_194_304, u64::from(u32::MAX)] {
            assert_eq!(u64::from_str_radix(&base36(n), 36).unwrap(), n);
        }
    }

    #[test]
    fn counter_and_pid_are_in_the_name() {
        let name = unique_name("abc");
        let parts: Vec<&str> = name.split('_').collect();
        assert_eq!(parts[0], "abc");
        assert_eq!(parts[1], base36(u64::from(std::process::id())));
        assert_eq!(parts[3].len(), RANDOM_LEN);
    }
}
