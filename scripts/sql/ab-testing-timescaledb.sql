-- Applied before ab-testing-schema.sql when the timescaledb extension is available: the
-- time-series tables as hypertables with a retention policy, and an hourly continuous
-- aggregate per experiment, phase and arm. :retention_days is substituted by abgate.
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE SCHEMA IF NOT EXISTS ab_testing;

CREATE TABLE IF NOT EXISTS ab_testing.decisions (
    time timestamptz NOT NULL, request_id text NOT NULL, experiment text NOT NULL,
    phase integer NOT NULL, arm text NOT NULL, bucket integer, upstream text NOT NULL,
    status integer NOT NULL, upstream_seconds double precision, error text, fallback text,
    instance text NOT NULL
);
SELECT create_hypertable('ab_testing.decisions', 'time', if_not_exists => TRUE,
                         chunk_time_interval => INTERVAL '1 day');
SELECT add_retention_policy('ab_testing.decisions', INTERVAL ':retention_days days',
                            if_not_exists => TRUE);

CREATE TABLE IF NOT EXISTS ab_testing.outcomes (
    time timestamptz NOT NULL, request_id text, experiment text NOT NULL, arm text NOT NULL,
    phase integer NOT NULL, metric text NOT NULL, value double precision NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT now()
);
SELECT create_hypertable('ab_testing.outcomes', 'time', if_not_exists => TRUE,
                         chunk_time_interval => INTERVAL '1 day');
SELECT add_retention_policy('ab_testing.outcomes', INTERVAL ':retention_days days',
                            if_not_exists => TRUE);

CREATE MATERIALIZED VIEW IF NOT EXISTS ab_testing.decisions_hourly
WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS hour, experiment, phase, arm,
       count(*) AS requests,
       count(*) FILTER (WHERE status >= 500) AS errors,
       avg(upstream_seconds) AS mean_seconds,
       max(upstream_seconds) AS max_seconds
FROM ab_testing.decisions
GROUP BY hour, experiment, phase, arm
WITH NO DATA;
SELECT add_continuous_aggregate_policy('ab_testing.decisions_hourly',
    start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE);
