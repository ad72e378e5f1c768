"""Files refam writes: atomic, and with the mode the user's umask asks for (not tempfile's 0600)."""

import os
import stat

import pytest
import torch

from refam.evaluation.store import ResultStore
from refam.evaluation.records import SampleRecord
from refam.extractors.cache import MapCache
from refam.types import TokenInfo, TokenMaps
from refam.io.files import current_umask, save_json, write_atomic


@pytest.fixture
def umask():
    """Set the process umask for a test, restored after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    write_atomic(tmp_path / "a" / "x.png", b"data")
    save_json({"a": 1}, tmp_path / "x.json")
    assert _mode(tmp_path / "a" / "x.png") == expected and _mode(tmp_path / "x.json") == expected
    assert (tmp_path / "a" / "x.png").read_bytes() == b"data"

    maps = TokenMaps(torch.zeros(1, 2, 2, 2), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2),
                     [[TokenInfo("a", "a", False, False)] * 2])
    MapCache(tmp_path / "maps").save(tmp_path / "maps" / "m.safetensors", maps)  # the map cache's files too
    assert _mode(tmp_path / "maps" / "m.safetensors") == expected

    class Trainer:
        logger, default_root_dir = None, str(tmp_path)

    store = ResultStore()
    store.setup(Trainer(), type("Module", (), {})(), "test")
    store.put(0, "d", SampleRecord("s", video=False, expressions=[], inputs="x"))  # and the result store's
    assert _mode(tmp_path / "results" / "d" / "s.json") == expected
    assert not [p for p in tmp_path.rglob("*.part")]
