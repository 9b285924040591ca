-- Queries operators run against the history store (schema ab_testing). Each statement stands
-- alone: run them with psql, or one at a time from a notebook. Times are UTC.

-- 1. Daily error rate and latency quantiles per experiment and arm.
SELECT date_trunc('day', time) AS day, experiment, arm,
       count(*) AS requests,
       round(100.0 * count(*) FILTER (WHERE status >= 500) / count(*), 3) AS error_rate_pct,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY upstream_seconds) AS p50_seconds,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY upstream_seconds) AS p95_seconds,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY upstream_seconds) AS p99_seconds,
       count(*) FILTER (WHERE fallback IS NOT NULL) AS fallbacks
FROM ab_testing.decisions
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

-- 2. Incidents: rollbacks and incidents opened, newest first.
SELECT time, experiment, actor, coalesce(change, transition) AS what, reason
FROM ab_testing.rollout_events
WHERE transition = 'rolled_back' OR change = 'incident opened'
ORDER BY time DESC;

-- 3. Days at 100% per experiment (from the flag audit trail).
SELECT flag AS experiment,
       round(sum(extract(epoch FROM (coalesce(next_time, now()) - time))) / 86400.0, 3)
           AS days_at_100_percent
FROM (
    SELECT flag, time, percentage,
           lead(time) OVER (PARTITION BY flag ORDER BY version) AS next_time
    FROM ab_testing.flag_changes
) AS changes
WHERE percentage = 100
GROUP BY flag
ORDER BY flag;

-- 4. Outcome means per experiment, phase and arm.
SELECT experiment, phase, arm, metric, count(*) AS n, avg(value) AS mean,
       stddev_samp(value) AS std
FROM ab_testing.outcomes
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4;

-- 5. Cohorts: each phase's split and how long it ran.
SELECT experiment, phase, arm, percentage, started_at, ended_at,
       coalesce(ended_at, now()) - started_at AS duration
FROM ab_testing.cohorts
ORDER BY experiment, phase, arm;
