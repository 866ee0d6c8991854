"""torchrun on CPU (gloo): DDP and FSDP train a tiny model like one process with the same global batch."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "train_script.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(SCRIPT), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def _single(*args: str) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    _single(str(out), "10", "8", "2", "--dropout", "0")  # global batch 16 = 2 ranks x 4 x accum 2
    return out


@pytest.mark.slow
def test_ddp_ranks_agree_and_match_single_process(tmp_path, single_run):
    _torchrun(str(tmp_path), "10", "4", "2", "--dropout", "0", "--check-ranks")
    assert _max_diff(tmp_path, single_run) < 1e-5


@pytest.mark.slow
def test_fsdp_matches_single_process_and_resumes(tmp_path, single_run):
    _torchrun(str(tmp_path / "a"), "10", "4", "2", "--dropout", "0", "--distributed", "fsdp", "--kill-at", "5")
    _torchrun(str(tmp_path / "a"), "10", "4", "2", "--dropout", "0", "--distributed", "fsdp", "--resume")
    assert _max_diff(tmp_path / "a", single_run) < 1e-5
