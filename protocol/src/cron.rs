//! Five-field cron schedules (`minute hour day-of-month month day-of-week`).
//!
//! The control plane validates schedules with this parser; the agent's scheduler asks it
//! whether a minute is due. Supported per field: `*`, `N`, `A-B`, `*/S`, `A-B/S`, `N/S`, and
//! comma lists of those; day-of-week 0–7 with both 0 and 7 meaning Sunday.

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
        let bit = |mask: u64, value: u32| value < 64 && mask & (1 << value) != 0;
        let day_of_month = bit(self.days_of_month, minute.day_of_month);
        let day_of_week = bit(self.days_of_week, minute.day_of_week);
        let day = if self.days_either {
            day_of_month || day_of_week
        } else {
            day_of_month && day_of_week
        };
        bit(self.minutes, minute.minute)
            && bit(self.hours, minute.hour)
            && bit(self.months, minute.month)
            && day
    }
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
