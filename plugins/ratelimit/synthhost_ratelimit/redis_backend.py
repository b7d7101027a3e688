"""The Redis backend: one Lua script decides and charges every scope of a call in one
round trip, so concurrent callers on any number of hosts see one consistent state.

Per scope one string key ``<prefix>:<key>:g``: the scope's GCRA buckets (see
:mod:`synthhost_ratelimit.limits`) as ``t,r,rc,rd,k,kc,kd``: at time ``t`` (µs) the
request level ``r`` in units ``(rc, rd)`` and the token level ``k`` in units ``(kc, kd)``.
A few dozen bytes whatever the rate; PX until one window after the buckets are empty.
Per reservation a marker ``<prefix>:m:<reservation>`` lives ``MARKER_TTL_S`` (5 s) after
its acquire and after its correction, so a retried script is not applied twice.
Time is Redis' ``TIME`` (so every host agrees) unless a test clock passes ``now``.

The scripts do the in-process twin's (:mod:`synthhost_ratelimit.local`) double
operations in the same order: both give identical decisions.

Redis Cluster: every key of one decision must live in one slot; put a hash tag in the
prefix (``SYNTHHOST_RATELIMIT_PREFIX={rl}``).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from synthhost_ratelimit.limits import MARKER_TTL_S, Decision, Held, ScopeCheck, refused, units

# Shared helpers, prepended to every script (each is local.py's function of that name).
_LIB = """
local function clock(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return tonumber(arg)
end
-- every figure printed is a whole number: %d is exact (and much cheaper than %.17g)
-- below 2^53; past it, %.17g keeps every bit
local function num(x)
  if x < 9007199254740992 and x > -9007199254740992 then return string.format('%d', x) end
  return string.format('%.17g', x)
end
local function ceil_div(x, d)
  local q = math.ceil(x / d)
  if q * d < x then q = q + 1 elseif (q - 1) * d >= x then q = q - 1 end
  return q
end
local function adopt(l, c, d, cc, dd)
  if c == 0 then return 0, cc, dd end
  if c == cc and d == dd then return l, c, d end
  return ceil_div(l * dd, d), cc, dd
end
-- the bucket drained to e (now, or its own time if the clock stepped back)
local function view(key, now)
  local v = redis.call('GET', key)
  if not v then return now, 0, 0, 0, 0, 0, 0 end
  local t, r, rc, rd, k, kc, kd = string.match(v, '^([^,]+),([^,]+),([^,]+),([^,]+),([^,]+),([^,]+),([^,]+)$')
  t, r, rc, rd, k, kc, kd = tonumber(t), tonumber(r), tonumber(rc), tonumber(rd), tonumber(k), tonumber(kc),
    tonumber(kd)
  local e = now
  if not (now > t) then e = t end
  local el = e - t
  if rc > 0 then
    r = r - el * rd
    if r <= 0 then r, rc, rd = 0, 0, 0 end
  end
  if kc > 0 then
    k = k - el * kd
    if k <= 0 then k, kc, kd = 0, 0, 0 end
  end
  return e, r, rc, rd, k, kc, kd
end
local function store(key, now, e, r, rc, rd, k, kc, kd, win)
  local tte = 0
  if rd > 0 then tte = r / rd end
  if kd > 0 and k / kd > tte then tte = k / kd end
  local px = math.max(1, math.ceil(((e - now) + tte + win) / 1000))
  local v
  if e < 9007199254740992 and r < 9007199254740992 and k < 9007199254740992 and rc < 9007199254740992
      and rd < 9007199254740992 and kc < 9007199254740992 and kd < 9007199254740992 then
    v = string.format('%d,%d,%d,%d,%d,%d,%d', e, r, rc, rd, k, kc, kd)  -- all >= 0
  else
    v = num(e) .. ',' .. num(r) .. ',' .. num(rc) .. ',' .. num(rd) .. ',' .. num(k) .. ',' .. num(kc) .. ','
        .. num(kd)
  end
  redis.call('SET', key, v, 'PX', string.format('%d', px))
end
local function usage(r, rc, k, kc, tl)
  local req = 0
  if rc > 0 then req = ceil_div(r, rc) end
  if tl < 0 then return req, -1 end
  if kc > 0 then return req, ceil_div(k, kc) end
  return req, 0
end
-- a marker: 'a' (admitted) or 'd' (corrected), then its expiry in µs; nil when expired
local function marker(key, now)
  local v = redis.call('GET', key)
  if v and tonumber(string.sub(v, 2)) > now then return string.sub(v, 1, 1) end
  return nil
end
local function set_marker(key, tag, now, ttl)
  redis.call('SET', key, tag .. num(now + ttl), 'PX', string.format('%d', math.max(1, math.ceil(ttl / 1000))))
end
"""

# KEYS: the reservation's marker, then one bucket key per scope.
# ARGV: now µs ('' = Redis TIME), token weight, marker TTL µs,
#       then per scope: window µs, max requests (-1 = unlimited), its units C and D,
#       max tokens (-1), its units C and D.
# Returns, comma-joined in one string (a bulk reply is much cheaper to parse than an
# array): 1,now,0,0,0,usage...,held... admitted; 2,now already admitted (same id);
#         0,now,scope index,kind (1 requests, 2 tokens),retry µs (-1 never),usage...
# usage: (requests, tokens) in use per scope; tokens -1 where the check has no token
# limit. held: (time, request level, token level) per scope after the charge.
ACQUIRE = _LIB + """
local now = clock(ARGV[1])
local w = tonumber(ARGV[2])
if marker(KEYS[1], now) then return '2,' .. num(now) end
local n = #KEYS - 1
local st, use = {}, {}
local best_i, best_kind, best_retry = 0, 0, nil
for i = 1, n do
  local b = 3 + 7 * (i - 1)
  local rl, tl = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 5])
  local e, r, rc, rd, k, kc, kd = view(KEYS[i + 1], now)
  local retry, kind = nil, 0
  if rl == 0 then
    retry, kind = math.huge, 1
  elseif rl > 0 then
    local cc, dd = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    if rc ~= cc or rd ~= dd then r, rc, rd = adopt(r, rc, rd, cc, dd) end
    local x = r + rc - rl * rc
    if x > 0 then retry, kind = (e - now) + ceil_div(x, rd), 1 end
  end
  local tr = nil
  if tl == 0 then
    if w > 0 then tr = math.huge end
  elseif tl > 0 then
    local cc, dd = tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7])
    if kc ~= cc or kd ~= dd then k, kc, kd = adopt(k, kc, kd, cc, dd) end
    if w > tl then
      tr = math.huge
    else
      local x = k + w * kc - tl * kc
      if x > 0 then tr = (e - now) + ceil_div(x, kd) end
    end
  end
  if tr ~= nil and (retry == nil or tr > retry) then retry, kind = tr, 2 end
  if retry ~= nil and (best_retry == nil or retry > best_retry) then
    best_i, best_kind, best_retry = i, kind, retry
  end
  local j = 7 * (i - 1)
  st[j + 1], st[j + 2], st[j + 3], st[j + 4], st[j + 5], st[j + 6], st[j + 7] = e, r, rc, rd, k, kc, kd
