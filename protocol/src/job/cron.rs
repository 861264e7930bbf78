//! Cron schedules: five fields (minute hour day-of-month month day-of-week) or six (a leading second), in UTC, with
//! `*`, `N`, `A-B`, `*/S`, `A-B/S`, `N/S` and comma lists, month and weekday names (`jan`, `mon`), weekday 7 as
//! Sunday, and the shorthands `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`. When both day-of-month and
//! day-of-week are restricted a day matching either fires (Vixie cron's rule).
//!
//! The state machine computes instants from the log clock, so this is pure arithmetic on milliseconds since the Unix
//! epoch; a property test checks [`Schedule::next_after`] against a second-by-second search.

use crate::error::WireError;

/// How far ahead a schedule's next instant is looked for (28 years: every weekday of every date comes round).
const SEARCH_DAYS: i64 = 28 * 366;
const DAY_MS: u64 = 86_400_000;

/// A parsed schedule: one bit set per field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday 0.
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, WireError> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            count => {
                return Err(WireError::invalid(format!(
                    "cron schedule {text:?} has {count} fields; it needs 5 (minute hour day month weekday) or 6 (a \
                     leading second)"
                )));
            }
        };
        let field = |name: &str, spec: &str, low: u32, high: u32, names: &[&str]| {
            parse_field(spec, low, high, names)
                .map_err(|why| WireError::invalid(format!("cron schedule {text:?}: the {name} field {spec:?} {why}")))
        };
        let seconds = field("second", second, 0, 59, &[])?;
        let minutes = field("minute", rest[0], 0, 59, &[])?;
        let hours = field("hour", rest[1], 0, 23, &[])?;
        let days = field("day-of-month", rest[2], 1, 31, &[])?;
        let months = field("month", rest[3], 1, 12, &MONTHS)?;
        let mut weekdays = field("day-of-week", rest[4], 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let schedule = Schedule {
            seconds,
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_restricted: rest[2] != "*",
            weekdays_restricted: rest[4] != "*",
        };
        if schedule.next_after(0).is_none() {
            return Err(WireError::invalid(format!("cron schedule {text:?} names no date that exists")));
        }
        Ok(schedule)
    }

    fn day_matches(&self, days: i64) -> bool {
        let (_, month, day) = civil_from_days(days);
        if self.months & (1 << month) == 0 {
            return false;
        }
        let weekday = (days + 4).rem_euclid(7) as u32;
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        if self.days_restricted && self.weekdays_restricted { by_day || by_weekday } else { by_day && by_weekday }
    }

    /// The first instant (whole seconds, in milliseconds) strictly after `after_ms`, if one comes within 28 years.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let start = after_ms / 1000 + 1;
        let (first_day, first_second) = ((start / 86_400) as i64, (start % 86_400) as u32);
        for day in first_day..first_day + SEARCH_DAYS {
            if !self.day_matches(day) {
                continue;
            }
            let from = if day == first_day { first_second } else { 0 };
            if let Some(second) = self.first_second_of_day(from) {
                return Some(day as u64 * DAY_MS + u64::from(second) * 1000);
            }
        }
        None
    }

    /// The first second of a day at or after `from` whose hour, minute and second match.
    fn first_second_of_day(&self, from: u32) -> Option<u32> {
        let (from_hour, from_minute, from_second) = (from / 3600, from / 60 % 60, from % 60);
        for hour in from_hour..24 {
            if self.hours & (1 << hour) == 0 {
                continue;
            }
            let minute_start = if hour == from_hour { from_minute } else { 0 };
            for minute in minute_start..60 {
                if self.minutes & (1 << minute) == 0 {
                    continue;
                }
                let second_start = if hour == from_hour && minute == from_minute { from_second } else { 0 };
                if let Some(second) = (second_start..60).find(|second| self.seconds & (1 << second) != 0) {
                    return Some(hour * 3600 + minute * 60 + second);
                }
            }
        }
        None
    }

    /// Whether instant `ms` (whole seconds) is one of the schedule's: the reference the property test searches with.
    pub fn matches(&self, ms: u64) -> bool {
        let seconds = ms / 1000;
        let (day, in_day) = ((seconds / 86_400) as i64, seconds % 86_400);
        ms.is_multiple_of(1000)
            && self.day_matches(day)
            && self.hours & (1 << (in_day / 3600)) != 0
            && self.minutes & (1 << (in_day / 60 % 60)) != 0
            && self.seconds & (1 << (in_day % 60)) != 0
    }
}

