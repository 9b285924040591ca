"""The defaults of the settings that code also makes without a file (`config.model`'s values
built in tests and benchmarks, and from `ABGATE_REDIS_URL`), each declared once, as written in
YAML: the schema declares the setting with it (`config.schema*`), and the model's field
defaults to it (durations in seconds, read as the schema reads them: `config.durations`).
A setting left out is none in both. tests/test_config_defaults.py checks that every default
of the model is what the schema gives a file that leaves the setting out.

Pure: the data plane reads `config.model`, which reads this."""

from __future__ import annotations

# flags.redis
REDIS_DB = 0
REDIS_WAIT_REPLICAS = 0  # without sentinel
REDIS_WAIT_REPLICAS_SENTINEL = 1  # with it (config.parse_connections)
REDIS_WAIT_TIMEOUT = "500ms"
# flags.redis.tls
TLS_CHECK_HOSTNAME = True
# flags.redis.sentinel
SENTINEL_TLS = False  # unless flags.redis.tls is set (config.parse_connections)
# history
HISTORY_RETENTION = "90d"
HISTORY_SAMPLE = 1.0
HISTORY_BUFFER = 200_000
