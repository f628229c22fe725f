//! Five-field cron schedules (`minute hour day-of-month month day-of-week`).
//!
//! The control plane validates schedules with this parser; [`Schedule::next_after`] says
//! when a job is next due, for the agent's scheduler (issue 14; not wired in yet). Supported per field: `*`, `N`, `A-B`,
//! `*/S`, `A-B/S`, `N/S`, and comma lists of those; day-of-week 0–7 with both 0 and 7
//! meaning Sunday. Times are UTC: no daylight-saving gaps or repeats to handle. As in Vixie
//! cron, when neither day field starts with `*` either one matching is enough; otherwise both
//! must match (so `*/2` in one of them restricts the days together with the other).

/// Seconds in a minute and minutes in a day.
const MINUTE: i64 = 60;
const MINUTES_PER_DAY: i64 = 24 * 60;
/// The Gregorian calendar repeats every 400 years: a schedule not due within that many days
/// is never due (`0 0 30 2 *`).
const DAYS_PER_400_YEARS: i64 = 146_097;

/// Why a schedule could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron schedule: {0}")]
pub struct ScheduleError(String);

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Cron's rule: when both day fields are restricted, either one matching is enough.
    days_either: bool,
}

/// A wall-clock minute to test a schedule against (UTC on the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    pub minute: u32,
    pub hour: u32,
    pub day_of_month: u32,
    pub month: u32,
    /// 0 = Sunday.
    pub day_of_week: u32,
}

impl Minute {
    /// The UTC minute that contains `unix` (seconds since 1970-01-01T00:00:00Z).
    pub fn containing(unix: i64) -> Self {
        let minutes = unix.div_euclid(MINUTE);
        let day = minutes.div_euclid(MINUTES_PER_DAY);
        let of_day = u32::try_from(minutes.rem_euclid(MINUTES_PER_DAY)).unwrap_or(0);
        let (_, month, day_of_month) = civil_from_days(day);
        Self {
            minute: of_day % 60,
            hour: of_day / 60,
            day_of_month,
            month,
            day_of_week: weekday(day),
        }
    }
}

impl Schedule {
    pub fn parse(schedule: &str) -> Result<Self, ScheduleError> {
        let fields: Vec<&str> = schedule.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = fields.as_slice() else {
            return Err(ScheduleError(format!(
                "expected 5 fields, got {}",
                fields.len()
            )));
        };
        let mut days_of_week = parse_field(day_of_week, 0, 7)?;
        // 7 is Sunday too.
        if days_of_week & (1 << 7) != 0 {
            days_of_week |= 1;
        }
        Ok(Self {
            minutes: parse_field(minute, 0, 59)?,
            hours: parse_field(hour, 0, 23)?,
            days_of_month: parse_field(day_of_month, 1, 31)?,
            months: parse_field(month, 1, 12)?,
            days_of_week,
            days_either: !day_of_month.starts_with('*') && !day_of_week.starts_with('*'),
        })
    }

    /// Whether the schedule is due in `minute`.
    pub fn matches(&self, minute: Minute) -> bool {
        bit(self.minutes, minute.minute)
            && bit(self.hours, minute.hour)
            && self.day_matches(minute.month, minute.day_of_month, minute.day_of_week)
    }

    /// The start (Unix seconds, a whole minute) of the first minute strictly after the one
    /// containing `after` in which the schedule is due; `None` when it is never due (a date
    /// that does not exist, such as 30 February) or the time is out of range. A scheduler
    /// that fired at `t` asks for `next_after(t)`, so one minute never fires twice.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let first = after.div_euclid(MINUTE).checked_add(1)?;
        let mut day = first.div_euclid(MINUTES_PER_DAY);
        let mut from = u32::try_from(first.rem_euclid(MINUTES_PER_DAY)).ok()?;
        // Day by day (a few hundred thousand cheap steps at worst, for a schedule that is
        // never due), then the first due minute of the first due day.
        for _ in 0..=DAYS_PER_400_YEARS {
            let (_, month, day_of_month) = civil_from_days(day);
            if self.day_matches(month, day_of_month, weekday(day))
                && let Some(minute) = self.first_minute_from(from)
            {
                return day
                    .checked_mul(MINUTES_PER_DAY)?
                    .checked_add(i64::from(minute))?
                    .checked_mul(MINUTE);
            }
            day = day.checked_add(1)?;
            from = 0;
        }
        None
    }

    fn day_matches(&self, month: u32, day_of_month: u32, day_of_week: u32) -> bool {
        let by_month = bit(self.days_of_month, day_of_month);
        let by_week = bit(self.days_of_week, day_of_week);
        let day = if self.days_either {
            by_month || by_week
        } else {
            by_month && by_week
        };
        bit(self.months, month) && day
    }

    /// The first due minute of a due day at or after `from` (minutes since midnight).
    fn first_minute_from(&self, from: u32) -> Option<u32> {
        (from / 60..24)
            .filter(|&hour| bit(self.hours, hour))
            .find_map(|hour| {
                let earliest = if hour == from / 60 { from % 60 } else { 0 };
                let due = (self.minutes >> earliest) << earliest;
                (due != 0).then(|| hour * 60 + due.trailing_zeros())
            })
    }
}

