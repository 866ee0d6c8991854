"""Jobs survive the server: a real ``tunesmith serve`` process on a free loopback port, killed
with SIGKILL while jobs run and wait, then started again on the same data directory.

After the restart every job is finished, still queued (or running again), or failed with a
reason (never lost), what was queued runs to the end, and no result file is half-written.
A graceful stop (SIGTERM) puts the running job back in the queue instead."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import soundfile as sf

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tunesmith.serve.testing import get_job, running_server, submit_job, tiny_generator, wait_for_job  # noqa: E402

pytestmark = pytest.mark.slow

ARGS = ["--max-steps", "1000", "--torch-threads", "1", "--log-level", "warning"]
FINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_generator(tmp_path_factory.mktemp("models") / "tiny-dit")








def check_results(data_dir: Path, client: httpx.Client, ids: list[str]) -> None:
    """Every job is accounted for, and every result on disk is whole, with its sidecar."""
    results = data_dir / "results"
    for job_id in ids:
        found = get_job(client, job_id)
        assert found["status"] in ("queued", "running", *FINAL)
        if found["status"] == "failed":
            assert found["error"], f"job {job_id} failed without a reason"
        audio = results / f"{job_id}.wav"
        if found["status"] == "succeeded":
            info = sf.info(str(audio))
            assert info.frames == round(found["duration"] * 24000), "a result file is not whole"
            assert sf.read(str(audio))[0].shape[0] == info.frames
            assert json.loads((results / f"{job_id}.wav.json").read_text())["seed"] == found["seed"]
        elif found["status"] in ("failed", "canceled"):
            assert not audio.exists()
    leftovers = [p.name for p in results.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"temp files left: {leftovers}"
    for path in results.glob("*.wav"):  # no file the store does not know as a success
        assert get_job(client, path.stem)["status"] == "succeeded"


def test_kill_9_with_jobs_running_and_queued_then_restart(tmp_path, model_dir):
    data = tmp_path / "data"
    with running_server([model_dir], data, args=ARGS) as server:
        client = httpx.Client(base_url=server.base_url, timeout=30)
        long = submit_job(client, prompt="a long one", duration=8.0, steps=1000)
        waiting = [submit_job(client, seed=i) for i in range(3)]
        wait_for_job(client, long, lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
        assert [get_job(client, i)["status"] for i in waiting] == ["queued"] * 3
        server.kill()

    with running_server([model_dir], data, args=ARGS) as server:
        client = httpx.Client(base_url=server.base_url, timeout=30)
        interrupted = get_job(client, long)
        assert interrupted["status"] == "failed" and "server stopped" in interrupted["error"]
        check_results(data, client, [long, *waiting])
        for job_id in waiting:
            assert wait_for_job(client, job_id, lambda j: j["status"] in FINAL)["status"] == "succeeded"
        check_results(data, client, [long, *waiting])

        # again, now while results are being written: killed at whatever point it lands
        many = [submit_job(client, seed=100 + i, duration=2.0, steps=30 + i) for i in range(8)]
        wait_for_job(client, many[0], lambda j: j["status"] == "succeeded")
        time.sleep(0.05)
        server.kill()

    with running_server([model_dir], data, args=ARGS) as server:
        client = httpx.Client(base_url=server.base_url, timeout=30)
        check_results(data, client, many)
        for job_id in many:
            wait_for_job(client, job_id, lambda j: j["status"] in FINAL)
        check_results(data, client, [long, *waiting, *many])
        assert sum(get_job(client, i)["status"] == "succeeded" for i in many) >= len(many) - 1  # at most one was running


def test_a_graceful_stop_requeues_the_running_job(tmp_path, model_dir):
    data = tmp_path / "data"
    with running_server([model_dir], data, args=ARGS) as server:
        client = httpx.Client(base_url=server.base_url, timeout=30)
        long = submit_job(client, duration=8.0, steps=1000, seed=5)
        wait_for_job(client, long, lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
        server.stop()
    with running_server([model_dir], data, args=ARGS) as server:
        client = httpx.Client(base_url=server.base_url, timeout=30)
        done = wait_for_job(client, long, lambda j: j["status"] in FINAL)
        assert done["status"] == "succeeded" and done["seed"] == 5
        check_results(data, client, [long])
