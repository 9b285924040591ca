"""Live state: the flags proxies route with and the measurements the statistics read, in
memory, in the embedded state file, or in Redis. Shared by `proxy` and `control`; `config`
stays pure (it parses YAML and does no I/O)."""