fn bit(mask: u64, value: u32) -> bool {
    value < 64 && mask & (1 << value) != 0
}

/// Day 0 (1970-01-01) was a Thursday; 0 = Sunday.
fn weekday(day: i64) -> u32 {
    u32::try_from((day + 4).rem_euclid(7)).unwrap_or(0)
}

/// (year, month 1–12, day 1–31) of the `day`th day since 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`). Public for the CLI's dates.
pub fn civil_from_days(day: i64) -> (i64, u32, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(DAYS_PER_400_YEARS);
    let day_of_era = z.rem_euclid(DAYS_PER_400_YEARS);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day_of_month = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day_of_month).unwrap_or(1),
    )
}

fn parse_field(field: &str, low: u32, high: u32) -> Result<u64, ScheduleError> {
    let error = || ScheduleError(format!("field {field:?} must use values {low}-{high}"));
    let mut mask = 0u64;
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().map_err(|_| error())?),
            None => (item, 1),
        };
        if step == 0 {
            return Err(error());
        }
        let (start, end) = if range == "*" {
            (low, high)
        } else if let Some((start, end)) = range.split_once('-') {
            (
                start.parse().map_err(|_| error())?,
                end.parse().map_err(|_| error())?,
            )
        } else {
            let value: u32 = range.parse().map_err(|_| error())?;
            // `N/S` means from N to the end in steps of S.
            (value, if item.contains('/') { high } else { value })
        };
        if start < low || end > high || start > end {
            return Err(error());
        }
        for value in (start..=end).step_by(step as usize) {
            mask |= 1 << value;
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32, hour: u32, day_of_month: u32, month: u32, day_of_week: u32) -> Minute {
        Minute {
            minute,
            hour,
            day_of_month,
            month,
            day_of_week,
        }
    }

    #[test]
    fn parses_and_matches() {
        let every_five = Schedule::parse("*/5 * * * *").expect("valid");
        assert!(every_five.matches(at(10, 3, 1, 1, 0)));
        assert!(!every_five.matches(at(11, 3, 1, 1, 0)));

        let nightly = Schedule::parse("30 2 * * 1-5").expect("valid");
        assert!(nightly.matches(at(30, 2, 9, 6, 3)));
        assert!(!nightly.matches(at(30, 2, 9, 6, 6)));

        let sunday = Schedule::parse("0 0 * * 7").expect("valid");
        assert!(sunday.matches(at(0, 0, 4, 4, 0)));

        let either = Schedule::parse("0 0 1 * 1").expect("valid");
        assert!(either.matches(at(0, 0, 1, 5, 4)));
        assert!(either.matches(at(0, 0, 7, 5, 1)));
        assert!(!either.matches(at(0, 0, 7, 5, 2)));

        let list = Schedule::parse("0,15,30-40/5 * * * *").expect("valid");
        for minute in [0, 15, 30, 35, 40] {
            assert!(list.matches(at(minute, 0, 1, 1, 0)), "{minute}");
        }
        assert!(!list.matches(at(45, 0, 1, 1, 0)));
    }

    /// Unix seconds of a UTC date and time (Hinnant's `days_from_civil`, the inverse of
    /// the code under test, written independently).
    fn unix(year: i64, month: i64, day: i64, hour: i64, minute: i64) -> i64 {
        let year = if month <= 2 { year - 1 } else { year };
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let month_index = if month > 2 { month - 3 } else { month + 9 };
        let day_of_year = (153 * month_index + 2) / 5 + day - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        let days = era * 146_097 + day_of_era - 719_468;
        ((days * 24 + hour) * 60 + minute) * 60
    }

    fn fires(schedule: &str, from: i64, count: usize) -> Vec<i64> {
        let schedule = Schedule::parse(schedule).expect("valid");
        let mut times = Vec::new();
        let mut after = from;
        for _ in 0..count {
            let Some(next) = schedule.next_after(after) else {
                break;
            };
            times.push(next);
            after = next;
        }
        times
    }

    #[test]
    fn minutes_know_their_date_and_weekday() {
        // 2026-12-01 was a Tuesday; 2000-02-29 a Tuesday; 1969-12-31 a Wednesday.
        assert_eq!(
            Minute::containing(unix(2026, 12, 1, 10, 29) + 59),
            at(29, 10, 1, 12, 2)
        );
        assert_eq!(
            Minute::containing(unix(2000, 2, 29, 23, 59)),
            at(59, 23, 29, 2, 2)
        );
        assert_eq!(Minute::containing(-1), at(59, 23, 31, 12, 3));
        for days in (-800_000..800_000).step_by(97) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(
                unix(year, i64::from(month), i64::from(day), 0, 0),
                days * 86_400,
                "day {days}"
            );
        }
    }

    #[test]
    fn next_fire_is_strictly_after_and_on_the_minute() {
        let start = unix(2026, 12, 1, 10, 7);
        assert_eq!(fires("* * * * *", start, 1), [start + 60]);
        assert_eq!(fires("* * * * *", start + 59, 1), [start + 60]);
        assert_eq!(
            fires("*/15 * * * *", start + 30, 4),
            [
                unix(2026, 12, 1, 10, 15),
                unix(2026, 12, 1, 10, 30),
                unix(2026, 12, 1, 10, 45),
                unix(2026, 12, 1, 11, 0)
            ]
        );
        // Over the end of a day, a month and a year.
        assert_eq!(
            fires("*/20 * * * *", unix(1999, 12, 31, 23, 40), 2),
            [unix(2000, 1, 1, 0, 0), unix(2000, 1, 1, 0, 20)]
        );
    }

    #[test]
    fn lists_ranges_and_steps() {
        let day = |hour, minute| unix(2026, 6, 9, hour, minute);
        assert_eq!(
            fires("5,10-12 9-10 * * *", day(8, 0), 9),
            [
                day(9, 5),
                day(9, 10),
                day(9, 11),
                day(9, 12),
                day(10, 5),
                day(10, 10),
                day(10, 11),
                day(10, 12),
                unix(2026, 6, 10, 9, 5)
            ]
        );
        assert_eq!(
            fires("30 2 * * 1-5", unix(2026, 12, 4, 3, 0), 2),
            // Friday after 02:30 → Monday, then Tuesday.
            [unix(2026, 12, 7, 2, 30), unix(2026, 12, 8, 2, 30)]
        );
        assert_eq!(
            fires("0 */6 * * *", unix(2026, 1, 1, 19, 0), 2),
            [unix(2026, 1, 2, 0, 0), unix(2026, 1, 2, 6, 0)]
        );
    }

    #[test]
    fn month_ends_and_leap_days() {
        // The 31st skips the months without one.
        assert_eq!(
            fires("0 0 31 * *", unix(2026, 1, 31, 0, 0), 3),
            [
                unix(2026, 3, 31, 0, 0),
                unix(2026, 5, 31, 0, 0),
                unix(2026, 7, 31, 0, 0)
            ]
        );
        // 29 February: 2000 was a leap year, 2100 is not.
        assert_eq!(
            fires("0 12 29 2 *", unix(1999, 3, 1, 0, 0), 2),
            [unix(2000, 2, 29, 12, 0), unix(2004, 2, 29, 12, 0)]
        );
        assert_eq!(
            fires("0 12 29 2 *", unix(2096, 3, 1, 0, 0), 1),
            [unix(2104, 2, 29, 12, 0)]
        );
        // Dates that never exist.
        assert_eq!(fires("0 0 30 2 *", 0, 1), []);
        assert_eq!(fires("0 0 31 4,6,9,11 *", 0, 1), []);
        // Either day field when both are restricted: the 13th, or any Friday.
        assert_eq!(
            fires("0 0 13 * 5", unix(2026, 11, 1, 0, 0), 3),
            [
                unix(2026, 11, 6, 0, 0),
                unix(2026, 11, 13, 0, 0),
                unix(2026, 11, 20, 0, 0)
            ]
        );
    }

    #[test]
    fn next_fire_agrees_with_a_minute_by_minute_scan() {
        // A small deterministic generator: the crate has no randomness dependency.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let fields = [
            ["*", "*/7", "0,30", "15-20", "59"],
            ["*", "*/5", "0", "22-23", "3,9"],
            ["*", "1", "28-31", "*/10", "15"],
            ["*", "2", "*/3", "1-2", "12"],
            ["*", "0", "1-5", "6,0", "*/2"],
        ];
        for _ in 0..200 {
            let schedule: Vec<&str> = fields
                .iter()
                .map(|options| options[usize::try_from(next(5)).expect("small")])
                .collect();
            let schedule = schedule.join(" ");
            let parsed = Schedule::parse(&schedule).expect("valid");
            let after =
                unix(2020, 1, 1, 0, 0) + i64::try_from(next(10 * 365 * 86_400)).expect("small");
            let expected = (1..=2 * 366 * 24 * 60)
                .map(|minutes| (after.div_euclid(60) + minutes) * 60)
                .find(|&start| parsed.matches(Minute::containing(start)));
            match expected {
                Some(expected) => {
                    assert_eq!(
                        parsed.next_after(after),
                        Some(expected),
                        "{schedule} after {after}"
                    );
                }
                // Beyond the scan (a leap day): at least later than it.
                None => assert!(
                    parsed
                        .next_after(after)
                        .is_none_or(|next| next > after + 2 * 366 * 86_400),
                    "{schedule} after {after}"
                ),
            }
        }
    }

    #[test]
    fn rejects_bad_schedules() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "1,,2 * * * *",
            "-1 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
    }
}
