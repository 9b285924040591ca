"""abgate: a reverse-proxy sidecar for the gradual, measured rollout of ML decisions.

Installed under this one name, so that its packages cannot collide with another `config` or
`state` in the same environment: `abgate.config` (the YAML as frozen, typed values; pure),
`abgate.state` (the live state: flags, measurements, history), `abgate.proxy` (the data
plane) and `abgate.control` (the control API, statistics and rollouts). In the repository
they stay the design's top-level folders; the entries here are links to them.
"""
