//! Schedules: a task (or a code) run at cron times in a time zone, or every
//! N seconds, between `start_at` and `end_at`, at most `run_times` times.
//!
//! A schedule's times are *slots*. The server keeps each schedule's next
//! slot in the store and fires it in the same transaction that creates its
//! task and moves the next slot on, guarded by compare-and-set on the slot
//! (and the leader's lease): a slot fires once, across restarts and leader
//! changes. What to do with the slots that came due is decided here, purely
//! ([`due`]), so tests can move a clock by hand.

use crate::{FieldError, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::str::FromStr;
use std::time::Duration;

/// A slot older than this when the server looks at it was missed (the
/// server was down or busy), and goes by the schedule's [`CatchUp`].
pub const MISSED_AFTER: Duration = Duration::from_secs(30);

/// The most slots fired for one schedule at one look (more are missed).
pub const MAX_SLOTS_AT_ONCE: usize = 100;

/// A cron pattern must match within this many years of its schedule's
/// start: the cron library looks as far as the year 5000 for the next
/// time of a pattern that never matches (`0 0 31 2 *`), hundreds of
/// milliseconds of CPU per look.
pub const CRON_HORIZON_YEARS: i32 = 8;

/// What to do when a slot comes due while the schedule's previous task is
/// still queued or running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Run it anyway.
    #[default]
    Allow,
    /// Skip the slot.
    Skip,
}

/// What to do with slots missed while no server could fire them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run once for all of them, on return.
    #[default]
    Once,
    /// Run none of them; go on with the next slot.
    Skip,
}

/// A schedule as created: the body of `POST /v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A name for people (not unique).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its project (left out: the token's; with the admin token, the
    /// task's, else `default`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// A cron expression: five fields (minute hour day-of-month month
    /// day-of-week), or six with seconds first (`* * * * * *` is every
    /// second); `@hourly`, `@daily`, …. It must match within 8 years. Not
    /// with `run_every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone the cron expression is read in (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Run every this many seconds (1 to 31536000), from `start_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_every: Option<u32>,
    /// No slot before this (RFC 3339; default: creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_at: Option<Timestamp>,
    /// No slot after this (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_at: Option<Timestamp>,
    /// At most this many runs: slots that made a task, or failed to (its
    /// project's quota, a deleted code), so that a blocked schedule still
    /// ends. Slots skipped by `overlap` or missed do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_times: Option<u32>,
    /// The task each slot creates, as for `POST /v1/tasks` (it may name a
    /// `code`; the code's latest revision at each slot is used unless it
    /// pins `code_revision`).
    #[schema(value_type = Object)]
    pub task: Map<String, Value>,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub catch_up: CatchUp,
}

/// A schedule's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleState {
    Active,
    Paused,
    /// No slot left (past `end_at`, or `run_times` reached).
    Done,
    /// Removed by a user; kept for the record.
    Cancelled,
}

