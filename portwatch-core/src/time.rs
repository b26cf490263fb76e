//! How times are written, once for every output: timestamps as RFC 3339
//! (`rfc3339`, the JSON of journals, `watch --json` and reports) and
//! durations for people (`secs`, diagnoses and report texts).

use std::time::Duration;

/// Timestamps as RFC 3339 with nanoseconds, UTC (`2026-11-24T18:07:56.307967050Z`),
/// as serde `with` functions.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `t`.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_nanos(*t))
    }

    /// Writes `t` as [`serialize`] does, or `null`.
    pub fn serialize_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => serialize(t, s),
            None => s.serialize_none(),
        }
    }

    /// Reads what [`serialize`] wrote (any RFC 3339 time in UTC).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

/// A duration for people: `12 ms` below a second, `42 s` in whole
/// seconds, else to the millisecond (`1.234 s`).
pub fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn durations_read_as_documented() {
        assert_eq!(secs(Duration::from_millis(394)), "394 ms");
        assert_eq!(secs(Duration::ZERO), "0 ms");
        assert_eq!(secs(Duration::from_secs(60)), "60 s");
        assert_eq!(secs(Duration::from_millis(1540)), "1.540 s");
        assert_eq!(secs(Duration::from_micros(1_000_400)), "1.000 s");
    }

    #[test]
    fn timestamps_read_back() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T(#[serde(with = "rfc3339")] SystemTime);
        let t = T(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_795_000_000_000_000_001));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-18T11:06:40.000000001Z\"");
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), t);
        assert!(serde_json::from_str::<T>("\"yesterday\"").is_err());
    }
}
