//! Value types of the config file that check themselves while they are read.
//!
//! Each type's `Deserialize` refuses what it cannot hold with a message that
//! says what was expected. The TOML reader attaches the value's place to
//! that message, so most checks of the file live here, next to the value
//! they check, and need no span bookkeeping of their own.
//!
//! The checks run inside the visitor (see [`checked_str`]): an error raised
//! there gets the place of the value itself, while one raised after the
//! value was read would get the place of the array around it.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use jobqueue::EventType;
use jobqueue::core::UnknownName;
use jobqueue::events::webhook::{MAX_RETRY_DELAY, MAX_TIMEOUT, SigningKey};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, de::Error as _};

/// Reads a string and checks it with `check` inside the visitor, so that an
/// error has the string's own place (also inside an array).
fn checked_str<'de, D, T>(
    d: D,
    expecting: &'static str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<F> {
        expecting: &'static str,
        check: F,
    }
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.check)(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V { expecting, check })
}

/// Reads a duration and checks it with `check` inside the visitor.
fn checked_duration<'de, D: Deserializer<'de>>(
    d: D,
    check: fn(Duration) -> Result<(), String>,
) -> Result<Duration, D::Error> {
    struct V(fn(Duration) -> Result<(), String>);
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "a duration with its unit, like \"500ms\", \"30s\", \"5m\", \"3h\" or \"7d\"",
            )
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            let d = humantime::parse_duration(s.trim())
                .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))?;
            (self.0)(d).map_err(E::custom)?;
            Ok(d)
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs its unit: write \"{n}s\", \"{n}ms\" or similar, in quotes"
            )))
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs its unit: write \"{n}s\", \"{n}ms\" or similar, in quotes"
            )))
        }
    }
    d.deserialize_any(V(check))
}

/// A duration written with its unit: `500ms`, `2s`, `5m`, `3h`, `7d`
/// (anything `humantime` reads, such as `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_duration(d, |_| Ok(())).map(Self)
    }
}

/// A duration longer than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PositiveDur(pub(crate) Duration);

fn positive(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(())
}

impl<'de> Deserialize<'de> for PositiveDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_duration(d, positive).map(Self)
    }
}

/// The delay before a webhook retry: at most ten years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryDelay(pub(crate) Duration);

impl<'de> Deserialize<'de> for RetryDelay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_duration(d, |value| {
            if value > MAX_RETRY_DELAY {
                // MAX_RETRY_DELAY is ten years of 365 days; humantime would
                // write it in its own years (of 365.25 days) and days.
                return Err("a retry delay may be at most ten years (3650d)".into());
            }
            Ok(())
        })
        .map(Self)
    }
}

/// The timeout of one webhook attempt: longer than zero, at most an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WebhookTimeout(pub(crate) Duration);

impl<'de> Deserialize<'de> for WebhookTimeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_duration(d, |value| {
            positive(value)?;
            if value > MAX_TIMEOUT {
                return Err(format!(
                    "a webhook timeout may be at most {}",
                    humantime::format_duration(MAX_TIMEOUT)
                ));
            }
            Ok(())
        })
        .map(Self)
    }
}

/// A size in bytes larger than zero: `512KiB`, `1MiB` (anything `bytesize`
/// reads), or a plain integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) usize);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl V {
            fn check<E: de::Error>(bytes: u64) -> Result<Size, E> {
                if bytes == 0 {
                    return Err(E::custom("must be larger than zero"));
                }
                usize::try_from(bytes)
                    .map(Size)
                    .map_err(|_| E::custom("is larger than this machine can address"))
            }
        }
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"512KiB\" or \"1MiB\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                let bytes = s.trim().parse::<bytesize::ByteSize>().map_err(|_| {
                    E::custom(format!(
                        "invalid size {s:?}: expected a size like \"512KiB\" or \"1MiB\""
                    ))
                })?;
                Self::check(bytes.as_u64())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Self::check(n)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom("a size cannot be negative"))
                    .and_then(Self::check)
            }
        }
        d.deserialize_any(V)
    }
}

/// An integer of at least 1 (a count of attempts or of jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AtLeastOne<T>(pub(crate) T);

