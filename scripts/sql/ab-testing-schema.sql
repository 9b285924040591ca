-- abgate's history store: every decision and outcome, the cohorts, the rollout decisions and
-- the flag audit trail. Applied by `abgate db migrate` (version 3); safe to run again, and it
-- brings a version 1 or 2 schema up to date.
--
-- decisions and outcomes are declared here as tables partitioned by day (plain PostgreSQL):
-- abgate's maintenance task creates the days ahead and drops those past the retention.
-- With TimescaleDB, ab-testing-timescaledb.sql runs first and makes them hypertables, so
-- the CREATE TABLE IF NOT EXISTS below leaves them as they are.

CREATE SCHEMA IF NOT EXISTS ab_testing;

CREATE TABLE IF NOT EXISTS ab_testing.schema_migrations (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ab_testing.experiments (
    name         text PRIMARY KEY,
    config_hash  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    status       text NOT NULL DEFAULT 'active'
);

-- One row per phase (a percentage) and arm.
CREATE TABLE IF NOT EXISTS ab_testing.cohorts (
    experiment  text NOT NULL,
    phase       integer NOT NULL,
    arm         text NOT NULL,
    percentage  double precision NOT NULL,  -- the arm's share of traffic, 0..100
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    PRIMARY KEY (experiment, phase, arm)
);

-- One row per proxied request of an experiment (sampled by history.sample).
CREATE TABLE IF NOT EXISTS ab_testing.decisions (
    time              timestamptz NOT NULL,
    request_id        text NOT NULL,
    experiment        text NOT NULL,
    phase             integer NOT NULL,
    arm               text NOT NULL,           -- assigned (kept on a fallback)
    bucket            integer,                 -- the sticky key's bucket, never the key
    upstream          text NOT NULL,           -- who answered
    status            integer NOT NULL,
    upstream_seconds  double precision,
    error             text,                    -- upstream error kind, if any
    fallback          text,                    -- why the control arm answered instead
    instance          text NOT NULL
) PARTITION BY RANGE (time);
-- A decision's identity is its request id and instance (and its time, which a retry keeps and
-- a partitioned table's unique index must include): a flush retried after its commit landed
-- unseen (the connection broke, the writer was cancelled) adds nothing twice. Version 1 had
-- no such key: the duplicates a retry left there are removed once, before the key exists.
DO $$
BEGIN
  IF to_regclass('ab_testing.decisions_identity') IS NULL THEN
    DELETE FROM ab_testing.decisions a USING ab_testing.decisions b
    WHERE a.tableoid = b.tableoid AND a.ctid > b.ctid AND a.request_id = b.request_id
      AND a.instance = b.instance AND a.time = b.time;
  END IF;
END $$;
CREATE UNIQUE INDEX IF NOT EXISTS decisions_identity
    ON ab_testing.decisions (request_id, instance, time);
DROP INDEX IF EXISTS ab_testing.decisions_request_id;  -- version 1's; the identity covers it
CREATE INDEX IF NOT EXISTS decisions_experiment_time
    ON ab_testing.decisions (experiment, time);

-- Business outcomes; those reported by request id carry the arm and phase of the decision.
CREATE TABLE IF NOT EXISTS ab_testing.outcomes (
    time         timestamptz NOT NULL,         -- when the decision was made
    request_id   text,
    experiment   text NOT NULL,
    arm          text NOT NULL,
    phase        integer NOT NULL,
    metric       text NOT NULL,
    value        double precision NOT NULL,
    reported_at  timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (time);
CREATE INDEX IF NOT EXISTS outcomes_experiment_time ON ab_testing.outcomes (experiment, time);
-- The writer's id of the record (instance:sequence), so a retried flush adds it once.
ALTER TABLE ab_testing.outcomes ADD COLUMN IF NOT EXISTS record_id text;
CREATE UNIQUE INDEX IF NOT EXISTS outcomes_identity ON ab_testing.outcomes (record_id, time);

CREATE TABLE IF NOT EXISTS ab_testing.rollout_events (
    time        timestamptz NOT NULL,
    experiment  text NOT NULL,
    state       text,
    transition  text,
    change      text,
    decision    text,
    reason      text,
    inputs      jsonb,
    actor       text NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_events_experiment_time
    ON ab_testing.rollout_events (experiment, time);
ALTER TABLE ab_testing.rollout_events ADD COLUMN IF NOT EXISTS record_id text;
CREATE UNIQUE INDEX IF NOT EXISTS rollout_events_identity
    ON ab_testing.rollout_events (record_id);

-- The flag audit trail: every percentage change, by whom and why.
CREATE TABLE IF NOT EXISTS ab_testing.flag_changes (
    time        timestamptz NOT NULL,
    flag        text NOT NULL,
    percentage  double precision NOT NULL,
    version     integer NOT NULL,
    phase       integer NOT NULL,
    actor       text NOT NULL,
    reason      text NOT NULL,
    PRIMARY KEY (flag, version)
);

-- Records PostgreSQL refused (a value out of range, a row no partition takes): set aside here
-- one by one, so a bad record never holds back the rest of its batch.
CREATE TABLE IF NOT EXISTS ab_testing.dead_letters (
    time      timestamptz NOT NULL DEFAULT now(),
    instance  text NOT NULL,                   -- the writer that set it aside
    target    text NOT NULL,                   -- the table it was meant for
    error     text NOT NULL,                   -- why it was refused
    record    text NOT NULL                    -- its values as a JSON array (ASCII)
);
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_identity
    ON ab_testing.dead_letters (target, md5(record));

-- Version 3: the statistics worker's timeline (the control page's and the reports' charts),
-- bounded as it is in memory (control/timeline.py): the points kept, at most 512 per
-- experiment, thinned on a doubling stride, and each series' tick count and stride; so the
-- charts survive a restart of the control process.
CREATE TABLE IF NOT EXISTS ab_testing.timeline_points (
    experiment  text NOT NULL,
    tick        bigint NOT NULL,               -- the tick's number in its series
    time        timestamptz NOT NULL,
    point       jsonb NOT NULL,
    PRIMARY KEY (experiment, tick)
);
CREATE TABLE IF NOT EXISTS ab_testing.timeline_series (
    experiment  text PRIMARY KEY,
    ticks       bigint NOT NULL,
    stride      bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO ab_testing.schema_migrations (version) VALUES (1), (2), (3) ON CONFLICT DO NOTHING;