end
if best_retry ~= nil then
  -- a refusal reports the usage it found
  for i = 1, n do
    local j = 7 * (i - 1)
    local ur, ut = usage(st[j + 2], st[j + 3], st[j + 5], st[j + 6], tonumber(ARGV[3 + 7 * (i - 1) + 5]))
    use[#use + 1] = num(ur) .. ',' .. num(ut)
  end
  if best_retry == math.huge then best_retry = -1 end
  return '0,' .. num(now) .. ',' .. best_i .. ',' .. best_kind .. ',' .. num(best_retry) ..
         (n > 0 and (',' .. table.concat(use, ',')) or '')
end
-- every scope admits: charge them all
local out, held = {'1', num(now), '0', '0', '0'}, {}
for i = 1, n do
  local b = 3 + 7 * (i - 1)
  local j = 7 * (i - 1)
  local e, r, rc, rd, k, kc, kd = st[j + 1], st[j + 2], st[j + 3], st[j + 4], st[j + 5], st[j + 6], st[j + 7]
  if rc > 0 then r = r + rc end
  if kc > 0 then k = k + w * kc end
  if rc > 0 or kc > 0 then store(KEYS[i + 1], now, e, r, rc, rd, k, kc, kd, tonumber(ARGV[b + 1])) end
  local ur, ut = usage(r, rc, k, kc, tonumber(ARGV[b + 5]))
  out[#out + 1] = num(ur) .. ',' .. num(ut)
  held[#held + 1] = num(e) .. ',' .. num(r) .. ',' .. num(k)
end
set_marker(KEYS[1], 'a', now, tonumber(ARGV[3]))
if n > 0 then out[#out + 1] = table.concat(held, ',') end
return table.concat(out, ',')
"""

# A correction (settle) or take-back (release). KEYS as ACQUIRE.
# ARGV: now, requests to refund (0 or 1), tokens to refund (negative: to charge), marker
#       TTL µs, then per scope the 7 limit figures of ACQUIRE and the reservation's held
#       time, request level, token level (time -1: unknown, refund only floored at 0).
# Returns how many scopes it applied to; 0 for a reservation already corrected.
REFUND = _LIB + """
local now = clock(ARGV[1])
if marker(KEYS[1], now) == 'd' then return 0 end
local dr, dk = tonumber(ARGV[2]), tonumber(ARGV[3])
local fixed = 0
for i = 1, #KEYS - 1 do
  local b = 4 + 10 * (i - 1)
  local e, r, rc, rd, k, kc, kd = view(KEYS[i + 1], now)
  if tonumber(ARGV[b + 2]) > 0 then
    r, rc, rd = adopt(r, rc, rd, tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]))
  end
  if tonumber(ARGV[b + 5]) > 0 then
    k, kc, kd = adopt(k, kc, kd, tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7]))
  end
  local tx, rx, kx = tonumber(ARGV[b + 8]), tonumber(ARGV[b + 9]), tonumber(ARGV[b + 10])
  local touched, changed = false, false
  if dr > 0 and rc > 0 then
    touched = true
    local amt = dr * rc
    if tx >= 0 then
      local room = rx - (e - tx) * rd
      if room < amt then amt = room end
    end
    if amt > 0 then
      r = r - amt
      if r < 0 then r = 0 end
      changed = true
    end
  end
  if dk ~= 0 and kc > 0 then
    touched = true
    local amt = dk * kc
    if amt > 0 then
      if tx >= 0 then
        local room = kx - (e - tx) * kd
        if room < amt then amt = room end
      end
      if amt > 0 then
        k = k - amt
        if k < 0 then k = 0 end
        changed = true
      end
    else
      k = k - amt
      changed = true
    end
  end
  if touched then fixed = fixed + 1 end
  if changed then store(KEYS[i + 1], now, e, r, rc, rd, k, kc, kd, tonumber(ARGV[b + 1])) end
