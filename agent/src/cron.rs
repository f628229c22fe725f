//! When the device's cron jobs run: a sans-I/O scheduler (issue 14). It is told the desired
//! jobs and the time, and answers which jobs to start now and when to ask again; starting
//! the job's container is the caller's ([`crate::cron_runner`]).
//!
//! The rules, as a device needs them:
//! * A job fires at the minutes its schedule names, in UTC ([`Schedule::next_after`]), counted
//!   from when the agent learnt the job: fires missed while the agent was not running are not
//!   made up (cron's own behaviour).
//! * A run still going at the next fire is not started twice: that fire is skipped.
//! * A new job, a new version of a job (another incarnation or revision) or a new schedule
//!   starts counting from now; an unchanged job keeps its next fire.
//! * Clocks jump on devices: a Raspberry Pi has no real-time clock and boots with a stale
//!   time until NTP answers, and a suspended box wakes up late. A fire missed by more than
//!   [`LATE_LIMIT`] is skipped, not run late, and the clock going backwards counts every job
//!   from the new time — so a jump never starts a burst of runs, nor leaves a job waiting for
//!   a time the clock has already passed.

use nebula_protocol::cron::Schedule;
use nebula_protocol::{CronJob, Name, ObjectVersion};
use std::collections::BTreeMap;

/// How late a fire may still start: the scheduler is asked at least once a minute, so a
/// fire found later than this was missed (a clock jump, a suspended device), not delayed.
pub const LATE_LIMIT: i64 = 60;

/// What one call of [`Scheduler::due`] decided for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fire {
    /// Start a run of the job now; `at` is the fire time (Unix seconds) it stands for.
    Start { job: Name, at: i64 },
    /// The previous run is still going: this fire is skipped.
    StillRunning { job: Name, at: i64 },
    /// The fire was missed by more than [`LATE_LIMIT`] (a clock jump): skipped.
    Missed { job: Name, at: i64 },
}

/// The jobs' next fire times.
#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    jobs: BTreeMap<Name, Entry>,
    /// The latest time the scheduler was told, to notice the clock going backwards.
    last_now: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    version: ObjectVersion,
    schedule_text: String,
    schedule: Schedule,
    /// `None`: the schedule is never due (30 February).
    next: Option<i64>,
}

impl Scheduler {
    /// Sets the desired jobs at `now` (Unix seconds). Stopped jobs (`running: false`) and
    /// jobs whose schedule does not parse (the control plane validates schedules, so only a
    /// newer control plane's syntax could do that) have no fires. Returns the names of those
    /// left without fires that had some before.
    pub fn set_jobs(&mut self, jobs: &[CronJob], now: i64) -> Vec<Name> {
        self.observe_clock(now);
        let mut next_jobs = BTreeMap::new();
        for job in jobs.iter().filter(|job| job.running) {
            let Ok(schedule) = Schedule::parse(&job.schedule) else {
                tracing::warn!(job = %job.cron_job_name, schedule = job.schedule, "cron job schedule does not parse; it will not run");
                continue;
            };
            let unchanged = self.jobs.get(&job.cron_job_name).filter(|entry| {
                entry.version == job.version() && entry.schedule_text == job.schedule
            });
            let entry = match unchanged {
                Some(entry) => entry.clone(),
                None => Entry {
                    version: job.version(),
                    schedule_text: job.schedule.clone(),
                    schedule,
                    next: schedule.next_after(now),
                },
            };
            next_jobs.insert(job.cron_job_name.clone(), entry);
        }
        let dropped = self
            .jobs
            .keys()
            .filter(|name| !next_jobs.contains_key(*name))
            .cloned()
            .collect();
        self.jobs = next_jobs;
        dropped
    }

    /// The fires due at `now`, each job advanced to its next fire after `now`. `running`
    /// says whether a run of a job is still going.
    pub fn due(&mut self, now: i64, running: impl Fn(&Name) -> bool) -> Vec<Fire> {
        self.observe_clock(now);
        let mut fires = Vec::new();
        for (job, entry) in &mut self.jobs {
            let Some(at) = entry.next.filter(|&at| at <= now) else {
                continue;
            };
            let fire = if now - at > LATE_LIMIT {
                Fire::Missed {
                    job: job.clone(),
                    at,
                }
            } else if running(job) {
                Fire::StillRunning {
                    job: job.clone(),
                    at,
                }
            } else {
                Fire::Start {
                    job: job.clone(),
                    at,
                }
            };
            fires.push(fire);
            entry.next = entry.schedule.next_after(now);
        }
        fires
    }

    /// When to call [`Scheduler::due`] next: the earliest next fire, if any job has one.
    pub fn next_wake(&self) -> Option<i64> {
        self.jobs.values().filter_map(|entry| entry.next).min()
    }