impl ScheduleState {
    /// The name in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleState::Active => "active",
            ScheduleState::Paused => "paused",
            ScheduleState::Done => "done",
            ScheduleState::Cancelled => "cancelled",
        }
    }

    /// Parses [`ScheduleState::as_str`]'s names.
    pub fn parse(name: &str) -> Option<ScheduleState> {
        [ScheduleState::Active, ScheduleState::Paused, ScheduleState::Done, ScheduleState::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// A schedule as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    pub id: String,
    pub state: ScheduleState,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// The next slot, while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_at: Option<Timestamp>,
    /// Slots that created a task.
    pub fired: u32,
    /// Slots skipped (overlap, missed, and those that failed).
    pub skipped: u32,
    /// Slots whose task could not be made (a quota, a deleted code):
    /// counted by `run_times` with `fired`.
    #[serde(default)]
    pub failed: u32,
    /// The task the last fired slot created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_fired_at: Option<Timestamp>,
    /// Why its latest slots were skipped (its task could not be made: a
    /// quota, a deleted code); gone once a slot fires again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub spec: ScheduleSpec,
}

/// A schedule's slots, parsed.
#[derive(Debug, Clone)]
pub enum Slots {
    Cron { cron: Box<croner::Cron>, zone: chrono_tz::Tz, end: Option<Timestamp> },
    Every { every_ms: i64, anchor: Timestamp, end: Option<Timestamp> },
}

impl ScheduleSpec {
    /// Parses and checks the timing fields (the task is checked by the
    /// server, which resolves codes).
    pub fn slots(&self, created_at: Timestamp) -> Result<Slots, FieldError> {
        if let Some(name) = &self.name {
            if name.len() > 200 || name.chars().any(char::is_control) {
                return Err(FieldError::new("name", "at most 200 characters, no control characters"));
            }
        }
        if let (Some(start), Some(end)) = (self.start_at, self.end_at) {
            if end < start {
                return Err(FieldError::new("end_at", "is before start_at"));
            }
        }
        if self.run_times == Some(0) {
            return Err(FieldError::new("run_times", "must be at least 1"));
        }
        let end = self.end_at;
        match (&self.cron, self.run_every) {
            (Some(_), Some(_)) => Err(FieldError::new("run_every", "give either cron or run_every, not both")),
            (None, None) => Err(FieldError::new("cron", "give cron (with time_zone) or run_every")),
            (None, Some(every)) => {
                if self.time_zone.is_some() {
                    return Err(FieldError::new("time_zone", "only with cron"));
                }
                if !(1..=31_536_000).contains(&every) {
                    return Err(FieldError::new("run_every", "must be between 1 and 31536000 seconds"));
                }
                Ok(Slots::Every { every_ms: i64::from(every) * 1000, anchor: self.start_at.unwrap_or(created_at), end })
            }
            (Some(text), None) => {
                if text.split_whitespace().count() > 6 {
                    return Err(FieldError::new("cron", format!("`{text}`: five fields, or six with seconds first")));
                }
                let cron = croner::Cron::from_str(text.trim()).map_err(|e| FieldError::new("cron", format!("`{text}`: {e}")))?;
                let zone_name = self.time_zone.as_deref().unwrap_or("UTC");
                let zone = chrono_tz::Tz::from_str(zone_name)
                    .map_err(|_| FieldError::new("time_zone", format!("`{zone_name}` is not an IANA time zone (e.g. Europe/Berlin)")))?;
                // A pattern that matches no time at all (30 February), or
                // none for years: refused without asking the cron library,
                // which would look until the year 5000.
                let from = self.start_at.unwrap_or(created_at).max(created_at);
                let year = to_chrono(from).map_or(1970, |t| chrono::Datelike::year(&t));
                if !matches_within(&cron, year, CRON_HORIZON_YEARS) {
                    return Err(FieldError::new("cron", format!("`{text}` matches no day within {CRON_HORIZON_YEARS} years")));
                }
                Ok(Slots::Cron { cron: Box::new(cron), zone, end })
            }
        }
    }

    /// The first slot of a schedule created at `created_at`.
    pub fn first_slot(&self, slots: &Slots, created_at: Timestamp) -> Option<Timestamp> {
        let from = self.start_at.unwrap_or(created_at).max(created_at);
        slots.after(from.minus(Duration::from_millis(1)))
    }
}

/// Whether `cron` matches some day in `years` years from `from_year` (day
/// by day: at most some 3,000 cheap checks; any hour, minute and second
/// field matches some value).
fn matches_within(cron: &croner::Cron, from_year: i32, years: i32) -> bool {
    let pattern = &cron.pattern;
    for year in from_year..from_year.saturating_add(years) {
        if !pattern.year_match(year).unwrap_or(false) {
            continue;
        }
        for month in 1..=12u32 {
            if !pattern.month_match(month).unwrap_or(false) {
                continue;
            }
            let days = chrono::NaiveDate::from_ymd_opt(year, month, 1)
                .and_then(|first| first.checked_add_months(chrono::Months::new(1)))
                .and_then(|next| next.pred_opt())
                .map_or(28, |last| chrono::Datelike::day(&last));
            if (1..=days).any(|day| pattern.day_match(year, month, day).unwrap_or(false)) {
                return true;
            }
        }
    }
    false
}

fn to_chrono(at: Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(at.millis())
}

impl Slots {
    /// The first slot strictly after `t`, if any is left before the end.
    pub fn after(&self, t: Timestamp) -> Option<Timestamp> {
        let next = match self {
            Slots::Every { every_ms, anchor, .. } => {
                if t < *anchor {
                    *anchor
                } else {
                    let steps = (t.millis() - anchor.millis()) / every_ms + 1;
                    Timestamp(anchor.millis().checked_add(steps.checked_mul(*every_ms)?)?)
                }
            }
            Slots::Cron { cron, zone, .. } => {
                // Slots are whole seconds: look from the second `t` is in.
                let local = to_chrono(Timestamp(t.millis().div_euclid(1000) * 1000))?.with_timezone(zone);
                let next = cron.find_next_occurrence(&local, false).ok()?;
                Timestamp(next.timestamp() * 1000)
            }
        };
        let end = match self {
            Slots::Every { end, .. } | Slots::Cron { end, .. } => *end,
        };
        Some(next).filter(|n| end.is_none_or(|end| *n <= end))
    }
}

/// What to do, at `now`, with a schedule whose next slot is `next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Slots that each create a task, oldest first.
    pub fire: Vec<Timestamp>,
    /// Slots passed over (missed under `catch_up: skip`, folded into one
    /// run under `once`, or overlapping a running task under `overlap: skip`).
    pub skipped: u32,
    /// The slot after these; `None`: the schedule is done.
    pub next: Option<Timestamp>,
}

