"""The queue, the job store and the workers' leases on one Redis server, shared by processes.

``tunesmith serve --queue redis://HOST:PORT/DB`` (an API server, with or without its own
workers) and ``tunesmith serve --worker-only --queue redis://...`` (workers, no HTTP) on any
number of machines: every process pushes to and takes from the same queue, and reads and
writes the same job rows.  Nothing here coordinates processes by itself; each operation is
one atomic Redis command or Lua script, so two processes never take the same queued item
and a job's status changes once.  Audio (uploads and results) stays in files under the
data directory, which every process must see at the same path (one disk, or a shared mount).

Keys (prefix ``tunesmith:``):

    job:<id>          hash: the Job's fields, each JSON
    jobs              zset: every job by created_at (GET /v1/generations)
    status:<status>   zset: jobs by created_at, one per status
    ended             zset: finished jobs by finished_at (retention)
    queue             zset: queued job ids by arrival number (the queue; ZRANK = position)
    queue:item        hash: id -> {"k": batch key, "t": when queued}
    queue:by:<sha1>   zset: the queue's ids of one batch key (what a batching worker looks up)
    queue:seq         counter
    worker:<id>       a worker's lease: exists while its process lives (renewed every lease/3)

A worker that dies (kill -9, a lost machine) stops renewing its lease; within ``lease_s``
any live process finds its running jobs and queues them again (``max_attempts``) or fails
them with the reason (see Scheduler.reclaim).  Standalone Redis (or a primary with
replicas); not Redis Cluster (the scripts touch keys they compute).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, fields
from typing import Any

from tunesmith.serve.queue import QueueClosed, QueueFull, QueueItem
from tunesmith.serve.scheduler import new_worker_id
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.store import FINISHED, QUEUED, RUNNING, STATUSES, Job

log = logging.getLogger("tunesmith.serve")

PREFIX = "tunesmith:"
_FIELDS = {f.name for f in fields(Job)}

# A status change: KEYS[1] the job's hash.  ARGV: id, prefix, new status, allowed statuses
# (comma-separated), required worker (its JSON, or ''), score for the 'ended' index (or ''),
# attempts delta, then field/value pairs.  Returns {changed 0/1, the status before (or '')}.
_MOVE = """
local key, id, prefix, new = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('HGET', key, 'status')
if not cur then return {0, ''} end
cur = cjson.decode(cur)
if not string.find(',' .. ARGV[4] .. ',', ',' .. cur .. ',', 1, true) then return {0, cur} end
if ARGV[5] ~= '' and redis.call('HGET', key, 'worker') ~= ARGV[5] then return {0, cur} end
local created = redis.call('HGET', key, 'created_at')
redis.call('ZREM', prefix .. 'status:' .. cur, id)
redis.call('ZADD', prefix .. 'status:' .. new, created, id)
redis.call('HSET', key, 'status', cjson.encode(new))
if ARGV[6] ~= '' then redis.call('ZADD', prefix .. 'ended', ARGV[6], id) end
local delta = tonumber(ARGV[7])
if delta ~= 0 then
  local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0') + delta
  if attempts < 0 then attempts = 0 end
  redis.call('HSET', key, 'attempts', tostring(attempts))
end
for i = 8, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
return {1, cur}
"""

_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') == '"running"' then
  redis.call('HSET', KEYS[1], 'step', ARGV[1], 'total', ARGV[2])
end
return 0
"""

# KEYS: queue, seq, items, by-key.  ARGV: id, capacity, force (0/1), item JSON.
# Returns the position (1 = next), or 0 when full.  An id already queued keeps its place.
_PUT = """
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
if rank then return rank + 1 end
if ARGV[3] == '0' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local n = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], n, ARGV[1])
redis.call('ZADD', KEYS[4], n, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"""

# After a BZPOPMIN took ARGV[1] off the queue: its item, and no trace left.  KEYS: items.  ARGV: id, prefix.
_TOOK = """
local item = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if item then redis.call('ZREM', ARGV[2] .. 'queue:by:' .. redis.sha1hex(cjson.decode(item).k), ARGV[1]) end
return item
"""

# Up to ARGV[1] of the oldest queued ids of one batch key.  KEYS: queue, items, by-key.
# Returns id, item, id, item, ...  (an id only in by-key was taken by someone else: dropped)
_TAKE_MATCHING = """
local out, limit = {}, tonumber(ARGV[1])
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if #out >= 2 * limit then break end
  redis.call('ZREM', KEYS[3], id)
  if redis.call('ZREM', KEYS[1], id) == 1 then
    table.insert(out, id)
    table.insert(out, redis.call('HGET', KEYS[2], id) or '')
    redis.call('HDEL', KEYS[2], id)
  end
end
return out
"""

