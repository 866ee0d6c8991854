"""Helpers for tests and benchmarks of the service: a tiny generator, and a real server process.

    from tunesmith.serve.testing import tiny_generator, running_server

    model_dir = tiny_generator(tmp_path / "tiny-dit")            # a DiT + VAE of a few hundred kB
    with running_server([model_dir], tmp_path / "data") as server:
        httpx.post(f"{server.base_url}/v1/generations", json={...})
        server.kill()                                            # kill -9, for crash tests

The server is ``python -m tunesmith.cli serve`` on a free loopback port, exactly as a user
starts it; its output goes to ``server.log_path``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence


def tiny_generator(directory: str | Path, *, seed: int = 0, max_seconds: float = 8.0) -> Path:
    """Save an untrained tiny latent-diffusion generator (DiT width 32, a small VAE, the MiniLM
    text encoder) to ``directory``; its outputs vary with prompt and seed.  Returns the directory."""
    import torch

    from tunesmith.codec.model import VAECodec, VAEConfig
    from tunesmith.diffusion.dit import DiT, DiTConfig
    from tunesmith.diffusion.generator import LatentDiffusionGenerator

    torch.manual_seed(seed)
    vae = VAECodec(VAEConfig(dim=32, strides=(2, 2), encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8))
    dit = DiT(DiTConfig(latent_dim=8, width=32, depth=2, heads=2, text_dim=384, fourier_dim=16,
                        max_seconds=max_seconds, inpainting=True))
    with torch.no_grad():  # an untrained output layer is zero; give it weights so outputs vary
        dit.proj_out.weight.normal_(0, 0.1)
    return Path(LatentDiffusionGenerator(dit.eval(), vae.eval()).save(directory))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    base_url: str
    data_dir: Path
    log_path: Path

    def kill(self) -> None:
        """kill -9: no cleanup of any kind runs."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        """A graceful stop (SIGTERM): running jobs go back to the queue."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running_server(models: Sequence[str | Path], data_dir: str | Path, *, args: Sequence[str] = (),
                   port: int | None = None, env: dict[str, str] | None = None,
                   timeout: float = 180.0) -> Iterator[ServerProcess]:
    """``tunesmith serve`` in a child process on a free loopback port, up (``/health`` answers)
    when the block starts, stopped (SIGTERM, then SIGKILL) when it ends.  ``args``: more flags,
    e.g. ``["--api-key", "k", "--max-queue", "4"]``."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = data_dir.parent / f"{data_dir.name}.server.log"
    command = [sys.executable, "-m", "tunesmith.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), "--model", *map(str, models), *args]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})})
    server = ServerProcess(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{server.base_url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start in {timeout:g} s:\n{server.log()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        server.stop()


def submit_job(client, **fields) -> str:
    """POST a short job (1 s, 2 steps unless ``fields`` say otherwise) and return its id; ``client``
    is an ``httpx.Client`` (or TestClient) on the server's base URL."""
    response = client.post("/v1/generations", json={"prompt": "a folk tune", "duration": 1.0, "steps": 2, **fields})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def get_job(client, job_id: str) -> dict:
    response = client.get(f"/v1/generations/{job_id}")
    assert response.status_code == 200, f"job {job_id} lost: {response.text}"
    return response.json()


def wait_for_job(client, job_id: str, test, timeout: float = 180.0) -> dict:
    """Poll a job until ``test(job)`` holds; fails with the job's state after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = get_job(client, job_id)
        if test(found):
            return found
        assert time.monotonic() < deadline, f"job {job_id}: {found['status']}, step {found['progress']}"
        time.sleep(0.05)
