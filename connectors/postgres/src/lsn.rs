//! WAL positions (log sequence numbers) in Postgres' own `X/Y` notation.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log: a 64-bit byte offset, written `X/Y` with the high and
/// low 32 bits in upper-case hexadecimal (`0/16B3748`), as Postgres writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position `0/0`, which Postgres reads as "no position".
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A text that is not an `X/Y` position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WAL position of the form X/Y in hexadecimal, e.g. 0/16B3748")]
pub struct LsnParseError(String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(text.to_string());
        let (high, low) = text.split_once('/').ok_or_else(err)?;
        if high.is_empty() || low.is_empty() || high.len() > 8 || low.len() > 8 {
            return Err(err());
        }
        let high = u32::from_str_radix(high, 16).map_err(|_| err())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

#[cfg(feature = "source")]
impl From<pgwire_replication::Lsn> for Lsn {
    fn from(lsn: pgwire_replication::Lsn) -> Self {
        Lsn(lsn.0)
    }
}

#[cfg(feature = "source")]
impl From<Lsn> for pgwire_replication::Lsn {
    fn from(lsn: Lsn) -> Self {
        pgwire_replication::Lsn(lsn.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_like_postgres() {
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0x1_0000_00FF).to_string(), "1/FF");
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!("1/ff".parse::<Lsn>().unwrap(), Lsn(0x1_0000_00FF));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        for bad in ["", "0", "/1", "1/", "0/G", "123456789/0", "0/1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }
}