end
set_marker(KEYS[1], 'd', now, tonumber(ARGV[4]))
return fixed
"""

# Read-only: requests and tokens in use now. KEYS: bucket per scope; ARGV: now.
USAGE = _LIB + """
local now = clock(ARGV[1])
local out = {num(now)}
for i = 1, #KEYS do
  local _, r, rc, _, k, kc = view(KEYS[i], now)
  local ur, ut = usage(r, rc, k, kc, 0)
  out[#out + 1] = num(ur)
  out[#out + 1] = num(ut)
end
return table.concat(out, ',')
"""


def _ints(flat: Sequence[bytes]) -> list[int]:
    # whole numbers, printed with %d (past 2**53 with %.17g: exponent notation)
    try:
        return [int(x) for x in flat]
    except ValueError:
        return [int(float(x)) for x in flat]


def _pairs(flat: Sequence[int], start: int, stop: int) -> tuple[tuple[int, int], ...]:
    return tuple(zip(flat[start:stop:2], flat[start + 1:stop:2], strict=True))


def _held(flat: Sequence[int], start: int) -> tuple[tuple[int, int, int], ...]:
    return tuple(zip(flat[start::3], flat[start + 1::3], flat[start + 2::3], strict=True))


# -- the wire ---------------------------------------------------------------------------
# redis-py's generic path (argument packing, pool bookkeeping, retry wrappers) costs more
# than the round trip itself for a 21-argument EVALSHA. The hot path pre-encodes what is
# static per scope (keys and limits) and talks RESP on its own small set of connections,
# made by redis-py (same URL, auth, TLS, timeouts).


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


_EVALSHA = _bulk(b"EVALSHA")


@lru_cache(maxsize=65536)
def _encode_check(prefix: str, check: ScopeCheck) -> tuple[bytes, bytes]:
    """(bucket key, the 7 limit figures) of one scope, RESP-encoded."""
    rc, rd = units(check.requests, check.window_us)
    tc, td = units(check.tokens, check.window_us)
    figures = (check.window_us, check.requests, rc, rd, check.tokens, tc, td)
    return _bulk(f"{prefix}:{check.key}:g".encode()), b"".join(_bulk(b"%d" % f) for f in figures)


class _Script:
    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self.head = _EVALSHA + _bulk(self.sha.encode())


class _Wire:
    """Connections of our own (idle ones kept in a list: one event loop, no lock), at
    most ``size`` open at once: a caller beyond that waits for one to come back, up to
    ``wait_s``, then gets a ``ConnectionError`` (and the limiter fails open or closed as
    configured). 500 concurrent calls use ``size`` connections, not 500.

    Auto-pipelining: a command sent while another is waiting for its reply joins a
    batch instead; the batch leaves at the end of the event loop's turn (or at
    ``pipeline`` commands) as one write on one connection, and its replies are read in
    order. Concurrent calls then cost one ``send`` (a syscall that releases the GIL, a
    turn a background thread can take) and one wake-up per batch, not per call. Each
    EVALSHA stays atomic on its own, in the order the calls joined: the decisions are
    the ones the same calls sent one by one in that order would get. A lone call (no
    other in flight) is sent at once, as before."""

    def __init__(self, client: aioredis.Redis, size: int = 16, wait_s: float = 1.0, pipeline: int = 128) -> None:
        self.pool = client.connection_pool
        self.client = client
        self.idle: list[Any] = []
        self.closed = False
        self.size = size
        self.wait_s = wait_s
        self.slots = asyncio.Semaphore(size)
        self.opened = 0  # connections made over the wire's life (for tests and stats)
        self.pipeline = pipeline  # most commands in one batch; below 2: never batch
        self.in_flight = 0  # commands sent (or about to be) whose reply is not read yet
        self._batch: list[tuple[_Script, bytes, asyncio.Future[Any]]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches sent, and the commands in them (for tests and stats)
        self.batched = 0

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
        if self.in_flight and self.pipeline > 1:
            return await self._join(script, payload)
        self.in_flight += 1
        try:
            await self._slot()
            try:
                return await self._call(script, payload)
            finally:
                self.slots.release()
        finally:
            self.in_flight -= 1

    async def _slot(self) -> None:
        try:
            if self.slots.locked():  # only then can it wait: wait_for costs a task
                await asyncio.wait_for(self.slots.acquire(), self.wait_s)
            else:
                await self.slots.acquire()
        except TimeoutError:
            raise ConnectionError(f"rate limiter: all {self.size} Redis connections busy for {self.wait_s:g}s "
                                  "(SYNTHHOST_RATELIMIT_REDIS_POOL)") from None

    # -- auto-pipelining ------------------------------------------------------------------

    async def _join(self, script: _Script, payload: bytes) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._batch is None:
            self._batch = []
            loop.call_soon(self._flush)  # after every call ready in this turn has joined
        self._batch.append((script, payload, future))
        self.in_flight += 1
        if len(self._batch) >= self.pipeline:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[_Script, bytes, asyncio.Future[Any]]]) -> None:
        try:
            try:
                await self._slot()
            except ConnectionError as exc:
                _fail(batch, exc)
                return
            try:
                await self._pipelined(batch)
            finally:
                self.slots.release()
        except BaseException as exc:  # cancelled (loop closing) or a bug: no caller waits forever
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.in_flight -= len(batch)

    async def _pipelined(self, batch: list[tuple[_Script, bytes, asyncio.Future[Any]]]) -> None:
        """One write, then the replies in order. Commands that met NOSCRIPT, or were
        left without a reply by a connection that broke, are sent again one by one on
        the usual path (which loads the script, or retries on a fresh connection)."""
        batch = [entry for entry in batch if not entry[2].done()]  # callers cancelled before it left
        if not batch:
            return
        again: list[tuple[_Script, bytes, asyncio.Future[Any]]] = []
        conn, fresh = await self._get()
        self.batches += 1
        self.batched += len(batch)
        read = 0
        try:
            await self._send(conn, b"".join(payload for _, payload, _ in batch))
            for entry in batch:
                try:
                    reply = await conn.read_response()
                except NoScriptError:
                    again.append(entry)
                except ResponseError as exc:  # the script refused (an error reply): this caller's answer
                    _settle(entry[2], exc=exc)
                else:
                    _settle(entry[2], reply)
                read += 1
        except ConnectionError as exc:
            await conn.disconnect(nowait=True)
            await self._drop_idle()
            if fresh:
                _fail(again + batch[read:], exc)
                return
            again += batch[read:]
        except BaseException:  # timeout, cancellation: replies may still be in flight
            await conn.disconnect(nowait=True)
            raise
        else:
            await self._put(conn)
        for script, payload, future in again:
            if future.done():
                continue
            try:
                _settle(future, await self._call(script, payload))
            except Exception as exc:
                _settle(future, exc=exc)

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
        for task in list(self._tasks):  # batches still waiting for replies
            task.cancel()
        await self._drop_idle()


def _settle(future: asyncio.Future[Any], reply: Any = None, *, exc: BaseException | None = None) -> None:
    if future.done():  # its caller was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(reply)


def _fail(batch: Sequence[tuple[Any, Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    """Every caller of ``batch`` still waiting gets ``exc`` (its own copy); a batch cut
    short by the limiter closing answers as an unreachable Redis would, not with a
    cancellation its callers did not ask for."""
    if not isinstance(exc, Exception):
        exc = ConnectionError("rate limiter: closed while the decision was in flight")
    for _, _, future in batch:
        if not future.done():
            future.set_exception(copy.copy(exc))


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
    """GCRA buckets on Redis. ``clock`` (µs) replaces Redis' ``TIME`` in tests.

    On asyncio the calls go through redis.asyncio connections; under another event loop
    (trio) through redis-py's blocking client in a worker thread (``url`` needed)."""

    per_process = False

    def __init__(self, client: aioredis.Redis, prefix: str = "synthhost:rl",
                 clock: Callable[[], int] | None = None, *, url: str | None = None,
                 timeout_s: float = 0.25, pool_size: int = 16, marker_ttl_s: float = MARKER_TTL_S,
                 pipeline: int = 128) -> None:
        self.client = client
        self.prefix = prefix
        self._clock = clock
        self._pool_size = pool_size
        self._wire = _Wire(client, pool_size, wait_s=max(1.0, 4 * timeout_s), pipeline=pipeline)
        self._url, self._timeout_s = url, timeout_s
        self._sync_wire: _SyncWire | None = None
        self._marker_ttl = _bulk(b"%d" % round(marker_ttl_s * 1_000_000))
        self._blocking_wire: _SyncWire | None = None  # the settle thread's own connection
        self._acquire = _Script(ACQUIRE)
        self._refund = _Script(REFUND)
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
        """The bucket keys of these scopes (one per scope)."""
        return [f"{self.prefix}:{c.key}:g" for c in checks]

    def marker_key(self, member: str) -> str:
        return f"{self.prefix}:m:{member}"

    def _now(self) -> bytes:
        return _bulk(b"") if self._clock is None else _bulk(b"%d" % self._clock())

    def acquire_payload(self, checks: Sequence[ScopeCheck], member: str, weight: int) -> bytes:
        """The acquire's EVALSHA, RESP-encoded (benchmarks pipeline it)."""
        encoded = [_encode_check(self.prefix, c) for c in checks]
        n = len(checks)
        return b"".join((
            b"*%d\r\n" % (3 + 1 + n + 3 + 7 * n), self._acquire.head, _bulk(b"%d" % (1 + n)),
            _bulk(self.marker_key(member).encode()), *(e[0] for e in encoded),
            self._now(), _bulk(b"%d" % weight), self._marker_ttl,
            *(e[1] for e in encoded),
        ))

    @staticmethod
    def parse_acquire(checks: Sequence[ScopeCheck], reply: bytes) -> Decision:
        out = _ints(reply.split(b","))
        status, now = out[0], out[1]
        if status == 1:
            n = len(checks)
            return Decision(True, now, usage=_pairs(out, 5, 5 + 2 * n), held=_held(out, 5 + 2 * n))
        if status == 2:
            return Decision(True, now, duplicate=True)
        return refused(checks, now, out[2], out[3], out[4], _pairs(out, 5, len(out)))

    async def acquire(self, checks: Sequence[ScopeCheck], member: str, weight: int) -> Decision:
        reply = await self._call(self._acquire, self.acquire_payload(checks, member, weight))
        return self.parse_acquire(checks, reply)

    def _refund_payload(self, checks: Sequence[ScopeCheck], member: str, dr: int, dk: int,
                        held: Held) -> bytes:
        n = len(checks)
        scopes = []
        for i, c in enumerate(checks):
            t, r, k = held[i] if i < len(held) else (-1, 0, 0)
            scopes.append(_encode_check(self.prefix, c)[1] + _bulk(b"%d" % t) + _bulk(b"%d" % r)
                          + _bulk(b"%d" % k))
        payload = b"".join((
            b"*%d\r\n" % (3 + 1 + n + 4 + 10 * n), self._refund.head, _bulk(b"%d" % (1 + n)),
            _bulk(self.marker_key(member).encode()), *(_encode_check(self.prefix, c)[0] for c in checks),
            self._now(), _bulk(b"%d" % dr), _bulk(b"%d" % dk), self._marker_ttl, *scopes,
        ))
        return payload

    async def _refund_call(self, checks: Sequence[ScopeCheck], member: str, dr: int, dk: int,
                           held: Held) -> int:
        return int(await self._call(self._refund, self._refund_payload(checks, member, dr, dk, held)))

    async def settle(self, checks: Sequence[ScopeCheck], member: str, old: int, new: int,
                     held: Held = ()) -> int:
        if old == new or not checks:
            return 0
        return await self._refund_call(checks, member, 0, old - new, held)

    def settle_many_blocking(self, corrections: Sequence[tuple[Sequence[ScopeCheck], str, int, int, Held]]) -> int:
        """Apply several settles in one pipelined round trip, from a thread of its own
        (blocking client); returns the scopes corrected."""
        payloads = [self._refund_payload(checks, member, 0, old - new, held)
                    for checks, member, old, new, held in corrections if old != new and checks]
        if not payloads:
            return 0
        if self._blocking_wire is None:
            if self._url is None:
                raise RuntimeError("rate limiter: deferred settles need the Redis URL")
            self._blocking_wire = _SyncWire(self._url, max(1.0, self._timeout_s), pool_size=1)
        return sum(int(r) for r in self._blocking_wire.call_many_sync(self._refund, payloads))

    async def release(self, checks: Sequence[ScopeCheck], member: str, weight: int,
                      held: Held = ()) -> int:
        if not checks:
            return 0
        return await self._refund_call(checks, member, 1, weight, held)

    async def usage(self, checks: Sequence[ScopeCheck]) -> list[tuple[int, int]]:
        if not checks:
            return []
        n = len(checks)
        payload = b"".join((
            b"*%d\r\n" % (3 + n + 1), self._usage.head, _bulk(b"%d" % n),
            *(_encode_check(self.prefix, c)[0] for c in checks), self._now(),
        ))
        out = _ints((await self._call(self._usage, payload)).split(b","))
        return list(_pairs(out, 1, len(out)))

    async def scan_keys(self, pattern_key: str) -> list[str]:
        """Counter keys (without prefix and suffix) matching a key pattern, for status."""
        found: set[str] = set()
        async for raw in self.client.scan_iter(match=f"{self.prefix}:{pattern_key}:g", count=500):
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
            clock: Callable[[], int] | None = None, pool_size: int = 16,
            marker_ttl_s: float = MARKER_TTL_S, pipeline: int = 128) -> RedisLimiter:
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
    return RedisLimiter(client, prefix=prefix, clock=clock, url=url, timeout_s=timeout_s, pool_size=pool_size,
                        marker_ttl_s=marker_ttl_s, pipeline=pipeline)
