"""Where the flag state lives in Redis, and the client every process reaches it with.

    {prefix}:flags               hash   flag name -> flag JSON (the current state)
    {prefix}:history:NAME        stream one entry per change (the audit trail)
    {prefix}:changes             channel every write publishes the new flag JSON here
    {prefix}:instance:ID         hash   a proxy's id, address, applied versions (expires)
    {prefix}:instances           zset   instance id -> last heartbeat

(`{prefix}` is a Redis Cluster hash tag: every key lands in one slot, so the scripts stay
atomic there too.)
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from state.redis_timing import TimedRedis

HISTORY_MAXLEN = 10_000
# Lost writes would be worse than slow ones: a command that cannot reach Redis fails fast
# (503 to the caller) instead of hanging on retries.
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str

    @property
    def flags(self) -> str:
        return f"{{{self.prefix}}}:flags"

    @property
    def channel(self) -> str:
        return f"{{{self.prefix}}}:changes"

    @property
    def instances(self) -> str:
        return f"{{{self.prefix}}}:instances"

    def history(self, name: str) -> str:
        return f"{{{self.prefix}}}:history:{name}"

    def instance(self, instance_id: str) -> str:
        return f"{{{self.prefix}}}:instance:{instance_id}"


def connect(url: str) -> Redis:
    """A client whose every command is timed (state/redis_timing.py)."""
    return TimedRedis.from_url(
        url,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        health_check_interval=0,
    )
