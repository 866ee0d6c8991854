"""Several processes on one Redis queue: a real ``redis-server`` on a free loopback port, an API
server (``tunesmith serve --queue redis://... --workers 0``) and two worker processes
(``tunesmith serve --worker-only``) on the same data directory.

Every job runs once and is retrievable through the API; a worker killed with SIGKILL mid-job
loses nothing (its job runs again on the other worker, once); a job whose workers keep dying
fails with the reason; and the Redis queue and store keep the contracts the scheduler relies
on (one taker per item, conditional status changes, the owner's changes only).

Skipped only when redis-server (apt package redis-server) or the redis client is absent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
redis = pytest.importorskip("redis", reason="the redis client is not installed: pip install 'tunesmith[redis]'")

from tunesmith.serve.queue import QueueClosed, QueueFull, QueueItem  # noqa: E402
from tunesmith.serve.redis_queue import PREFIX, RedisJobStore, RedisLeases, RedisQueue  # noqa: E402
from tunesmith.serve.registry import ModelRegistry  # noqa: E402
from tunesmith.serve.scheduler import Scheduler  # noqa: E402
from tunesmith.serve.settings import ServeSettings  # noqa: E402
from tunesmith.serve.store import FAILED, QUEUED, RUNNING, Job  # noqa: E402
from tunesmith.serve.testing import (  # noqa: E402
    free_port, get_job, running_server, submit_job, tiny_generator, wait_for_job,
)

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None,
                                reason="redis-server is not installed (apt-get install redis-server; CI installs it)")

LEASE = 2.0  # seconds: a killed worker's job moves on within ~3 s
WORKER_ARGS = ["--torch-threads", "1", "--log-level", "warning", "--max-steps", "1000", "--lease", str(LEASE)]
FINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A private redis-server on a free loopback port, nothing saved to disk."""
    directory = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(directory)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    c.flushdb()
    yield c
    c.close()


def job(job_id: str, *, steps: int = 2, created: float | None = None) -> Job:
    return Job(id=job_id, model="m", prompt="a tune", duration=1.0, seed=1, format="wav", controls={"steps": steps},
               created_at=created or time.time())


# -- the queue and the store -------------------------------------------------------------

