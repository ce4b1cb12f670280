//! Typed media time. Containers count in their own ticks (MP4 timescale, Matroska
//! TimestampScale, Ogg granules at the sample rate); everything above the parsers speaks
//! [`MediaTime`], nanoseconds, the unit GStreamer's clock uses, so no float ever carries time.

use std::fmt;

/// A point or span of media time in nanoseconds. Signed: edit lists and B-frame reordering can
/// put decode times before zero.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct MediaTime(i64);

const NANOS_PER_SEC: i128 = 1_000_000_000;

impl MediaTime {
    pub const ZERO: MediaTime = MediaTime(0);
    pub const MAX: MediaTime = MediaTime(i64::MAX);

    pub const fn from_nanos(nanos: i64) -> Self {
        MediaTime(nanos)
    }

    pub const fn from_millis(millis: i64) -> Self {
        MediaTime(millis.saturating_mul(1_000_000))
    }

    pub const fn from_secs(secs: i64) -> Self {
        MediaTime(secs.saturating_mul(1_000_000_000))
    }

    /// Converts `ticks` counted at `timescale` ticks per second, rounding to the nearest
    /// nanosecond. `None` when the timescale is zero or the result does not fit.
    pub fn from_ticks(ticks: i64, timescale: u64) -> Option<Self> {
        if timescale == 0 {
            return None;
        }
        let ts = timescale as i128;
        let n = ticks as i128 * NANOS_PER_SEC;
        let rounded = if n >= 0 { (n + ts / 2) / ts } else { (n - ts / 2) / ts };
        i64::try_from(rounded).ok().map(MediaTime)
    }

    /// This time in ticks at `timescale`, rounded to the nearest tick (so that
    /// `from_ticks(t.to_ticks(ts), ts)` gives `t` back for any `t` made from ticks).
    pub fn to_ticks(self, timescale: u64) -> Option<i64> {
        if timescale == 0 {
            return None;
        }
        let n = self.0 as i128 * timescale as i128;
        let half = NANOS_PER_SEC / 2;
        let rounded = if n >= 0 { (n + half) / NANOS_PER_SEC } else { (n - half) / NANOS_PER_SEC };
        i64::try_from(rounded).ok()
    }

    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// Milliseconds, rounded to the nearest.
    pub const fn as_millis(self) -> i64 {
        if self.0 >= 0 {
            (self.0 + 500_000) / 1_000_000
        } else {
            (self.0 - 500_000) / 1_000_000
        }
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    pub fn checked_add(self, other: MediaTime) -> Option<MediaTime> {
        self.0.checked_add(other.0).map(MediaTime)
    }

    pub fn checked_sub(self, other: MediaTime) -> Option<MediaTime> {
        self.0.checked_sub(other.0).map(MediaTime)
    }

    pub fn saturating_add(self, other: MediaTime) -> MediaTime {
        MediaTime(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: MediaTime) -> MediaTime {
        MediaTime(self.0.saturating_sub(other.0))
    }

    /// Parses `90`, `90.5`, `1:30`, `01:02:03.250` or `1500ms` into a time; a leading `-`
    /// negates the whole of it (`-1.5` is minus one and a half seconds). Signs anywhere else
    /// are refused.
    pub fn parse(text: &str) -> Option<MediaTime> {
        let text = text.trim();
        let (negative, text) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let magnitude = Self::parse_unsigned(text)?;
        Some(if negative { MediaTime(magnitude.0.checked_neg()?) } else { magnitude })
    }

    fn parse_unsigned(text: &str) -> Option<MediaTime> {
        if let Some(ms) = text.strip_suffix("ms") {
            return parse_digits(ms.trim()).map(MediaTime::from_millis);
        }
        let text = text.strip_suffix('s').unwrap_or(text);
        let mut total_ms: i64 = 0;
        let parts: Vec<&str> = text.split(':').collect();
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        for (i, part) in parts.iter().enumerate() {
            let last = i == parts.len() - 1;
            let value_ms =
                if last { parse_decimal_millis(part)? } else { parse_digits(part)?.checked_mul(1000)? };
            total_ms = total_ms.checked_mul(if i == 0 { 1 } else { 60 })?;
            total_ms = total_ms.checked_add(value_ms)?;
        }
        Some(MediaTime::from_millis(total_ms))
    }
}

/// A non-negative decimal integer of ASCII digits only (no sign, no spaces).
fn parse_digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `"12.345"` -> 12345 milliseconds, without going through floats.
fn parse_decimal_millis(text: &str) -> Option<i64> {
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let whole: i64 = if whole.is_empty() { 0 } else { parse_digits(whole)? };
    if !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut frac_ms = 0i64;
    for (i, c) in frac.chars().take(3).enumerate() {
        frac_ms += (c as i64 - '0' as i64) * 10i64.pow(2 - i as u32);
    }
    whole.checked_mul(1000)?.checked_add(frac_ms)
}

impl fmt::Debug for MediaTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for MediaTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let ms = abs / 1_000_000;
        let sub_ms = abs % 1_000_000;
        let secs = ms / 1000;
        if sub_ms == 0 {
            write!(f, "{sign}{}:{:02}.{:03}", secs / 60, secs % 60, ms % 1000)
        } else {
            write!(f, "{sign}{}:{:02}.{:03}{:06}", secs / 60, secs % 60, ms % 1000, sub_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_trip_at_common_timescales() {
        for &ts in &[1000u64, 90_000, 48_000, 44_100, 30_000, 1_000_000_000] {
            for &ticks in &[0i64, 1, 1001, 123_456_789, -3003] {
                let t = MediaTime::from_ticks(ticks, ts).expect("fits");
                assert_eq!(MediaTime::from_ticks(t.to_ticks(ts).expect("fits"), ts), Some(t));
            }
        }
        assert_eq!(MediaTime::from_ticks(1, 0), None);
        assert_eq!(MediaTime::from_ticks(i64::MAX, 1), None);
    }

    #[test]
    fn parses_human_times() {
        assert_eq!(MediaTime::parse("90"), Some(MediaTime::from_secs(90)));
        assert_eq!(MediaTime::parse("1:30.5"), Some(MediaTime::from_millis(90_500)));
        assert_eq!(MediaTime::parse("01:02:03.250"), Some(MediaTime::from_millis(3_723_250)));
        assert_eq!(MediaTime::parse("1500ms"), Some(MediaTime::from_millis(1500)));
        assert_eq!(MediaTime::parse("12.3s"), Some(MediaTime::from_millis(12_300)));
        assert_eq!(MediaTime::parse("x"), None);
        assert_eq!(MediaTime::parse("1:2:3:4"), None);
        assert_eq!(format!("{}", MediaTime::from_millis(61_005)), "1:01.005");
    }

    #[test]
    fn a_leading_minus_negates_the_whole_time() {
        assert_eq!(MediaTime::parse("-1.5"), Some(MediaTime::from_millis(-1_500)));
        assert_eq!(MediaTime::parse("-0.25s"), Some(MediaTime::from_millis(-250)));
        assert_eq!(MediaTime::parse("-1:30"), Some(MediaTime::from_millis(-90_000)));
        assert_eq!(MediaTime::parse("-200ms"), Some(MediaTime::from_millis(-200)));
        // Signs inside a time, or twice, are not times.
        for bad in ["1:-30", "--1", "+5", "1.-5", "-", "1:+3", "- 5"] {
            assert_eq!(MediaTime::parse(bad), None, "{bad:?}");
        }
    }
}
