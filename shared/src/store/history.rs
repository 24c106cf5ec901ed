//! Calls in progress over the last minutes, derived from the dials' own timestamps, for the
//! console's chart: real history from the first page view, with nothing sampled or written.
//!
//! A dial is in progress from its `started_at` (the claim that took its slot) to its
//! `ended_at` (a definite dial failure, the outcome reported, or the reclaimer). The one gap:
//! after a dial of unknown fate the call keeps its slot until its redial, a moment the dials
//! do not cover; `/metrics` (the slots themselves) is exact for the present.

use chrono::{DateTime, TimeDelta, Utc};

use super::{query, Pool, StoreError, StoreResult};

/// Most calls in progress at once during one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteInProgress {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub peak: i64,
}

/// The peak number of calls in progress in each of the last `minutes` minutes (the current,
/// partial minute last), from the dials that ended inside the window or have not ended (the
/// `call_attempts_ended` index): the cost follows the window's dials, not the table.
pub async fn in_progress_by_minute(
    pool: &Pool,
    minutes: u32,
) -> StoreResult<Vec<MinuteInProgress>> {
    let client = pool.get().await?;
    let minutes = i32::try_from(minutes.max(1)).unwrap_or(i32::MAX);
    // A sweep over the window's events: +1 where a dial starts (a dial already in progress
    // starts at the window's start), -1 where it ends; the running sum is the number in
    // progress. An end is never before its start (the end may be the provider's
    // `completedAt`), and an open dial has none (GREATEST alone would turn NULL into the
    // start). At one instant ends count before starts, so a slot handed straight on is not
    // counted twice. Per minute: the peak of the running sum, and its value at the minute's
    // last event (what the next minute starts from).
    let rows = query(
        &client,
        "WITH bounds AS ( \
             SELECT date_trunc('minute', now()) - make_interval(mins => $1 - 1) AS since), \
         dials AS ( \
             SELECT GREATEST(a.started_at, b.since) AS starts_at, \
                    CASE WHEN a.ended_at IS NOT NULL THEN GREATEST(a.ended_at, a.started_at) END AS ends_at \
               FROM call_attempts a, bounds b \
              WHERE (a.ended_at IS NULL \
                     OR a.ended_at > date_trunc('minute', now()) - make_interval(mins => $1 - 1)) \
                AND a.started_at <= now()), \
         events AS ( \
             SELECT starts_at AS at, 1 AS delta FROM dials \
             UNION ALL \
             SELECT ends_at, -1 FROM dials WHERE ends_at <= now()), \
         levels AS ( \
             SELECT at, \
                    sum(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS level, \
                    row_number() OVER (ORDER BY at, delta) AS seq \
               FROM events), \
         per_minute AS ( \
             SELECT date_trunc('minute', at) AS minute, max(level) AS peak, \
                    (array_agg(level ORDER BY seq DESC))[1] AS last_level \
               FROM levels GROUP BY 1) \
         SELECT b.since, p.minute, p.peak::int8 AS peak, p.last_level::int8 AS last_level \
           FROM bounds b LEFT JOIN per_minute p ON true ORDER BY p.minute",
        &[&minutes],
    )
    .await?;
    // At least one row: the window's bounds, with no minute when no dial touched it.
    let mut since = None;
    let mut by_minute = Vec::with_capacity(rows.len());
    for row in &rows {
        since = Some(row.try_get::<_, DateTime<Utc>>("since")?);
        if let Some(minute) = row.try_get::<_, Option<DateTime<Utc>>>("minute")? {
            by_minute.push((minute, row.try_get("peak")?, row.try_get("last_level")?));
        }
    }
    let since =
        since.ok_or_else(|| StoreError::Corrupt("the history query returned no row".to_owned()))?;
    Ok(fill_minutes(since, minutes, &by_minute))
}

/// One point per minute from `since`: a minute with events peaks at the higher of the level it
/// started with and its events' peak; a minute without events stays at the level it started
/// with.
fn fill_minutes(
    since: DateTime<Utc>,
    minutes: i32,
    by_minute: &[(DateTime<Utc>, i64, i64)],
) -> Vec<MinuteInProgress> {
    let mut level = 0_i64;
    let mut events = by_minute.iter().peekable();
    (0..minutes)
        .map(|i| {
            let minute = since + TimeDelta::minutes(i64::from(i));
            let mut peak = level;
            while let Some((at, events_peak, last)) = events.next_if(|(at, ..)| *at <= minute) {
                if *at == minute {
                    peak = peak.max(*events_peak);
                }
                level = *last;
            }
            MinuteInProgress {
                minute,
                peak: peak.max(0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64) -> DateTime<Utc> {
        // 1_800_000_000 is a multiple of 60: a minute's start.
        DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap()
    }

    #[test]
    fn quiet_minutes_keep_the_level_they_start_with() {
        let since = at(0);
        // Minute 0: up to 3, ends at 2. Minute 3: a peak of 4, ends at 0.
        let points = fill_minutes(since, 6, &[(at(0), 3, 2), (at(3), 4, 0)]);
        let peaks: Vec<i64> = points.iter().map(|p| p.peak).collect();
        assert_eq!(peaks, [3, 2, 2, 4, 0, 0]);
        assert_eq!(points[5].minute, at(5));
    }

    #[test]
    fn a_minute_that_only_ends_calls_peaks_at_its_starting_level() {
        let points = fill_minutes(at(0), 3, &[(at(0), 5, 5), (at(1), 4, 1)]);
        let peaks: Vec<i64> = points.iter().map(|p| p.peak).collect();
        assert_eq!(peaks, [5, 5, 1]);
    }
}