def test_queue_is_fifo_bounded_and_hands_each_item_to_one_taker(client, redis_url):
    queue = RedisQueue(client, capacity=40)
    assert [queue.put(QueueItem(f"j{i}", "k")) for i in range(3)] == [1, 2, 3]
    assert queue.put(QueueItem("j1", "k")) == 2, "an id already queued keeps its place"
    assert queue.position("j2") == 3 and len(queue) == 3
    assert queue.take(0.1).job_id == "j0"
    assert queue.remove("j1") and not queue.remove("j1")
    assert queue.position("j2") == 1 and queue.take(0.1).job_id == "j2"
    assert queue.take(0.05) is None

    small = RedisQueue(client, capacity=1, prefix="other:")
    small.put(QueueItem("a", "k"))
    with pytest.raises(QueueFull):
        small.put(QueueItem("b", "k"))
    assert small.put(QueueItem("b", "k"), force=True) == 2  # a restart re-queues beyond the bound

    for i in range(40):
        queue.put(QueueItem(f"x{i}", f"key{i % 3}"))
    taken: list[str] = []
    lock = threading.Lock()

    def taker() -> None:
        other = RedisQueue(redis.Redis.from_url(redis_url), capacity=40)  # its own connections, like a process
        while True:
            item = other.take(0.2)
            if item is None:
                return
            found = [item] + other.take_matching(item.batch_key, 3, 0.0)
            assert all(i.batch_key == item.batch_key for i in found)
            with lock:
                taken.extend(i.job_id for i in found)

    threads = [threading.Thread(target=taker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(taken) == sorted(f"x{i}" for i in range(40)), "an item was lost or taken twice"

    queue.close()
    with pytest.raises(QueueClosed):
        queue.take(0.1)
    assert queue.take_matching("k", 2, 0.1) == []


def test_store_changes_are_conditional_and_only_the_owner_finishes(client):
    store = RedisJobStore(client)
    for i in range(3):
        store.add(job(f"j{i}", created=1000.0 + i))
    assert store.start(["j0", "j1"], 2, "w1") == ["j0", "j1"]
    assert store.start(["j0", "j2"], 2, "w2") == ["j2"], "a running job is not started twice"
    store.progress(["j0"], 3, 12)
    found = store.get("j0")
    assert (found.status, found.worker, found.attempts, found.step, found.total, found.batch_size) == \
        (RUNNING, "w1", 1, 3, 12, 2)
    assert not store.finish("j0", "succeeded", worker="w2"), "another worker finished w1's job"
    assert store.finish("j0", "succeeded", worker="w1", sample_rate=24000)
    assert not store.finish("j0", "failed", worker="w1"), "a finished job changed again"
    assert store.requeue(["j1"], "w2") == [] and store.requeue(["j1"], "w1") == ["j1"]
    assert store.get("j1").attempts == 0, "a graceful hand-back does not count as an attempt"
    assert store.start(["j1"], 1, "w3") == ["j1"]
    assert store.requeue(["j1"], "w3", count_attempt=True) == ["j1"] and store.get("j1").attempts == 1
    assert store.cancel("j1") == QUEUED and store.cancel("j1") == "canceled" and store.cancel("nope") is None
    assert [j.id for j in store.with_status(RUNNING)] == ["j2"]
    assert [j.id for j in store.recent(10)] == ["j2", "j1", "j0"]
    assert {j.id for j in store.expired(time.time() + 1)} == {"j0", "j1"}
    store.delete("j0")
    assert store.get("j0") is None and [j.id for j in store.recent(10)] == ["j2", "j1"]
    assert store.statuses(["j1", "j2", "nope"]) == {"j1": "canceled", "j2": RUNNING}


def test_a_job_whose_workers_die_runs_again_then_fails_with_the_reason(client, tmp_path):
    """Scheduler.reclaim in any live process: a dead worker's job is queued again while it has
    attempts left, then failed with the reason; a live worker's job is left alone."""
    settings = ServeSettings(data_dir=tmp_path, queue_url="redis://unused", workers=0, max_attempts=2, lease_s=1.0)
    store, queue = RedisJobStore(client), RedisQueue(client, 8)
    leases = RedisLeases(client, lease_s=5.0)
    scheduler = Scheduler(settings, store, queue, ModelRegistry.of({"m": object()}), leases)
    live = RedisLeases(client, lease_s=5.0)
    live.start()
    try:
        for name in ("doomed", "fine"):
            store.add(job(name))
        store.start(["doomed"], 1, "ghost-1")  # no such lease: its process is gone
        store.start(["fine"], 1, live.worker_id)
        assert scheduler.reclaim() == 1
        assert store.get("fine").status == RUNNING
        assert store.get("doomed").status == QUEUED and queue.position("doomed") == 1
        assert queue.take(0.1).job_id == "doomed"
        store.start(["doomed"], 1, "ghost-2")
        assert scheduler.reclaim() == 1
        failed = store.get("doomed")
        assert failed.status == FAILED and failed.attempts == 2
        assert "worker running this job stopped" in failed.error and "ghost-2" in failed.error
        assert scheduler.reclaim() == 0

        # a worker that died after taking a job but before starting it: queued again at the second look
        store.add(job("taken"))
        assert scheduler.requeue_lost() == 0 and queue.position("taken") is None
        assert scheduler.requeue_lost() == 1 and queue.position("taken") == 1
    finally:
        live.stop()


# -- processes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_generator(tmp_path_factory.mktemp("models") / "tiny-dit")


def start_worker(model_dir: Path, data: Path, url: str, name: str) -> subprocess.Popen:
    with open(data.parent / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", "--worker-only", "--queue", url,
                                 "--data-dir", str(data), "--model", str(model_dir), *WORKER_ARGS],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})








def row(client, job_id: str) -> dict[str, Any]:
    """The job as the shared store holds it (worker and attempts are not in the API)."""
    return {k.decode(): json.loads(v) for k, v in client.hgetall(f"{PREFIX}job:{job_id}").items()}


