//! Daily time windows (`22:00-06:00`, UTC) for off-peak work: a window may
//! wrap past midnight.

use std::fmt;
use std::time::Duration;

const DAY_MIN: u32 = 24 * 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight UTC.
    start: u32,
    end: u32,
}

fn minutes(text: &str, whole: &str) -> Result<u32, String> {
    let bad = || {
        format!("window '{whole}': '{text}' is not a time of day; write HH:MM-HH:MM in UTC, e.g. 22:00-06:00")
    };
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 || m >= 60 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl std::str::FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Window, String> {
        let (a, b) = text.split_once('-').ok_or_else(|| {
            format!("window '{text}' has no '-': write HH:MM-HH:MM in UTC, e.g. 22:00-06:00")
        })?;
        let (start, end) = (minutes(a, text)?, minutes(b, text)?);
        if start == end {
            return Err(format!(
                "window '{text}' is empty: its start and end are the same time"
            ));
        }
        Ok(Window { start, end })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl Window {
    fn minute_of_day(ms: i64) -> u32 {
        (ms.div_euclid(60_000)).rem_euclid(i64::from(DAY_MIN)) as u32
    }

    /// Whether the instant `ms` (epoch milliseconds) falls in the window.
    pub fn contains(&self, ms: i64) -> bool {
        let m = Self::minute_of_day(ms);
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// How long from `ms` until the window opens (zero when it is open).
    pub fn opens_in(&self, ms: i64) -> Duration {
        if self.contains(ms) {
            return Duration::ZERO;
        }
        let into_minute = ms.rem_euclid(60_000) as u64;
        let m = Self::minute_of_day(ms);
        let minutes = (self.start + DAY_MIN - m) % DAY_MIN;
        Duration::from_millis(u64::from(minutes) * 60_000 - into_minute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn windows_wrap_midnight_and_say_when_they_open() {
        let w: Window = "22:00-06:00".parse().unwrap();
        assert_eq!(w.to_string(), "22:00-06:00");
        assert!(w.contains(23 * H) && w.contains(2 * H) && !w.contains(12 * H));
        assert!(!w.contains(6 * H) && w.contains(22 * H));
        assert_eq!(w.opens_in(12 * H), Duration::from_secs(10 * 3600));
        assert_eq!(
            w.opens_in(21 * H + 30 * 60_000 + 1_000),
            Duration::from_secs(29 * 60 + 59)
        );
        assert_eq!(w.opens_in(23 * H), Duration::ZERO);
        let day: Window = "09:30-17:00".parse().unwrap();
        assert!(day.contains(10 * H) && !day.contains(18 * H));
        assert_eq!(
            day.opens_in(18 * H),
            Duration::from_secs(15 * 3600 + 30 * 60)
        );
    }

    #[test]
    fn bad_windows_are_named() {
        for (text, want) in [
            ("22:00", "has no '-'"),
            ("25:00-06:00", "'25:00' is not a time of day"),
            ("22:00-6", "'6' is not a time of day"),
            ("05:00-05:00", "is empty"),
        ] {
            let e = text.parse::<Window>().unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
