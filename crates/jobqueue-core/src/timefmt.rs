//! Timestamps as text: RFC 3339 in UTC, everywhere a core type is
//! serialized, and the range check every edge applies to a caller's time.
//!
//! RFC 3339 has four-digit years, so only times from year 0 to 9999 have an
//! RFC 3339 form. Every time a caller hands in (`run_at`, a retry time, a
//! clock's reading) is checked with [`check`] before it is stored, so stored
//! times always have one. Formatting itself never fails: a time outside that
//! range (which no checked path produces) is written in ISO 8601's expanded
//! form (`-0001-01-01T00:00:00Z`), or with its own offset when UTC cannot
//! hold it, rather than silently as `null`, and
//! [`parse`] reads both forms back.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The earliest time with an RFC 3339 form: 0000-01-01T00:00:00Z.
pub const MIN: OffsetDateTime = time::macros::datetime!(0000-01-01 00:00:00 UTC);

/// The latest time with an RFC 3339 form: 9999-12-31T23:59:59.999999Z (to the
/// microsecond, the precision stores keep).
pub const MAX: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59.999_999 UTC);

/// Whether `t` has an RFC 3339 form (year 0 to 9999 in UTC).
pub fn in_range(t: OffsetDateTime) -> bool {
    (MIN..=MAX).contains(&t)
}

/// Checks that `t` has an RFC 3339 form; the error names `what`.
pub fn check(what: &str, t: OffsetDateTime) -> Result<(), String> {
    if in_range(t) {
        Ok(())
    } else {
        Err(format!(
            "{what} {} is outside the range RFC 3339 can express (years 0 to 9999)",
            format(t)
        ))
    }
}

/// `t` as RFC 3339 text in UTC, e.g. `2030-01-02T03:04:05.25Z`. Never fails
/// (see the module docs for times out of range).
pub fn format(t: OffsetDateTime) -> String {
    let utc = t.checked_to_offset(UtcOffset::UTC).unwrap_or(t);
    if let Ok(s) = utc.format(&Rfc3339) {
        return s;
    }
    let (year, month, day) = (utc.year(), u8::from(utc.month()), utc.day());
    let (h, m, s, nanos) = (utc.hour(), utc.minute(), utc.second(), utc.nanosecond());
    let mut out = format!("{year:+05}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    if utc.offset() == UtcOffset::UTC {
        out.push('Z');
    } else {
        let (oh, om, _) = utc.offset().as_hms();
        out.push_str(&format!("{:+03}:{:02}", oh, om.unsigned_abs()));
    }
    out
}

/// Reads what [`format()`] writes: RFC 3339, or the expanded form.
pub fn parse(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let expanded = time::macros::format_description!(
        version = 2,
        "[year sign:mandatory]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]Z"
    );
    time::PrimitiveDateTime::parse(s, &expanded)
        .map(time::PrimitiveDateTime::assume_utc)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

/// Serde `with` module: an `OffsetDateTime` as RFC 3339 text.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    /// Writes `t` with [`super::format()`].
    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*t))
    }

    /// Reads a time written by [`serialize`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<OffsetDateTime>` (`null` for `None`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use time::OffsetDateTime;

        /// Writes `t` with [`super::super::format()`], or `null`.
        pub fn serialize<S: Serializer>(
            t: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&super::super::format(*t)),
                None => s.serialize_none(),
            }
        }

        /// Reads a time written by [`serialize`], or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            Option::<std::borrow::Cow<'de, str>>::deserialize(d)?
                .map(|s| super::super::parse(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(
            format(datetime!(2030-01-02 03:04:05.25 +02:00)),
            "2030-01-02T01:04:05.25Z"
        );
        assert_eq!(format(MAX), "9999-12-31T23:59:59.999999Z");
        assert_eq!(format(MIN), "0000-01-01T00:00:00Z");
    }

    #[test]
    fn out_of_range_is_text_not_null_and_reads_back() {
        // In UTC this is year 10000, which has no RFC 3339 form there.
        let far = datetime!(9999-12-31 23:30:00 -01:00);
        let s = format(far);
        assert_eq!(s, "9999-12-31T23:30:00-01:00");
        assert_eq!(parse(&s).unwrap(), far);
        let before = datetime!(-0001-06-01 12:00:00.5 UTC);
        assert_eq!(parse(&format(before)).unwrap(), before);
        assert!(check("run_at", far).unwrap_err().contains("run_at"));
        assert!(check("run_at", before).is_err());
        assert!(check("run_at", MAX).is_ok());
    }
}