# KEYS: queue, items.  ARGV: id, prefix.  Returns 1 if it was queued.
_REMOVE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local item = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if item then redis.call('ZREM', ARGV[2] .. 'queue:by:' .. redis.sha1hex(cjson.decode(item).k), ARGV[1]) end
return 1
"""


def _encode(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class RedisJobStore:
    """:class:`tunesmith.serve.store.JobStore` on Redis hashes (one per job) and sorted-set indexes."""

    def __init__(self, client: Any, prefix: str = PREFIX) -> None:
        self.client, self.prefix = client, prefix
        self._move = client.register_script(_MOVE)
        self._progress = client.register_script(_PROGRESS)

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    @staticmethod
    def _job(raw: dict[Any, Any]) -> Job | None:
        if not raw:
            return None
        values = {}
        for name, value in raw.items():
            name = name.decode() if isinstance(name, bytes) else name
            if name in _FIELDS:
                values[name] = json.loads(value)
        return Job(**values)

    def _jobs(self, ids: list[Any]) -> list[Job]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._key(job_id.decode() if isinstance(job_id, bytes) else job_id))
        return [job for job in map(self._job, pipe.execute()) if job is not None]

    def _change(self, job_id: str, new: str, allowed: tuple[str, ...], *, owner: str | None = None,
                attempts: int = 0, client: Any = None, **values: Any) -> Any:
        """``new`` if the job is in ``allowed`` (and, given ``owner``, that worker's), setting ``values``."""
        ended = _encode(values["finished_at"]) if new in FINISHED else ""
        pairs = [x for name, value in values.items() for x in (name, _encode(value))]
        return self._move(keys=[self._key(job_id)],
                          args=[job_id, self.prefix, new, ",".join(allowed),
                                "" if owner is None else _encode(owner), ended, attempts, *pairs],
                          client=client)

    # -- JobStore ----------------------------------------------------------------

    def add(self, job: Job) -> None:
        values = {name: _encode(value) for name, value in asdict(job).items()}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._key(job.id), mapping=values)
        pipe.zadd(f"{self.prefix}jobs", {job.id: job.created_at})
        pipe.zadd(f"{self.prefix}status:{job.status}", {job.id: job.created_at})
        if job.finished:
            pipe.zadd(f"{self.prefix}ended", {job.id: job.finished_at or job.created_at})
        pipe.execute()

    def get(self, job_id: str) -> Job | None:
        return self._job(self.client.hgetall(self._key(job_id)))

    def recent(self, limit: int) -> list[Job]:
        return self._jobs(self.client.zrevrange(f"{self.prefix}jobs", 0, limit - 1))

    def with_status(self, status: str) -> list[Job]:
        return [job for job in self._jobs(self.client.zrange(f"{self.prefix}status:{status}", 0, -1))
                if job.status == status]

    def start(self, job_ids: list[str], batch_size: int, worker: str | None = None) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            self._change(job_id, RUNNING, (QUEUED,), attempts=1, client=pipe, started_at=time.time(),
                         batch_size=batch_size, step=0, total=0, worker=worker)
        return [job_id for job_id, (changed, _) in zip(job_ids, pipe.execute()) if changed]

    def progress(self, job_ids: list[str], step: int, total: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            self._progress(keys=[self._key(job_id)], args=[step, total], client=pipe)
        pipe.execute()

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self._key(job_id), "status")
        return {job_id: json.loads(raw) for job_id, raw in zip(job_ids, pipe.execute()) if raw is not None}

    def finish(self, job_id: str, status: str, *, from_statuses: tuple[str, ...] = (RUNNING,),
               error: str | None = None, error_kind: str | None = None, sample_rate: int | None = None,
               generation_seconds: float | None = None, worker: str | None = None,
               info: dict[str, Any] | None = None) -> bool:
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status}")
        changed, _ = self._change(job_id, status, from_statuses, owner=worker, finished_at=time.time(), error=error,
                                  error_kind=error_kind, sample_rate=sample_rate,
                                  generation_seconds=generation_seconds, info=info or {})
        return bool(changed)

    def requeue(self, job_ids: list[str], worker: str | None = None, *, count_attempt: bool = False) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            self._change(job_id, QUEUED, (RUNNING,), owner=worker, attempts=0 if count_attempt else -1,
                         client=pipe, started_at=None, step=0, total=0)
        return [job_id for job_id, (changed, _) in zip(job_ids, pipe.execute()) if changed]

    def cancel(self, job_id: str) -> str | None:
        _, before = self._change(job_id, "canceled", (QUEUED, RUNNING), finished_at=time.time())
        before = before.decode() if isinstance(before, bytes) else before
        return before or None

    def expired(self, before: float) -> list[Job]:
        return [job for job in self._jobs(self.client.zrangebyscore(f"{self.prefix}ended", "-inf", f"({before}"))
                if job.finished]

    def delete(self, job_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._key(job_id))
        for index in ("jobs", "ended", *(f"status:{status}" for status in STATUSES)):
            pipe.zrem(f"{self.prefix}{index}", job_id)
        pipe.execute()

    def close(self) -> None:
        self.client.close()


