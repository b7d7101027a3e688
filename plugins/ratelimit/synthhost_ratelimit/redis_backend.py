"""The Redis backend: one Lua script decides and charges every scope of a call in one
round trip, so concurrent callers on any number of hosts see one consistent log.

Per scope two keys: ``<prefix>:<key>:z``, a sorted set with one member
``<reservation id>:<token weight>`` per admitted call, scored by its admission time in
microseconds, and ``<prefix>:<key>:s``, the running token sum of the members. Both
carry a TTL of one window, refreshed on each charge. Time is Redis' ``TIME`` (so every
host agrees) unless a test clock passes ``now``.

Redis Cluster: every key of one decision must live in one slot; put a hash tag in the
prefix (``SYNTHHOST_RATELIMIT_PREFIX={rl}``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, NoScriptError

from synthhost_ratelimit.limits import Decision, ScopeCheck, refused

# Shared helpers, prepended to every script.
_LIB = """
local function weight(m)
  return tonumber(string.match(m, ':(%-?%d+)$')) or 0
end
local function clock(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return tonumber(arg)
end
local function int(x) return string.format('%d', x) end
"""

# KEYS: per scope i: KEYS[2i-1] sorted-set log, KEYS[2i] token sum.
# ARGV: now µs ('' = Redis TIME), reservation id, token weight,
#       then per scope: window µs, max requests (-1 = unlimited), max tokens (-1).
# Returns, comma-joined in one string (a bulk reply is much cheaper to parse than an
# array): 1,now,0,0,0,usage... admitted; 2,now already admitted (same id);
#         0,now,scope index,kind (1 requests, 2 tokens),retry µs (-1 never),usage...
# usage: (requests, tokens) per scope; tokens -1 where this call's limits on the scope
# have no token limit.
ACQUIRE = _LIB + """
local now = clock(ARGV[1])
local w = tonumber(ARGV[3])
local member = ARGV[2] .. ':' .. ARGV[3]
local n = #KEYS / 2
if n > 0 and redis.call('ZSCORE', KEYS[1], member) then
  return '2,' .. int(now)
end
local usage, tracks = {}, {}
local best_i, best_kind, best_retry = 0, 0, nil
for i = 1, n do
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  local b = 3 + 3 * (i - 1)
  local win, rl, tl = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local cut = int(now - win)
  local c, sum
  -- The running token sum is kept while the key exists: created by a scope with a token
  -- limit, kept exact by every call that finds it (even where this workspace's limits
  -- have no token limit on the shared counter), gone with its TTL when unused.
  local tracked = tl >= 0 or redis.call('EXISTS', s) == 1
  -- 1. forget what left the window (entries with score <= now - window)
  if not tracked then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cut)
    c = redis.call('ZCARD', z)
    sum = -1
  else
    local gone = redis.call('ZRANGEBYSCORE', z, '-inf', cut)
    if #gone > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', cut) end
    c = redis.call('ZCARD', z)
    sum = redis.call('GET', s)
    if sum then
      sum = tonumber(sum)
      if #gone > 0 then
        local d = 0
        for _, m in ipairs(gone) do d = d + weight(m) end
        if d ~= 0 then sum = redis.call('DECRBY', s, d) end
      end
    else
      -- no sum yet (new key, token limit just set, or evicted): rebuild it from the log
      -- (members always carry their weight)
      sum = 0
      if c > 0 then
        for _, m in ipairs(redis.call('ZRANGE', z, 0, -1)) do sum = sum + weight(m) end
        redis.call('SET', s, int(sum), 'PX', math.max(1, redis.call('PTTL', z)))
      end
    end
  end
  -- 2. would this call fit?  retry = when the oldest entry that must go expires
  local retry, kind = nil, 0
  if rl >= 0 and c + 1 > rl then
    kind = 1
    if rl == 0 then
      retry = math.huge
    else
      local e = redis.call('ZRANGE', z, c - rl, c - rl, 'WITHSCORES')
      retry = tonumber(e[2]) + win - now
    end
  end
  if tl >= 0 and sum + w > tl then
    local r = nil
    if w > tl then
      r = math.huge
    else
      local need, acc, start = sum + w - tl, 0, 0
      while r == nil do
        local page = redis.call('ZRANGE', z, start, start + 255, 'WITHSCORES')
        if #page == 0 then break end
        for j = 1, #page, 2 do
          acc = acc + weight(page[j])
          if acc >= need then
            r = tonumber(page[j + 1]) + win - now
            break
          end
        end
        start = start + 256
      end
      if r == nil then
        -- the sum had drifted above the log: repair it; the call then fits
        sum = acc
        redis.call('SET', s, int(sum), 'KEEPTTL')
      end
    end
    if r ~= nil and (retry == nil or r > retry) then retry, kind = r, 2 end
  end
  if retry ~= nil and (best_retry == nil or retry > best_retry) then
    best_i, best_kind, best_retry = i, kind, retry
  end
  usage[2 * i - 1] = c
  usage[2 * i] = sum
  tracks[i] = tl >= 0