/// One field as a bit set of `low..=high`.
fn parse_field(spec: &str, low: u32, high: u32, names: &[&str]) -> Result<u64, String> {
    let value = |text: &str| -> Result<u32, String> {
        let lower = text.to_ascii_lowercase();
        if let Some(index) = names.iter().position(|name| *name == lower) {
            // Month names count from 1 (the field's low end), weekday names from 0.
            return Ok(index as u32 + low);
        }
        let number: u32 = text.parse().map_err(|_| format!("holds {text:?}, which is not a number"))?;
        if !(low..=high).contains(&number) {
            return Err(format!("holds {number}, outside {low}-{high}"));
        }
        Ok(number)
    };
    let mut bits = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| format!("has step {step:?}, which is not a number"))?;
                if step == 0 {
                    return Err("has a step of 0".into());
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (first, last) = match range {
            "*" => (low, high),
            _ => match range.split_once('-') {
                Some((first, last)) => (value(first)?, value(last)?),
                // `N/S` runs from N to the end.
                None if step > 1 || part.contains('/') => (value(range)?, high),
                None => {
                    let single = value(range)?;
                    (single, single)
                }
            },
        };
        if first > last {
            return Err(format!("has the range {first}-{last}, which runs backwards"));
        }
        bits |= (first..=last).step_by(step as usize).fold(0u64, |bits, value| bits | (1 << value));
    }
    Ok(bits)
}

/// (year, month 1..=12, day 1..=31) of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// 2026-12-04T00:00:00Z, a Friday.
    const FRIDAY: u64 = 1_796_342_400_000;

    #[test]
    fn the_calendar_agrees_with_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days((FRIDAY / DAY_MS) as i64), (2026, 12, 4));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(((FRIDAY / DAY_MS) as i64 + 4).rem_euclid(7), 5, "a Friday");
    }

    #[test]
    fn schedules_fire_where_cron_says() {
        let next = |text: &str, after: u64| Schedule::parse(text).unwrap().next_after(after).unwrap();
        assert_eq!(next("* * * * * *", FRIDAY), FRIDAY + 1000);
        assert_eq!(next("* * * * *", FRIDAY), FRIDAY + 60_000);
        assert_eq!(next("0 3 * * *", FRIDAY), FRIDAY + 3 * 3_600_000);
        assert_eq!(next("*/15 * * * *", FRIDAY + 1), FRIDAY + 15 * 60_000);
        assert_eq!(next("0 0 * * mon", FRIDAY), FRIDAY + 3 * DAY_MS);
        assert_eq!(next("0 0 * * 7", FRIDAY), FRIDAY + 2 * DAY_MS, "7 is Sunday");
        assert_eq!(next("@monthly", FRIDAY), FRIDAY + 28 * DAY_MS, "1 January");
        // Both day fields restricted: either one fires (the 5th, or Sunday the 6th).
        assert_eq!(next("0 0 5 * sun", FRIDAY), FRIDAY + DAY_MS);
        // Only 29 February: the next leap year.
        let leap = next("0 0 29 feb *", FRIDAY);
        assert_eq!(civil_from_days((leap / DAY_MS) as i64), (2028, 2, 29));
    }

    #[test]
    fn a_schedule_that_cannot_be_read_or_never_fires_is_refused_with_the_field_named() {
        for (text, says) in [
            ("* * * *", "4 fields"),
            ("60 * * * *", "minute field"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "step of 0"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
            ("0 0 31 feb *", "no date"),
        ] {
            let error = Schedule::parse(text).unwrap_err();
            assert!(error.message.contains(says), "{text}: {}", error.message);
        }
    }

    fn field(low: u32, high: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            (low..=high).prop_map(|value| value.to_string()),
            (1..=(high - low + 1).min(20)).prop_map(|step| format!("*/{step}")),
            (low..=high, low..=high).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (low..=high, low..=high).prop_map(|(a, b)| format!("{a},{b}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The next instant is the first one a second-by-second search finds, over two days from a random start.
        #[test]
        fn the_next_instant_is_the_first_that_matches(
            second in field(0, 59), minute in field(0, 59), hour in field(0, 23),
            start in 0u64..4_000_000_000_000,
        ) {
            let schedule = Schedule::parse(&format!("{second} {minute} {hour} * * *")).unwrap();
            let next = schedule.next_after(start).unwrap();
            prop_assert!(next > start && schedule.matches(next));
            let mut probe = (start / 1000 + 1) * 1000;
            while probe < next.min(start + 2 * DAY_MS) {
                prop_assert!(!schedule.matches(probe), "{probe} matches before {next}");
                probe += 1000;
            }
        }

        #[test]
        fn day_fields_agree_with_the_reference(
            day in field(1, 31), month in field(1, 12), weekday in field(0, 6), start in 0u64..4_000_000_000_000,
        ) {
            let parsed = Schedule::parse(&format!("0 0 {day} {month} {weekday}"));
            prop_assume!(parsed.is_ok(), "a date that never exists (31 February)");
            let schedule = parsed.unwrap();
            let next = schedule.next_after(start).unwrap();
            prop_assert!(next > start && schedule.matches(next));
            let mut probe = (start / DAY_MS + 1) * DAY_MS;
            while probe < next.min(start + 400 * DAY_MS) {
                prop_assert!(!schedule.matches(probe), "{probe} matches before {next}");
                probe += DAY_MS;
            }
        }
    }
}
