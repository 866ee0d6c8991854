"""The workers: take jobs from the queue, batch them, run the generator, write the results.

Dynamic batching: a worker takes the oldest job, then, holding that model's lock, collects
more queued jobs with the same batch key (same model, duration, controls and inputs) until
``max_batch`` or until ``batch_window_ms`` after the first job was queued.  The batch runs
as one ``generate`` call with one seed per prompt, so each row equals the job run alone and
every result stays reproducible from its seed.

Progress and cancellation go through the generator's ``callback(step, total)``: after each
step the worker records the step in the store and looks at the jobs' statuses; when every
job of the batch was canceled it raises :class:`JobCanceled`, which stops the generator at
once (a canceled job inside a larger batch just has its row thrown away).  A stopping
server raises :class:`ServerStopping` the same way and puts its running jobs back in the
queue, so a graceful restart loses nothing.  After a crash, :meth:`Scheduler.recover` marks
what was running as failed, with the reason (or succeeded, if its result was whole on disk),
and re-queues what was queued.

Several processes may share one queue and store (``tunesmith serve --queue redis://...``, see
redis_queue.py).  Then "what was running" means: running by a worker whose lease ran out
(:class:`Leases`: each process renews its own while it lives), never another live worker's
job; every process looks for such jobs every ``lease_s / 2`` and gives each another attempt
(up to ``max_attempts``), else fails it with the reason.  Each worker changes only the jobs it
still owns (``worker=`` on the store's updates), so a job handed on is finished once.

A janitor thread deletes finished jobs (row, result, uploads) ``result_ttl_s`` after they end.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
from typing import Any, Protocol

from tunesmith.serve import results
from tunesmith.serve.queue import JobQueue, MemoryQueue, QueueClosed, QueueFull, QueueItem
from tunesmith.serve.registry import ModelRegistry, ServedModel
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.store import (
    CANCELED,
    FAILED,
    INPUT_ERROR,
    INTERNAL_ERROR,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStore,
    SQLiteJobStore,
)
from tunesmith.serve.uploads import delete_uploads, upload_path

log = logging.getLogger("tunesmith.serve")

# Samplers that draw fresh noise at every step from the batch's first seed: a row of such a
# batch would not equal its job run alone, so those jobs always run alone.
STOCHASTIC_SAMPLERS = frozenset({"dpmpp-2m-sde", "dpmpp-3m-sde"})
JSON_TYPES = (dict, list, tuple, str, int, float, bool, type(None))

INTERRUPTED_REASON = "the server stopped while this job was running; submit it again (same seed, same result)"
WORKER_LOST_REASON = ("the worker running this job stopped ({attempts} attempts, the last on {worker}); "
                      "submit it again (same seed, same result)")


class JobCanceled(Exception):
    """Raised from the progress callback: every job of the running batch was canceled."""


class ServerStopping(Exception):
    """Raised from the progress callback: the server is shutting down."""


def batchable(job: Job, noise_controls: tuple[str, ...] | frozenset[str] = ()) -> bool:
    """Whether a job may share a batch and still equal the job run alone (its seed reproduces it).

    ``noise_controls``: the model's noise-optimisation (DITTO) targets.  Such a job runs alone:
    the optimisation's loss is one mean over the batch, normalised by the batch's starting loss,
    so a batched row drifts from the row alone (1e-5 after 2 iterations of the tiny DiT, more with
    more), and the generator's control_report (losses, correlation) describes the batch, not a row.
    """
    if job.controls.get("sampler") in STOCHASTIC_SAMPLERS:
        return False
    return not any(name in job.controls or name in job.inputs for name in noise_controls)


def json_safe(value: Any) -> Any:
    """A generator's report (Audio.info) as JSON values the store and sidecar keep: a NaN (the
    correlation with a flat target) or another non-finite number becomes null, and what is not
    JSON (a tensor) is dropped."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items() if isinstance(v, JSON_TYPES)}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value if isinstance(v, JSON_TYPES)]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def one_line(err: BaseException, limit: int = 300) -> str:
    message = " ".join((str(err) or type(err).__name__).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


class Leases(Protocol):
    """Which workers are alive.  ``worker_id`` names this process; ``shared``: other processes
    take from the same queue (so their running jobs are not ours to recover)."""

    worker_id: str
    shared: bool

    def start(self) -> None:
        """Hold this process's lease (and keep renewing it) until ``stop``."""
        ...

    def alive(self, worker_id: str | None) -> bool: ...

    def stop(self) -> None: ...


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class LocalLeases:
    """One server process owns the store: only this process is alive, so whatever the store
    says is running when it starts was left by a process that is gone."""

    shared = False

    def __init__(self) -> None:
        self.worker_id = new_worker_id()

    def start(self) -> None:
        pass

    def alive(self, worker_id: str | None) -> bool:
        return worker_id == self.worker_id

    def stop(self) -> None:
        pass


def open_backend(settings: ServeSettings) -> tuple[JobStore, JobQueue, Leases]:
    """The store, queue and leases ``settings`` ask for: SQLite + memory for one process, or
    the Redis server at ``settings.queue_url``, shared with other processes."""
    if settings.queue_url:
        from tunesmith.serve.redis_queue import connect

        return connect(settings)
    return SQLiteJobStore(settings.database), MemoryQueue(settings.max_queue), LocalLeases()


class Scheduler:
    """Worker threads over a queue and a store; ``submit`` and ``cancel`` are what routes call."""

    def __init__(self, settings: ServeSettings, store: JobStore, queue: JobQueue, registry: ModelRegistry,
                 leases: Leases | None = None) -> None:
        self.settings, self.store, self.queue, self.registry = settings, store, queue, registry
        self.leases = leases or LocalLeases()
        self.worker_id = self.leases.worker_id
        self._unqueued: set[str] = set()  # queued in the store but in no queue, at the last look
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seconds_per_job = 10.0  # a running estimate, for Retry-After
        self._estimate_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self.leases.start()
        self.recover()
        for i in range(self.settings.workers):
            self._spawn(self._work, f"tunesmith-worker-{i}")
        self._spawn(self._janitor, "tunesmith-janitor")

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work; running batches stop at their next step and go back to the queue."""
        self._stopping.set()
        self.queue.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.leases.stop()

    def recover(self) -> None:
        """After a restart: what was running ended with the process (failed, with the reason,
        unless its result is whole on disk, or queued again while it has attempts left); what
        was queued is queued again, in order (a shared queue ignores what it holds already)."""
        self.reclaim()
        for job in self.store.with_status(QUEUED):
            self.queue.put(QueueItem(job.id, job.batch_key), force=True)

    def reclaim(self) -> int:
        """Running jobs whose worker is gone: succeeded if the result is whole on disk, else
        queued again if attempts are left, else failed with the reason.  Returns how many."""
        found = 0
        for job in self.store.with_status(RUNNING):
            if self.leases.alive(job.worker):
                continue
            found += 1
            meta = results.read_sidecar(self.settings.results_dir, job)
            if meta is not None:
                self.store.finish(job.id, SUCCEEDED, sample_rate=meta.get("sample_rate"),
                                  generation_seconds=meta.get("generation_seconds"), worker=job.worker,
                                  info=results.info_of(meta))
                continue
            results.delete_result(self.settings.results_dir, job)  # a lone sidecar, temp files
            if max(job.attempts, 1) < self.settings.max_attempts:
                if self.store.requeue([job.id], job.worker, count_attempt=True):
                    self.queue.put(QueueItem(job.id, job.batch_key), force=True)
                    log.warning("job %s: its worker %s stopped; queued again (attempt %d of %d next)",
                                job.id, job.worker, job.attempts + 1, self.settings.max_attempts)
                continue
            reason = (WORKER_LOST_REASON.format(attempts=job.attempts, worker=job.worker)
                      if self.leases.shared else INTERRUPTED_REASON)
            if self.store.finish(job.id, FAILED, error=reason, error_kind=INTERRUPTED, worker=job.worker):
                log.warning("job %s was running when its worker %s stopped: marked failed", job.id, job.worker)
        return found

    def requeue_lost(self) -> int:
        """Queued jobs in no queue at two looks in a row (a worker died between taking them
        and starting them): queued again.  Only for a shared queue; returns how many."""
        missing = {job.id: job for job in self.store.with_status(QUEUED) if self.queue.position(job.id) is None}
        again = [missing[i] for i in missing.keys() & self._unqueued]
        for job in again:
            self.queue.put(QueueItem(job.id, job.batch_key), force=True)
        self._unqueued = set(missing) - {job.id for job in again}
        return len(again)

    # -- what the routes call --------------------------------------------------------

    def submit(self, job: Job) -> int:
        """Store and queue a job; returns its queue position.  Raises QueueFull."""
        self.store.add(job)
        try:
            return self.queue.put(QueueItem(job.id, job.batch_key))
        except (QueueFull, QueueClosed):
            self.store.delete(job.id)
            raise

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns its status before (None: unknown)."""
        before = self.store.cancel(job_id)
        if before == QUEUED:
            self.queue.remove(job_id)
        return before

    def position(self, job_id: str) -> int | None:
        return self.queue.position(job_id)

    def retry_after(self) -> int:
        """Seconds until the queue has room, roughly: what a 429 tells a client to wait."""
        with self._estimate_lock:
            per_job = self._seconds_per_job
        waiting = max(1, len(self.queue) - self.queue.capacity + 1)
        return int(min(3600, max(1, math.ceil(per_job * waiting / max(1, self.settings.workers)))))

    # -- the workers -------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self.queue.take(timeout=0.5)
            except QueueClosed:
                return
            if item is None:
                continue
            try:
                self._run_item(item)
            except Exception:  # a worker never dies: log, and take the next job
                log.exception("worker failed on job %s", item.job_id)

    def _run_item(self, item: QueueItem) -> None:
        job = self.store.get(item.job_id)
        if job is None or job.status != QUEUED:
            return  # canceled (or deleted) while it waited
        try:
            model = self.registry.get(job.model)
        except KeyError as err:  # queued before a restart that dropped the model
            self.store.finish(job.id, FAILED, from_statuses=(QUEUED,), error=str(err.args[0]), error_kind=INPUT_ERROR)
            return
        with model.lock:
            noise = tuple(getattr(model.generator, "NOISE_CONTROLS", ()))
            batch = [job] + (self._companions(item) if batchable(job, noise) else [])
            self._run_batch(model, batch)

    def _companions(self, first: QueueItem) -> list[Job]:
        """Queued jobs that can share ``first``'s batch, waiting up to the batch window."""
        found: list[Job] = []
        limit = self.settings.max_batch - 1
        deadline = first.enqueued_at + self.settings.batch_window_ms / 1000.0
        while len(found) < limit:
            items = self.queue.take_matching(first.batch_key, limit - len(found),
                                             max(0.0, deadline - time.monotonic()))
            if not items:
                break
            for item in items:
                job = self.store.get(item.job_id)
                if job is not None and job.status == QUEUED:
                    found.append(job)
        return found

    def _run_batch(self, model: ServedModel, batch: list[Job]) -> None:
        started = self.store.start([job.id for job in batch], len(batch), self.worker_id)
        batch = [job for job in batch if job.id in started]
        if not batch:
            return
        ids = [job.id for job in batch]
        first = batch[0]
        inputs = {name: str(upload_path(self.settings.uploads_dir, stored)) for name, stored in first.inputs.items()}

        def callback(step: int, total: int) -> None:
            self.store.progress(ids, step, total)
            if self._stopping.is_set():
                raise ServerStopping()
            if all(status == CANCELED for status in self.store.statuses(ids).values()):
                raise JobCanceled()

        seeds: int | list[int] = [job.seed for job in batch] if len(batch) > 1 else first.seed
        start = time.perf_counter()
        try:
            audio = model.generator.generate([job.prompt for job in batch], first.duration, seeds,
                                             callback=callback, **first.controls, **inputs)
        except JobCanceled:
            log.info("batch %s canceled", ids)
            return
        except ServerStopping:
            keys = {job.id: job.batch_key for job in batch}
            for job_id in self.store.requeue(ids, self.worker_id):
                try:  # a shared queue takes it now; a closed local one gets it from the store at the next start
                    self.queue.put(QueueItem(job_id, keys[job_id]), force=True)
                except QueueClosed:
                    pass
            return
        except ValueError as err:  # the request cannot be generated (tunesmith's UserErrors are ValueErrors)
            self._fail(ids, one_line(err), INPUT_ERROR)
            return
        except Exception as err:
            log.exception("generation failed for %s", ids)
            self._fail(ids, f"internal error: {one_line(err)}", INTERNAL_ERROR)
            return
        seconds = time.perf_counter() - start
        self._note_time(seconds / len(batch))
        info = json_safe(audio.info) if len(batch) == 1 else {}  # a report is of the whole call
        for i, job in enumerate(batch):
            self._deliver(job, audio.samples[i], audio.sample_rate, seconds, len(batch), info)

    def _deliver(self, job: Job, samples: Any, sample_rate: int, seconds: float, batch_size: int,
                 info: dict[str, Any] | None = None) -> None:
        now = self.store.get(job.id)
        if now is None or now.status != RUNNING or now.worker != self.worker_id:
            return  # canceled while its batch ran (or handed to another worker: this one was presumed dead)
        try:
            results.write_result(self.settings.results_dir, job, samples, sample_rate, seconds, batch_size, info)
        except Exception as err:
            log.exception("cannot write the result of %s", job.id)
            self.store.finish(job.id, FAILED, error=f"cannot write the result: {one_line(err)}",
                              error_kind=INTERNAL_ERROR, worker=self.worker_id)
            return
        if not self.store.finish(job.id, SUCCEEDED, sample_rate=sample_rate, generation_seconds=round(seconds, 3),
                                 worker=self.worker_id, info=info):
            if self.store.statuses([job.id]).get(job.id) == CANCELED:
                results.delete_result(self.settings.results_dir, job)  # canceled between the check and now

    def _fail(self, ids: list[str], message: str, kind: str) -> None:
        for job_id in ids:
            self.store.finish(job_id, FAILED, error=message, error_kind=kind, worker=self.worker_id)

    def _note_time(self, seconds: float) -> None:
        with self._estimate_lock:
            self._seconds_per_job = 0.7 * self._seconds_per_job + 0.3 * seconds

    # -- retention ---------------------------------------------------------------------

    def _janitor(self) -> None:
        """Retention every ``cleanup_interval_s``; with a shared queue also, every ``lease_s / 2``,
        the jobs of workers that died (any live process may do it: every change is conditional)."""
        shared = self.leases.shared
        tick = min(self.settings.cleanup_interval_s, self.settings.lease_s / 2) if shared else \
            self.settings.cleanup_interval_s
        next_cleanup = time.monotonic() + self.settings.cleanup_interval_s
        while not self._stopping.wait(tick):
            if shared:
                try:
                    self.reclaim()
                    self.requeue_lost()
                except Exception:
                    log.exception("recovering the jobs of stopped workers failed")
            if time.monotonic() >= next_cleanup:
                next_cleanup = time.monotonic() + self.settings.cleanup_interval_s
                try:
                    self.cleanup()
                except Exception:
                    log.exception("cleanup failed")

    def cleanup(self, now: float | None = None) -> int:
        """Delete finished jobs older than the retention time (result, uploads, then the row)
        and uploads no job refers to; returns how many jobs went."""
        now = time.time() if now is None else now
        expired = self.store.expired(now - self.settings.result_ttl_s)
        for job in expired:
            results.delete_result(self.settings.results_dir, job)
            delete_uploads(self.settings.uploads_dir, list(job.inputs.values()))
            self.store.delete(job.id)
        self._sweep_uploads(now)
        return len(expired)

    def _sweep_uploads(self, now: float) -> None:
        """Uploads left by a request that died between storing them and queuing its job."""
        directory = self.settings.uploads_dir
        if not directory.is_dir():
            return
        live = {name for status in (QUEUED, RUNNING) for job in self.store.with_status(status)
                for name in job.inputs.values()}
        for path in directory.iterdir():
            try:
                if path.name not in live and now - path.stat().st_mtime > self.settings.result_ttl_s:
                    path.unlink()
            except OSError:
                pass