class RedisQueue:
    """:class:`tunesmith.serve.queue.JobQueue` on a Redis sorted set, shared by processes.

    ``take`` blocks in Redis (BZPOPMIN: exactly one taker gets each item); ``take_matching``
    looks every 10 ms within its window.  ``close`` stops this process taking; the queue
    itself (and ``put``, for jobs handed back) stays."""

    POLL_S = 0.01

    def __init__(self, client: Any, capacity: int, prefix: str = PREFIX) -> None:
        self.client, self.capacity, self.prefix = client, capacity, prefix
        self._queue, self._items = f"{prefix}queue", f"{prefix}queue:item"
        self._put = client.register_script(_PUT)
        self._took = client.register_script(_TOOK)
        self._take_matching = client.register_script(_TAKE_MATCHING)
        self._remove = client.register_script(_REMOVE)
        self._closed = threading.Event()

    def _by_key(self, batch_key: str) -> str:
        return f"{self.prefix}queue:by:{hashlib.sha1(batch_key.encode()).hexdigest()}"

    @staticmethod
    def _item(job_id: Any, raw: Any) -> QueueItem:
        """Its enqueue time, from wall-clock seconds (comparable across machines) to this process's monotonic clock."""
        job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
        data = json.loads(raw) if raw else {"k": "", "t": time.time()}
        return QueueItem(job_id, data["k"], time.monotonic() - max(0.0, time.time() - data["t"]))

    def put(self, item: QueueItem, *, force: bool = False) -> int:
        position = self._put(keys=[self._queue, f"{self.prefix}queue:seq", self._items, self._by_key(item.batch_key)],
                             args=[item.job_id, self.capacity, int(force),
                                   json.dumps({"k": item.batch_key, "t": time.time()})])
        if position == 0:
            raise QueueFull()
        return int(position)

    def take(self, timeout: float) -> QueueItem | None:
        if self._closed.is_set():
            raise QueueClosed()
        found = self.client.bzpopmin(self._queue, timeout=max(0.01, timeout))
        if not found:
            return None
        _, job_id, _ = found
        job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
        item = self._item(job_id, self._took(keys=[self._items], args=[job_id, self.prefix]))
        if self._closed.is_set():  # stopping: hand it back for another worker
            self.put(item, force=True)
            raise QueueClosed()
        return item

    def take_matching(self, batch_key: str, limit: int, timeout: float) -> list[QueueItem]:
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            found = self._take_matching(keys=[self._queue, self._items, self._by_key(batch_key)], args=[limit])
            if found:
                return [self._item(found[i], found[i + 1]) for i in range(0, len(found), 2)]
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(self.POLL_S, left))
        return []

    def remove(self, job_id: str) -> bool:
        return bool(self._remove(keys=[self._queue, self._items], args=[job_id, self.prefix]))

    def position(self, job_id: str) -> int | None:
        rank = self.client.zrank(self._queue, job_id)
        return None if rank is None else rank + 1

    def __len__(self) -> int:
        return int(self.client.zcard(self._queue))

    def close(self) -> None:
        self._closed.set()


class RedisLeases:
    """:class:`tunesmith.serve.scheduler.Leases` as one expiring key per process, renewed by a thread."""

    shared = True

    def __init__(self, client: Any, lease_s: float, prefix: str = PREFIX) -> None:
        self.client, self.lease_s, self.prefix = client, lease_s, prefix
        self.worker_id = new_worker_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _key(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{worker_id}"

    def _renew(self) -> None:
        self.client.set(self._key(self.worker_id), str(time.time()), px=max(1, int(self.lease_s * 1000)))

    def start(self) -> None:
        self._renew()

        def renew() -> None:
            while not self._stop.wait(self.lease_s / 3):
                try:
                    self._renew()
                except Exception as err:  # Redis away for a moment: the next beat may still be in time
                    log.warning("cannot renew the lease of worker %s: %s", self.worker_id, err)

        self._thread = threading.Thread(target=renew, name="tunesmith-lease", daemon=True)
        self._thread.start()

    def alive(self, worker_id: str | None) -> bool:
        if not worker_id:
            return False
        return worker_id == self.worker_id or bool(self.client.exists(self._key(worker_id)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.client.delete(self._key(self.worker_id))
        except Exception:
            pass


def connect(settings: ServeSettings) -> tuple[RedisJobStore, RedisQueue, RedisLeases]:
    """The store, queue and leases at ``settings.queue_url``; ValueError (one line) when the
    extra is missing or the server does not answer."""
    try:
        import redis
    except ImportError:
        raise ValueError("--queue redis://... needs the redis extra: pip install 'tunesmith[redis]'") from None
    client = redis.Redis.from_url(settings.queue_url, health_check_interval=30)
    try:
        client.ping()
    except redis.RedisError as err:
        raise ValueError(f"cannot reach Redis at {settings.queue_url}: {' '.join(str(err).split())}") from None
    return (RedisJobStore(client), RedisQueue(client, settings.max_queue),
            RedisLeases(client, settings.lease_s))