    /// A clock that went backwards leaves every next fire too far ahead (a day, after a
    /// stale clock ahead by a day was corrected): count them all from `now` again.
    fn observe_clock(&mut self, now: i64) {
        if self.last_now.is_some_and(|last| now < last) {
            for entry in self.jobs.values_mut() {
                entry.next = entry.schedule.next_after(now);
            }
        }
        self.last_now = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T10:00:00Z.
    const T0: i64 = 1_796_119_200;
    const MINUTE: i64 = 60;

    fn job(name: &str, schedule: &str) -> CronJob {
        CronJob::new(Name::new(name).expect("name"), schedule, "busybox")
    }

    fn name(value: &str) -> Name {
        Name::new(value).expect("name")
    }

    fn started(fires: &[Fire]) -> Vec<(String, i64)> {
        fires
            .iter()
            .filter_map(|fire| match fire {
                Fire::Start { job, at } => Some((job.to_string(), *at)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn t0_is_what_the_tests_say() {
        assert_eq!(
            nebula_protocol::cron::Minute::containing(T0),
            nebula_protocol::cron::Minute {
                minute: 0,
                hour: 10,
                day_of_month: 1,
                month: 12,
                day_of_week: 2
            }
        );
    }

    #[test]
    fn every_minute_fires_once_per_minute_from_when_it_was_learnt() {
        let mut scheduler = Scheduler::default();
        scheduler.set_jobs(&[job("tick", "* * * * *")], T0 + 30);
        assert_eq!(scheduler.next_wake(), Some(T0 + MINUTE));
        // Nothing before the fire, one run at it, none again within the same minute.
        assert!(scheduler.due(T0 + 59, |_| false).is_empty());
        assert_eq!(
            started(&scheduler.due(T0 + MINUTE, |_| false)),
            [("tick".to_string(), T0 + MINUTE)]
        );
        assert!(scheduler.due(T0 + MINUTE + 30, |_| false).is_empty());
        // A little late (the caller woke late) still starts.
        assert_eq!(
            started(&scheduler.due(T0 + 2 * MINUTE + 5, |_| false)),
            [("tick".to_string(), T0 + 2 * MINUTE)]
        );
        assert_eq!(scheduler.next_wake(), Some(T0 + 3 * MINUTE));
    }

    #[test]
    fn a_run_still_going_is_not_started_twice() {
        let mut scheduler = Scheduler::default();
        scheduler.set_jobs(&[job("slow", "*/5 * * * *")], T0);
        let fires = scheduler.due(T0 + 5 * MINUTE, |job| job.as_str() == "slow");
        assert_eq!(
            fires,
            [Fire::StillRunning {
                job: name("slow"),
                at: T0 + 5 * MINUTE
            }]
        );
        // The next fire is the schedule's next one, not a retry.
        assert_eq!(scheduler.next_wake(), Some(T0 + 10 * MINUTE));
        assert_eq!(
            started(&scheduler.due(T0 + 10 * MINUTE, |_| false)).len(),
            1
        );
    }

    #[test]
    fn changes_count_from_now_and_unchanged_jobs_keep_their_fire() {
        let mut scheduler = Scheduler::default();
        scheduler.set_jobs(&[job("a", "0 * * * *"), job("b", "30 * * * *")], T0 - 1);
        assert_eq!(scheduler.next_wake(), Some(T0));
        // A group change later that keeps `a` as it was and changes `b`'s schedule.
        let dropped = scheduler.set_jobs(&[job("a", "0 * * * *"), job("b", "15 * * * *")], T0 - 1);
        assert!(dropped.is_empty());
        let fires = started(&scheduler.due(T0, |_| false));
        assert_eq!(fires, [("a".to_string(), T0)]);
        assert_eq!(scheduler.next_wake(), Some(T0 + 15 * MINUTE));
        // A new revision of `a` counts from now, too.
        let mut newer = job("a", "0 * * * *");
        newer.cron_job_id = 2;
        scheduler.set_jobs(&[newer, job("b", "15 * * * *")], T0 + MINUTE);
        assert_eq!(
            started(&scheduler.due(T0 + 60 * MINUTE, |_| false)),
            // `b` at :15 was missed by far more than a minute (nobody asked): skipped; `a`
            // at the next hour starts.
            [("a".to_string(), T0 + 60 * MINUTE)]
        );
    }

    #[test]
    fn stopped_removed_and_unparsable_jobs_have_no_fires() {
        let mut scheduler = Scheduler::default();
        scheduler.set_jobs(&[job("a", "* * * * *"), job("b", "* * * * *")], T0);
        let mut stopped = job("a", "* * * * *");
        stopped.running = false;
        let dropped = scheduler.set_jobs(&[stopped, job("c", "not a schedule")], T0);
        assert_eq!(dropped, [name("a"), name("b")]);
        assert_eq!(scheduler.next_wake(), None);
        assert!(scheduler.due(T0 + 10 * MINUTE, |_| false).is_empty());
        // Never due: no wake-up at all.
        scheduler.set_jobs(&[job("never", "0 0 30 2 *")], T0);
        assert_eq!(scheduler.next_wake(), None);
    }

    #[test]
    fn clock_jumps_start_no_burst_and_leave_no_job_waiting() {
        let mut scheduler = Scheduler::default();
        // Booted with a stale clock (a Pi without a real-time clock), then NTP moves it a
        // day ahead: one missed fire reported, no run, and the next fire after the new time.
        scheduler.set_jobs(&[job("tick", "* * * * *")], T0);
        let fires = scheduler.due(T0 + 86_400, |_| false);
        assert_eq!(
            fires,
            [Fire::Missed {
                job: name("tick"),
                at: T0 + MINUTE
            }]
        );
        assert_eq!(scheduler.next_wake(), Some(T0 + 86_400 + MINUTE));
        // The clock goes back an hour: the job fires a minute later, not in an hour.
        scheduler.due(T0 + 86_400 - 3_600, |_| false);
        assert_eq!(scheduler.next_wake(), Some(T0 + 86_400 - 3_600 + MINUTE));
    }
}