/// Decides what the slots due at `now` do. `used`: slots that fired or
/// failed so far (what `run_times` counts); `previous_running`: the
/// schedule's last task is still queued or running.
pub fn due(spec: &ScheduleSpec, slots: &Slots, next: Timestamp, now: Timestamp, used: u32, previous_running: bool) -> Due {
    let mut missed = 0u32;
    let mut last_missed = None;
    let mut timely = Vec::new();
    let mut slot = Some(next);
    let mut looked = 0usize;
    while let Some(at) = slot.filter(|at| *at <= now) {
        looked += 1;
        if looked > MAX_SLOTS_AT_ONCE * 100 && at < now.minus(MISSED_AFTER) {
            // Far behind (a long outage of a frequent schedule): jump to the
            // grace window, counting what is jumped over (for `run_every`
            // exactly; for cron, at least one), and go on from there.
            let resume = slots.after(now.minus(MISSED_AFTER).minus(Duration::from_millis(1)));
            let jumped = match (slots, resume) {
                (Slots::Every { every_ms, .. }, Some(resume)) => ((resume.millis() - at.millis()) / every_ms).max(1),
                _ => 1,
            };
            missed = missed.saturating_add(u32::try_from(jumped).unwrap_or(u32::MAX));
            last_missed = Some(resume.map_or(at, |r| r.minus(Duration::from_millis(1))).min(now).max(at));
            slot = resume;
            continue;
        }
        if at < now.minus(MISSED_AFTER) || timely.len() >= MAX_SLOTS_AT_ONCE {
            missed = missed.saturating_add(1);
            last_missed = Some(at);
        } else {
            timely.push(at);
        }
        slot = slots.after(at);
    }
    let mut fire = Vec::new();
    let mut skipped = 0u32;
    if let Some(at) = last_missed {
        match spec.catch_up {
            CatchUp::Once => {
                fire.push(at);
                skipped += missed - 1;
            }
            CatchUp::Skip => skipped += missed,
        }
    }
    fire.extend(timely);
    if spec.overlap == Overlap::Skip {
        // One at a time: none while the last one runs, else only the first.
        let keep = usize::from(!previous_running).min(fire.len());
        skipped += (fire.len() - keep) as u32;
        fire.truncate(keep);
    }
    if let Some(max) = spec.run_times {
        let left = max.saturating_sub(used) as usize;
        if fire.len() >= left {
            skipped += (fire.len() - left) as u32;
            fire.truncate(left);
            return Due { fire, skipped, next: None };
        }
    }
    Due { fire, skipped, next: slot }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(body: Value) -> ScheduleSpec {
        let mut body = body;
        body["task"] = json!({"image": "busybox"});
        serde_json::from_value(body).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn cron_slots_follow_the_time_zone_and_its_clock_changes() {
        // 09:00 in Berlin: 08:00 UTC in winter, 07:00 UTC in summer.
        let s = spec(json!({"cron": "0 9 * * *", "time_zone": "Europe/Berlin"}));
        let slots = s.slots(at("2026-03-27T12:00:00Z")).unwrap();
        let first = s.first_slot(&slots, at("2026-03-27T12:00:00Z")).unwrap();
        assert_eq!(first, at("2026-03-28T08:00:00Z"));
        assert_eq!(slots.after(first), Some(at("2026-03-29T07:00:00Z")));
        let utc = spec(json!({"cron": "*/15 * * * *"}));
        let slots = utc.slots(at("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(utc.first_slot(&slots, at("2026-01-01T00:00:00Z")), Some(at("2026-01-01T00:00:00Z")));
        assert_eq!(slots.after(at("2026-01-01T00:00:00Z")), Some(at("2026-01-01T00:15:00Z")));
    }

    #[test]
    fn every_slots_start_at_start_and_stop_at_the_end() {
        let s = spec(json!({"run_every": 60, "start_at": "2026-01-01T00:00:30Z", "end_at": "2026-01-01T00:02:30Z"}));
        let slots = s.slots(at("2026-01-01T00:00:00Z")).unwrap();
        let first = s.first_slot(&slots, at("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(first, at("2026-01-01T00:00:30Z"));
        assert_eq!(slots.after(first), Some(at("2026-01-01T00:01:30Z")));
        assert_eq!(slots.after(at("2026-01-01T00:01:30Z")), Some(at("2026-01-01T00:02:30Z")));
        assert_eq!(slots.after(at("2026-01-01T00:02:30Z")), None);
        // A start in the past: the first slot on its grid after creation.
        let late = s.first_slot(&slots, at("2026-01-01T00:01:00Z"));
        assert_eq!(late, Some(at("2026-01-01T00:01:30Z")));
    }

    #[test]
    fn bad_timing_is_refused_naming_the_field() {
        let now = at("2026-01-01T00:00:00Z");
        let field = |body: Value| spec(body).slots(now).unwrap_err().field;
        assert_eq!(field(json!({})), "cron");
        assert_eq!(field(json!({"cron": "* * *"})), "cron");
        assert_eq!(field(json!({"cron": "0 0 30 2 *"})), "cron");
        assert_eq!(field(json!({"cron": "* * * * *", "run_every": 5})), "run_every");
        assert_eq!(field(json!({"run_every": 0})), "run_every");
        assert_eq!(field(json!({"cron": "* * * * *", "time_zone": "Mars/Olympus"})), "time_zone");
        assert_eq!(field(json!({"run_every": 5, "time_zone": "UTC"})), "time_zone");
        assert_eq!(field(json!({"run_every": 5, "run_times": 0})), "run_times");
        assert_eq!(field(json!({"run_every": 5, "start_at": "2026-02-01T00:00:00Z", "end_at": "2026-01-01T00:00:00Z"})), "end_at");
        // Never matching is refused by a bounded look, with an end or not
        // (the cron library would look until the year 5000).
        for never in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"] {
            assert_eq!(field(json!({"cron": never})), "cron", "{never}");
            assert_eq!(field(json!({"cron": never, "end_at": "2030-01-01T00:00:00Z"})), "cron", "{never} with an end");
        }
        assert_eq!(field(json!({"cron": "0 0 0 1 1 * 2099"})), "cron", "a year field (seven fields) is not cron here");
        // Rare but real: 29 February, seconds first.
        assert!(spec(json!({"cron": "0 0 29 2 *"})).slots(now).is_ok());
        assert!(spec(json!({"cron": "*/5 * * * * *"})).slots(now).is_ok());
    }

    fn every_10s(extra: Value) -> (ScheduleSpec, Slots) {
        let mut body = json!({"run_every": 10, "start_at": "2026-01-01T00:00:00Z"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let s = spec(body);
        let slots = s.slots(at("2026-01-01T00:00:00Z")).unwrap();
        (s, slots)
    }

    #[test]
    fn each_due_slot_fires_once_and_the_next_moves_on() {
        let (s, slots) = every_10s(json!({}));
        let d = due(&s, &slots, at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00.500Z"), 0, false);
        assert_eq!(d, Due { fire: vec![at("2026-01-01T00:00:00Z")], skipped: 0, next: Some(at("2026-01-01T00:00:10Z")) });
        // Nothing due yet.
        let d = due(&s, &slots, at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:09Z"), 1, false);
        assert!(d.fire.is_empty() && d.next == Some(at("2026-01-01T00:00:10Z")));
        // A late look within the grace: every slot fires.
        let d = due(&s, &slots, at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:25Z"), 1, false);
        assert_eq!(d.fire.len(), 2);
        assert_eq!(d.next, Some(at("2026-01-01T00:00:30Z")));
    }

    #[test]
    fn missed_slots_run_once_or_not_at_all() {
        // Down from 00:00:05 to 00:10:00: 60 slots came due.
        let (once, slots) = every_10s(json!({}));
        let d = due(&once, &slots, at("2026-01-01T00:00:10Z"), at("2026-01-01T00:10:00Z"), 1, false);
        // One for the 56 missed (00:10 to 09:20), and 09:30 to 10:00, within the grace.
        assert_eq!(d.fire.len(), 1 + 4, "{d:?}");
        assert_eq!(d.fire[0], at("2026-01-01T00:09:20Z"));
        assert_eq!(d.skipped, 55);
        assert_eq!(d.next, Some(at("2026-01-01T00:10:10Z")));
        let (skip, slots) = every_10s(json!({"catch_up": "skip"}));
        let d = due(&skip, &slots, at("2026-01-01T00:00:10Z"), at("2026-01-01T00:10:00Z"), 1, false);
        assert_eq!(d.fire.len(), 4);
        assert_eq!(d.fire[0], at("2026-01-01T00:09:30Z"));
        assert_eq!(d.skipped, 56);
    }

    #[test]
    fn a_very_long_outage_still_fires_the_timely_slots_and_counts_the_rest() {
        // Every second, down for a day: 86,400 slots came due.
        let s = spec(json!({"run_every": 1, "start_at": "2026-01-01T00:00:00Z"}));
        let slots = s.slots(at("2026-01-01T00:00:00Z")).unwrap();
        let d = due(&s, &slots, at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"), 0, false);
        // One run for the missed ones, then every slot of the last 30 s.
        assert_eq!(d.fire.len(), 1 + 31, "{:?}", (d.fire.len(), d.skipped));
        assert_eq!(d.fire[1], at("2026-01-01T23:59:30Z"));
        assert_eq!(d.skipped as u64 + d.fire.len() as u64, 86_401, "every slot counted");
        assert_eq!(d.next, Some(at("2026-01-02T00:00:01Z")));
    }

    #[test]
    fn overlap_skip_and_run_times_limit_what_fires() {
        let (s, slots) = every_10s(json!({"overlap": "skip"}));
        let d = due(&s, &slots, at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:11Z"), 1, true);
        assert!(d.fire.is_empty());
        assert_eq!(d.skipped, 1);
        let d = due(&s, &slots, at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:21Z"), 1, false);
        assert_eq!((d.fire.len(), d.skipped), (1, 1));
        let (s, slots) = every_10s(json!({"run_times": 2}));
        let d = due(&s, &slots, at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:25Z"), 1, false);
        assert_eq!(d.fire, vec![at("2026-01-01T00:00:10Z")]);
        assert_eq!(d.next, None);
    }
}
