"""A model's identity (videobert.checkpoint.model_id): its directory's name and a hash of the files that decide
what it computes -- the same bytes give the same hash wherever they lie, a changed weight another one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from videobert.checkpoint import IDENTITY_FILES, model_id


def fake_model(root: Path, weights: bytes = b"weights") -> Path:
    for rel in IDENTITY_FILES:
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(weights if rel.endswith(".safetensors") else b"{}")
    return root


def test_the_same_files_have_the_same_hash_under_any_name_and_the_id_names_the_directory(tmp_path):
    a = fake_model(tmp_path / "demo")
    b = shutil.copytree(a, tmp_path / "copy")
    ida, idb = model_id(a), model_id(b)
    assert ida.hash == idb.hash and len(ida.hash) == 12 and int(ida.hash, 16) >= 0
    assert (ida.name, idb.name) == ("demo", "copy")
    assert ida.id == f"demo@{ida.hash}" and ida.to_dict() == {"id": ida.id, "name": "demo", "hash": ida.hash}


def test_a_changed_weight_changes_the_hash_and_a_summary_does_not(tmp_path):
    m = fake_model(tmp_path / "m")
    before = model_id(m).hash
    (m / "videobert" / "pretrain_summary.json").write_text('{"seconds": 12}')  # not what the model computes
    assert model_id(m).hash == before
    f = m / "videobert" / "model.safetensors"
    f.write_bytes(b"weightz")  # the same size: the new bytes are read, not a cached hash reused
    os.utime(f, ns=(1, 1))
    assert model_id(m).hash != before


def test_a_missing_file_is_named(tmp_path):
    m = fake_model(tmp_path / "m")
    (m / "vocab" / "kmeans.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks vocab/kmeans.safetensors"):
        model_id(m)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        model_id(tmp_path / "nothing")