end
if best_retry ~= nil then
  if best_retry == math.huge then best_retry = -1 end
  local out = {0, int(now), best_i, best_kind, int(best_retry)}
  for i = 1, n do
    out[#out + 1] = usage[2 * i - 1]
    out[#out + 1] = tracks[i] and int(usage[2 * i]) or -1
  end
  return table.concat(out, ',')
end
-- 3. every scope admits: charge them all
local score = int(now)
local out = {1, score, 0, 0, 0}
for i = 1, n do
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  local ttl = math.ceil(tonumber(ARGV[3 + 3 * (i - 1) + 1]) / 1000)
  local c, sum = usage[2 * i - 1] + 1, usage[2 * i]
  redis.call('ZADD', z, score, member)
  redis.call('PEXPIRE', z, ttl)
  if sum >= 0 then
    sum = sum + w
    redis.call('SET', s, int(sum), 'PX', ttl)
  end
  out[#out + 1] = c
  out[#out + 1] = tracks[i] and int(sum) or -1
end
return table.concat(out, ',')
"""

# KEYS as ACQUIRE; ARGV: reservation id, old weight, new weight. Returns how many scopes
# held the reservation (and were corrected). Idempotent: the old member is gone after.
SETTLE = """
local old_m = ARGV[1] .. ':' .. ARGV[2]
local new_m = ARGV[1] .. ':' .. ARGV[3]
if old_m == new_m then return 0 end
local d = tonumber(ARGV[3]) - tonumber(ARGV[2])
local fixed = 0
for i = 1, #KEYS / 2 do
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  local score = redis.call('ZSCORE', z, old_m)
  if score then
    redis.call('ZREM', z, old_m)
    redis.call('ZADD', z, score, new_m)
    if redis.call('EXISTS', s) == 1 then redis.call('INCRBY', s, d) end
    fixed = fixed + 1
  end
end
return fixed
"""

# KEYS as ACQUIRE; ARGV: reservation id, weight. Takes a reservation back entirely (the
# call never reached a provider). Returns how many scopes held it; idempotent.
RELEASE = """
local m = ARGV[1] .. ':' .. ARGV[2]
local w = tonumber(ARGV[2])
local fixed = 0
for i = 1, #KEYS / 2 do
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('ZREM', z, m) == 1 then
    if w ~= 0 and redis.call('EXISTS', s) == 1 then redis.call('DECRBY', s, w) end
    fixed = fixed + 1
  end
end
return fixed
"""

# Read-only: usage in the window now. KEYS as ACQUIRE; ARGV: now, then window per scope.
USAGE = _LIB + """
local now = clock(ARGV[1])
local out = {now}
for i = 1, #KEYS / 2 do
  local live = redis.call('ZRANGEBYSCORE', KEYS[2 * i - 1], '(' .. int(now - tonumber(ARGV[i + 1])), '+inf')
  local sum = 0
  for _, m in ipairs(live) do sum = sum + weight(m) end
  out[#out + 1] = #live
  out[#out + 1] = sum
end
return out
"""


def _pairs(flat: Sequence[Any], start: int) -> tuple[tuple[int, int], ...]:
    return tuple((int(flat[i]), int(flat[i + 1])) for i in range(start, len(flat), 2))


# -- the wire ---------------------------------------------------------------------------
# redis-py's generic path (argument packing, pool bookkeeping, retry wrappers) costs more
# than the round trip itself for a 21-argument EVALSHA. The hot path pre-encodes what is
# static per scope (keys and limits) and talks RESP on its own small set of connections,
# made by redis-py (same URL, auth, TLS, timeouts).


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


_EVALSHA = _bulk(b"EVALSHA")


@lru_cache(maxsize=65536)
def _encode_check(prefix: str, check: ScopeCheck) -> tuple[bytes, bytes, bytes]:
    """(keys, acquire limits, usage window) of one scope, RESP-encoded."""
    base = f"{prefix}:{check.key}:".encode()
    keys = _bulk(base + b"z") + _bulk(base + b"s")
    limits = (_bulk(b"%d" % check.window_us) + _bulk(b"%d" % check.requests)
              + _bulk(b"%d" % check.tokens))
    return keys, limits, _bulk(b"%d" % check.window_us)


class _Script:
    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self.head = _EVALSHA + _bulk(self.sha.encode())


class _Wire:
    """Connections of our own (idle ones kept in a list: one event loop, no lock), at
    most ``size`` open at once: a caller beyond that waits for one to come back, up to
    ``wait_s``, then gets a ``ConnectionError`` (and the limiter fails open or closed as
    configured). 500 concurrent calls use ``size`` connections, not 500."""

    def __init__(self, client: aioredis.Redis, size: int = 16, wait_s: float = 1.0) -> None:
        self.pool = client.connection_pool
        self.client = client
        self.idle: list[Any] = []
        self.closed = False
        self.size = size
        self.wait_s = wait_s
        self.slots = asyncio.Semaphore(size)
        self.opened = 0  # connections made over the wire's life (for tests and stats)

    async def _get(self) -> tuple[Any, bool]:
        if self.idle:
            return self.idle.pop(), False
        conn = self.pool.make_connection()
        await conn.connect()
        self.opened += 1
        return conn, True

    async def _put(self, conn: Any) -> None:
        if self.closed or len(self.idle) >= self.size:
            await conn.disconnect()
        else:
            self.idle.append(conn)

    async def call(self, script: _Script, payload: bytes) -> Any:
        """Send one EVALSHA; load the script if this server does not know it; retry
        once on a fresh connection when a pooled one turns out dead (Redis restarted).
        Every script is idempotent, so a retry after a lost reply is harmless."""
        try:
            if self.slots.locked():  # only then can it wait: wait_for costs a task
                await asyncio.wait_for(self.slots.acquire(), self.wait_s)
            else:
                await self.slots.acquire()
        except TimeoutError:
            raise ConnectionError(f"rate limiter: all {self.size} Redis connections busy for {self.wait_s:g}s "
                                  "(SYNTHHOST_RATELIMIT_REDIS_POOL)") from None
        try:
            return await self._call(script, payload)
        finally:
            self.slots.release()

    async def _call(self, script: _Script, payload: bytes) -> Any:
        for attempt in (1, 2):
            conn, fresh = await self._get()
            try:
                await self._send(conn, payload)
                reply = await conn.read_response()
            except NoScriptError:
                await self._put(conn)
                await self.client.script_load(script.text)
                continue
            except ConnectionError:
                await conn.disconnect(nowait=True)
                # the server went away: every idle connection is as dead as this one
                await self._drop_idle()
                if fresh or attempt == 2:
                    raise
                continue
            except BaseException:  # timeout, cancellation: a reply may still be in flight
                await conn.disconnect(nowait=True)
                raise
            await self._put(conn)
            return reply
        raise ConnectionError("rate limiter: no answer from Redis")

    @staticmethod
    async def _send(conn: Any, payload: bytes) -> None:
        # redis-py wraps every write in asyncio.wait_for (a task per command, a third of
        # a decision's Python time here). A small payload on a connected socket leaves
        # in write(); wait (bounded) only when the transport had to buffer it.
        writer = getattr(conn, "_writer", None)
        if writer is None or not conn.is_connected:
            await conn.send_packed_command(payload, check_health=False)
            return
        writer.write(payload)
        if writer.transport.get_write_buffer_size():
            await asyncio.wait_for(writer.drain(), conn.socket_timeout or None)

    async def _drop_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            await conn.disconnect(nowait=True)

    async def aclose(self) -> None:
        self.closed = True
        await self._drop_idle()


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio (or no loop at all)
        return False
    return True


class _SyncWire:
    """The same calls on redis-py's blocking client, run in a worker thread: for hosts
    running on trio, where redis.asyncio cannot run."""

    def __init__(self, url: str, timeout_s: float, pool_size: int = 16) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=max(1.0, 4 * timeout_s), socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
        self.client = redis.Redis(connection_pool=pool)

    def call_sync(self, script: _Script, payload: bytes) -> Any:
        pool = self.client.connection_pool
        for attempt in (1, 2):
            conn = pool.get_connection()
            try:
                conn.send_packed_command([payload], check_health=False)
                reply = conn.read_response()
            except NoScriptError:
                pool.release(conn)
                self.client.script_load(script.text)
                continue
            except ConnectionError:
                conn.disconnect()
                pool.release(conn)
                pool.disconnect(inuse_connections=False)  # the idle ones died with it
                if attempt == 2:
                    raise
                continue
            except BaseException:
                conn.disconnect()
                pool.release(conn)
                raise
            pool.release(conn)
            return reply
        raise ConnectionError("rate limiter: no answer from Redis")

    def call_many_sync(self, script: _Script, payloads: list[bytes]) -> list[Any]:
        """Pipelined: every payload in one write, then every reply. Used for token
        corrections only, which are sent once (a lost reply is not retried)."""
        pool = self.client.connection_pool
        for _ in (1, 2):
            conn = pool.get_connection()
            try:
                conn.send_packed_command(payloads, check_health=False)
                replies = [conn.read_response(disable_decoding=True) for _ in payloads]
            except NoScriptError:
                # The first EVALSHA failed; so did the rest (same script): none ran.
                conn.disconnect()  # unread replies are left on it
                pool.release(conn)
                self.client.script_load(script.text)
                continue
            except BaseException:
                conn.disconnect()
                pool.release(conn)
                raise
            pool.release(conn)
            return replies
        raise ConnectionError("rate limiter: no answer from Redis")

    async def call(self, script: _Script, payload: bytes) -> Any:
        import anyio

        return await anyio.to_thread.run_sync(self.call_sync, script, payload)

    def close(self) -> None:
        self.client.close()


class RedisLimiter:
    """Sliding-window log on Redis. ``clock`` (µs) replaces Redis' ``TIME`` in tests.

    On asyncio the calls go through redis.asyncio connections; under another event loop
    (trio) through redis-py's blocking client in a worker thread (``url`` needed)."""

    per_process = False

    def __init__(self, client: aioredis.Redis, prefix: str = "synthhost:rl",
                 clock: Callable[[], int] | None = None, *, url: str | None = None,
                 timeout_s: float = 0.25, pool_size: int = 16) -> None:
        self.client = client
        self.prefix = prefix
        self._clock = clock
        self._pool_size = pool_size
        self._wire = _Wire(client, pool_size, wait_s=max(1.0, 4 * timeout_s))
        self._url, self._timeout_s = url, timeout_s
        self._sync_wire: _SyncWire | None = None
        self._blocking_wire: _SyncWire | None = None  # the settle thread's own connection
        self._acquire = _Script(ACQUIRE)
        self._settle = _Script(SETTLE)
        self._release = _Script(RELEASE)
        self._usage = _Script(USAGE)

    async def _call(self, script: _Script, payload: bytes) -> Any:
        if _on_asyncio():
            return await self._wire.call(script, payload)
        if self._sync_wire is None:
            if self._url is None:
                raise RuntimeError("rate limiter: Redis under a non-asyncio loop needs a URL")
            self._sync_wire = _SyncWire(self._url, self._timeout_s, self._pool_size)
        return await self._sync_wire.call(script, payload)

    def keys_for(self, checks: Sequence[ScopeCheck]) -> list[str]:
        p = self.prefix
        keys: list[str] = []
        for c in checks:
            keys.append(f"{p}:{c.key}:z")
            keys.append(f"{p}:{c.key}:s")
        return keys

    def _now(self) -> bytes:
        return _bulk(b"") if self._clock is None else _bulk(b"%d" % self._clock())

    async def acquire(self, checks: Sequence[ScopeCheck], member: str, weight: int) -> Decision:
        encoded = [_encode_check(self.prefix, c) for c in checks]
        n = len(checks)
        payload = b"".join((
            b"*%d\r\n" % (3 + 2 * n + 3 + 3 * n), self._acquire.head, _bulk(b"%d" % (2 * n)),
            *(e[0] for e in encoded),
            self._now(), _bulk(member.encode()), _bulk(b"%d" % weight),
            *(e[1] for e in encoded),
        ))
        out = (await self._call(self._acquire, payload)).split(b",")
        status, now = int(out[0]), int(out[1])
        if status == 1:
            return Decision(True, now, usage=_pairs(out, 5))
        if status == 2:
            return Decision(True, now, duplicate=True)
        return refused(checks, now, int(out[2]), int(out[3]), int(out[4]), _pairs(out, 5))

    def _simple(self, script: _Script, checks: Sequence[ScopeCheck], args: Sequence[bytes]) -> bytes:
        n = len(checks)
        return b"".join((
            b"*%d\r\n" % (3 + 2 * n + len(args)), script.head, _bulk(b"%d" % (2 * n)),
            *(_encode_check(self.prefix, c)[0] for c in checks),
            *(_bulk(a) for a in args),
        ))

    async def settle(self, checks: Sequence[ScopeCheck], member: str, old: int, new: int) -> int:
        if old == new or not checks:
            return 0
        payload = self._simple(self._settle, checks, (member.encode(), b"%d" % old, b"%d" % new))
        return int(await self._call(self._settle, payload))

    def settle_many_blocking(self, corrections: Sequence[tuple[Sequence[ScopeCheck], str, int, int]]) -> int:
        """Apply several settles in one pipelined round trip, from a thread of its own
        (blocking client); returns the scopes corrected."""
        payloads = [self._simple(self._settle, checks, (member.encode(), b"%d" % old, b"%d" % new))
                    for checks, member, old, new in corrections if old != new and checks]
        if not payloads:
            return 0
        if self._blocking_wire is None:
            if self._url is None:
                raise RuntimeError("rate limiter: deferred settles need the Redis URL")
            self._blocking_wire = _SyncWire(self._url, max(1.0, self._timeout_s), pool_size=1)
        return sum(int(r) for r in self._blocking_wire.call_many_sync(self._settle, payloads))

    async def release(self, checks: Sequence[ScopeCheck], member: str, weight: int) -> int:
        if not checks:
            return 0
        payload = self._simple(self._release, checks, (member.encode(), b"%d" % weight))
        return int(await self._call(self._release, payload))

    async def usage(self, checks: Sequence[ScopeCheck]) -> list[tuple[int, int]]:
        if not checks:
            return []
        n = len(checks)
        payload = b"".join((
            b"*%d\r\n" % (3 + 2 * n + 1 + n), self._usage.head, _bulk(b"%d" % (2 * n)),
            *(_encode_check(self.prefix, c)[0] for c in checks),
            self._now(), *(_encode_check(self.prefix, c)[2] for c in checks),
        ))
        out = await self._call(self._usage, payload)
        return list(_pairs(out, 1))

    async def scan_keys(self, pattern_key: str) -> list[str]:
        """Counter keys (without prefix and suffix) matching a key pattern, for status."""
        found: set[str] = set()
        async for raw in self.client.scan_iter(match=f"{self.prefix}:{pattern_key}:z", count=500):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            found.add(name[len(self.prefix) + 1 : -2])
        return sorted(found)

    async def ping(self) -> bool:
        return await self._call(self._usage, b"*1\r\n$4\r\nPING\r\n") in (b"PONG", "PONG")

    async def aclose(self) -> None:
        if self._sync_wire is not None:
            self._sync_wire.close()
        if self._blocking_wire is not None:
            self._blocking_wire.close()
        if _on_asyncio():
            await self._wire.aclose()
            await self.client.aclose()


def connect(url: str, *, timeout_s: float = 0.25, prefix: str = "synthhost:rl",
            clock: Callable[[], int] | None = None, pool_size: int = 16) -> RedisLimiter:
    """A limiter on ``url`` with short timeouts (a slow Redis must not stall calls) and
    one immediate retry (a pooled connection that died with a Redis restart)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = aioredis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )
    return RedisLimiter(client, prefix=prefix, clock=clock, url=url, timeout_s=timeout_s, pool_size=pool_size)
