import json
import os
import pickle

import pytest
import torch

import tunesmith
from tunesmith.checkpoint import CheckpointError, load_model, load_tensors, save

from toy_task import ToyConfig, ToyModel


def test_save_load_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = ToyModel(ToyConfig(dim=8, hidden=16, dropout=0.0)).eval()
    x = torch.randn(5, 8)
    tunesmith.save(model, tmp_path / "toy")
    assert sorted(os.listdir(tmp_path / "toy")) == ["config.json", "model.safetensors"]
    loaded = tunesmith.load(str(tmp_path / "toy"))
    assert isinstance(loaded, ToyModel) and loaded.config == model.config
    assert torch.equal(loaded(x), model(x))


def test_save_replaces_existing_directory(tmp_path):
    a = ToyModel(ToyConfig(hidden=4))
    b = ToyModel(ToyConfig(hidden=6))
    save(a, tmp_path / "m")
    save(b, tmp_path / "m")
    assert load_model(tmp_path / "m").config.hidden == 6
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


class _Exploit:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused(tmp_path):
    model = ToyModel(ToyConfig())
    save(model, tmp_path / "evil")
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": _Exploit(str(marker))})
    (tmp_path / "evil" / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(tmp_path / "evil")
    assert not marker.exists()
    # a torch.save zip file is refused the same way
    torch.save({"x": torch.zeros(1)}, tmp_path / "evil" / "model.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        load_tensors(tmp_path / "evil" / "model.safetensors")


def test_bad_directories_have_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="unknown model 'no-such-model'"):
        tunesmith.load("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path / "empty")
    save(ToyModel(ToyConfig()), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["hidden"] = "wide"
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="hidden"):
        load_model(tmp_path / "m")
    meta["config"]["hidden"] = 7  # weights no longer fit the config
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage-bytes-not-a-file")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_tensors(tmp_path / "m" / "model.safetensors")


def test_header_length_starting_with_0x80_is_not_mistaken_for_pickle(tmp_path):
    from tunesmith.checkpoint import save_tensors

    # find tensor names that make the JSON header exactly 0x80 (+ 256 k) bytes long
    for n in range(1, 200):
        path = tmp_path / f"t{n}.safetensors"
        save_tensors({"x" * n: torch.ones(2)}, path)
        if path.read_bytes()[0] == 0x80:
            assert torch.equal(load_tensors(path)["x" * n], torch.ones(2))
            return
    pytest.fail("no header of the wanted length was produced")
