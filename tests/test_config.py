from dataclasses import dataclass, field
from typing import Literal

import pytest

from tunesmith.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    preset,
    register_preset,
    save_config,
    to_dict,
)


@dataclass
class Inner:
    dim: int = 64
    dropout: float = 0.1
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    model: Inner = field(default_factory=Inner)
    sizes: tuple[int, ...] = (1, 2)
    note: str | None = None


@register_preset("test-outer", "big")
def _big() -> Outer:
    return Outer(model=Inner(dim=512))


def test_round_trip_json_and_yaml(tmp_path):
    cfg = Outer(name="y", model=Inner(dim=3, dropout=0.5, kind="b"), sizes=(4, 5, 6), note="n")
    for suffix in (".json", ".yaml"):
        path = tmp_path / f"c{suffix}"
        save_config(cfg, path)
        assert load_config(Outer, path) == cfg
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_key_named():
    with pytest.raises(ConfigError, match="unknown config key 'model.dimm'"):
        from_dict(Outer, {"model": {"dimm": 3}})


def test_wrong_type_named():
    with pytest.raises(ConfigError, match="'model.dim': expected int"):
        from_dict(Outer, {"model": {"dim": "wide"}})
    with pytest.raises(ConfigError, match="'model.kind'"):
        from_dict(Outer, {"model": {"kind": "c"}})
    with pytest.raises(ConfigError, match=r"'sizes\[1\]'"):
        from_dict(Outer, {"sizes": [1, "x"]})
    # ints are accepted where floats are expected, bools are not ints
    assert from_dict(Inner, {"dropout": 0}).dropout == 0.0
    with pytest.raises(ConfigError):
        from_dict(Inner, {"dim": True})


def test_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.json"):
        load_config(Outer, tmp_path / "nope.json")


def test_malformed_file_is_one_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert "\n" not in str(err.value) and "bad.json" in str(err.value)


def test_overrides_are_typed():
    cfg = apply_overrides(Outer(), ["model.dim=512", "model.dropout=1e-3", "sizes=[3, 4]", "note=hello"])
    assert cfg.model.dim == 512 and cfg.model.dropout == 1e-3 and cfg.sizes == (3, 4) and cfg.note == "hello"
    with pytest.raises(ConfigError, match="model.width"):
        apply_overrides(Outer(), ["model.width=3"])
    with pytest.raises(ConfigError, match="'model.dim': expected int"):
        apply_overrides(Outer(), ["model.dim=big"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Outer(), ["model.dim"])


def test_presets():
    assert preset("test-outer", "big").model.dim == 512
    assert preset("test-outer", "big") is not preset("test-outer", "big")
    with pytest.raises(ConfigError, match="unknown test-outer preset 'huge'.*big"):
        preset("test-outer", "huge")