@pytest.mark.slow
def test_an_api_server_and_two_workers_share_the_queue_and_survive_a_kill_9(tmp_path, model_dir, redis_url, client):
    data = tmp_path / "data"
    data.mkdir()
    workers = {name: start_worker(model_dir, data, redis_url, name) for name in ("worker-a", "worker-b")}
    try:
        with running_server([model_dir], data, args=["--queue", redis_url, "--workers", "0", *WORKER_ARGS]) as server:
            api = httpx.Client(base_url=server.base_url, timeout=30)
            long = submit_job(api, prompt="a long one", duration=8.0, steps=400, seed=7)
            quick = [submit_job(api, seed=i, duration=1.0 + (i % 2)) for i in range(8)]
            running = wait_for_job(api, long, lambda j: j["status"] == "running" and j["progress"]["step"] >= 2)
            owner = row(client, long)["worker"]
            pid = int(owner.split(":")[1])
            victim = next(name for name, p in workers.items() if p.pid == pid)
            os.kill(pid, signal.SIGKILL)  # mid-job: no cleanup of any kind runs
            workers[victim].wait(10)
            assert running["progress"]["total"] > 0

            done = {job_id: wait_for_job(api, job_id, lambda j: j["status"] in FINAL) for job_id in [long, *quick]}
            assert {j["status"] for j in done.values()} == {"succeeded"}, {i: j["error"] for i, j in done.items()}
            rows = {job_id: row(client, job_id) for job_id in done}
            assert rows[long]["attempts"] == 2 and rows[long]["worker"] != owner, "the killed job did not move on"
            assert all(rows[i]["attempts"] == 1 for i in quick), "a job ran more than once"
            survivor = next(p.pid for p in workers.values() if p.poll() is None)
            assert int(rows[long]["worker"].split(":")[1]) == survivor

            for job_id, found in done.items():  # retrievable through the API, whole, the seed it was given
                audio = api.get(f"/v1/generations/{job_id}/audio")
                assert audio.status_code == 200 and audio.headers["x-seed"] == str(found["seed"])
                (tmp_path / "got.wav").write_bytes(audio.content)
                assert sf.info(str(tmp_path / "got.wav")).frames == round(found["duration"] * 24000)
            results = data / "results"
            assert sorted(p.stem for p in results.glob("*.wav")) == sorted(done)
            assert not [p.name for p in results.iterdir() if p.name.endswith(".tmp")]
            assert not client.keys(f"{PREFIX}worker:*{victim}*")
            assert len(client.keys(f"{PREFIX}worker:*")) == 2, "the API server's and the survivor's leases"
            assert api.get("/health").json()["queue"]["queued"] == 0

            # a graceful stop (SIGTERM) hands the running job back: the next worker finishes it
            handed = submit_job(api, prompt="handed over", duration=8.0, steps=400, seed=9)
            wait_for_job(api, handed, lambda j: j["status"] == "running" and j["progress"]["step"] >= 2)
            survivor_name = next(name for name, p in workers.items() if p.poll() is None)
            workers[survivor_name].terminate()
            assert workers[survivor_name].wait(60) == 0
            assert get_job(api, handed)["status"] == "queued"
            workers["worker-c"] = start_worker(model_dir, data, redis_url, "worker-c")
            finished = wait_for_job(api, handed, lambda j: j["status"] in FINAL)
            assert finished["status"] == "succeeded" and row(client, handed)["attempts"] == 1
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
            process.wait(30)


def test_the_cli_refuses_a_worker_without_a_queue_and_an_unreachable_redis_in_one_line(tmp_path, capsys):
    from tunesmith.cli import main

    data = ["--data-dir", str(tmp_path)]
    assert main(["serve", "--worker-only", *data]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--worker-only needs --queue" in err
    assert main(["serve", "--queue", "http://localhost:6379", *data]) == 2
    assert "must be a Redis URL" in capsys.readouterr().err
    assert main(["serve", "--workers", "0", *data]) == 2  # an API process with no workers: only beside a queue
    assert "workers must be >= 1" in capsys.readouterr().err
    closed = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["serve", "--port", str(free_port()), "--queue", closed, *data]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot reach Redis" in err
