"""The history store: decisions, outcomes, cohorts, rollout events and flag changes in
PostgreSQL (TimescaleDB when present). Imported only when history.postgres_url is set."""