impl<'de, T> Deserialize<'de> for AtLeastOne<T>
where
    T: TryFrom<u64>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: TryFrom<u64>> Visitor<'_> for V<T> {
            type Value = AtLeastOne<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer of at least 1")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                if n == 0 {
                    return Err(E::custom("must be at least 1"));
                }
                T::try_from(n)
                    .map(AtLeastOne)
                    .map_err(|_| E::custom(format!("{n} is too large")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom("must be at least 1")),
                }
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// The address the server listens on: `HOST:PORT`, where HOST is an IP
/// address or a name (`[::1]:7700`, `127.0.0.1:7700`, `localhost:7700`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listen(pub(crate) String);

/// Checks a listen address; the error says what is wrong.
pub(crate) fn check_listen(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad =
        || format!("invalid listen address {s:?}: expected HOST:PORT, like \"127.0.0.1:7700\"");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(':') || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    port.parse::<u16>().map_err(|_| bad())?;
    Ok(())
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "an address like \"127.0.0.1:7700\"", |s| {
            check_listen(s).map(|()| Self(s.to_owned()))
        })
    }
}

/// A Standard Webhooks secret: `whsec_` followed by a base64 key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a webhook secret", |s| {
            // The signing code also takes a bare base64 key; the file
            // insists on the prefix so that a secret is recognisable as one.
            if s.starts_with("whsec_") && SigningKey::from_secret(s).is_ok() {
                Ok(Self(s.to_owned()))
            } else {
                Err("a webhook secret must be \"whsec_\" followed by a base64 key".into())
            }
        })
    }
}

/// A non-empty string without NUL bytes (a token).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token(pub(crate) String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a token", |s| {
            if s.is_empty() {
                return Err("the token must not be empty (leave `token` out to need none)".into());
            }
            if s.chars().any(|c| c.is_control() || c == ' ') {
                return Err("the token must not contain spaces or control characters".into());
            }
            Ok(Self(s.to_owned()))
        })
    }
}

/// A webhook endpoint URL: `http` or `https`, with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpUrl(pub(crate) String);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "an http(s) URL", |s| {
            // Configured endpoints are trusted as written: private
            // addresses are allowed.
            jobqueue::events::check_webhook_url(s, true).map(|()| Self(s.to_owned()))
        })
    }
}

/// A pipeline or phase name, as the store accepts it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Name(pub(crate) String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a name", |s| {
            jobqueue::core::job::check_name("name", s).map(|()| Self(s.to_owned()))
        })
    }
}

/// An event type's name (`job.completed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventName(pub(crate) EventType);

impl<'de> Deserialize<'de> for EventName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "an event type like \"job.completed\"", |s| {
            s.parse().map(Self).map_err(|e: UnknownName| e.to_string())
        })
    }
}

/// A command: its argv, at least the program, no NUL bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Argv(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let argv = Vec::<String>::deserialize(d)?;
        match argv.first() {
            None => {
                return Err(D::Error::custom(
                    "the command is empty: give the program and its arguments, like [\"sh\", \"-c\", \"./run.sh\"]",
                ));
            }
            Some(program) if program.is_empty() => {
                return Err(D::Error::custom("the command's program is an empty string"));
            }
            Some(_) => {}
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(D::Error::custom("a command argument contains a NUL byte"));
        }
        Ok(Self(argv))
    }
}

/// A PostgreSQL connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PostgresUrl(pub(crate) String);

impl<'de> Deserialize<'de> for PostgresUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a PostgreSQL URL", |s| {
            if s.starts_with("postgres://") || s.starts_with("postgresql://") {
                Ok(Self(s.to_owned()))
            } else {
                Err(format!(
                    "invalid PostgreSQL URL {s:?}: expected \"postgres://USER@HOST/DATABASE\""
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        for ok in ["127.0.0.1:7700", "[::1]:7700", "localhost:0", "0.0.0.0:80"] {
            assert_eq!(check_listen(ok), Ok(()), "{ok}");
        }
        for bad in [
            "7700",
            "localhost",
            ":7700",
            "host:99999",
            "::1:7700",
            "a b:1",
        ] {
            assert!(check_listen(bad).is_err(), "{bad}");
        }
    }
}
