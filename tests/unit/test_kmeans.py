"""Unit tests for videobert.kmeans (hierarchical k-means visual-word tokenizer)."""

from __future__ import annotations

import pytest
import torch

from videobert.kmeans import HierarchicalKMeans, KMeansConfig


def _rand(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _assert_all_leaves_reachable(km: HierarchicalKMeans) -> None:
    leaves = km.leaf_centroids()
    assert torch.unique(leaves, dim=0).shape[0] == km.vocab_size
    assert torch.equal(km.encode(leaves), torch.arange(km.vocab_size))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="depth"):
        KMeansConfig(depth=0)
    with pytest.raises(ValueError, match="branching"):
        KMeansConfig(branching=1)
    with pytest.raises(ValueError, match="iters"):
        KMeansConfig(iters=0)


def test_init_validates_shapes() -> None:
    cfg = KMeansConfig(depth=2, branching=3)
    with pytest.raises(ValueError, match="levels"):
        HierarchicalKMeans(cfg, [torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="level 1"):
        HierarchicalKMeans(cfg, [torch.zeros(3, 4), torch.zeros(8, 4)])


def test_deterministic_per_seed() -> None:
    x = _rand(300, 8)
    cfg = KMeansConfig(depth=2, branching=4, iters=5, seed=1)
    a = HierarchicalKMeans.fit(x, cfg)
    b = HierarchicalKMeans.fit(x, cfg)
    c = HierarchicalKMeans.fit(x, KMeansConfig(depth=2, branching=4, iters=5, seed=2))
    assert all(torch.equal(p, q) for p, q in zip(a.levels, b.levels))
    assert not all(torch.equal(p, q) for p, q in zip(a.levels, c.levels))


def test_shapes_and_properties() -> None:
    km = HierarchicalKMeans.fit(_rand(200, 5), KMeansConfig(depth=3, branching=3, iters=5))
    assert km.vocab_size == 27 and km.dim == 5
    assert [tuple(t.shape) for t in km.levels] == [(3, 5), (9, 5), (27, 5)]
    assert km.leaf_centroids().shape == (27, 5)


@pytest.mark.parametrize(
    "features,cfg",
    [
        (_rand(2000, 8), KMeansConfig(depth=3, branching=4, iters=10)),  # well populated
        (_rand(20, 6), KMeansConfig(depth=3, branching=4, iters=10)),  # too small to fill the tree
        (_rand(5, 4).repeat(12, 1), KMeansConfig(depth=3, branching=3, iters=10)),  # duplicates
        (_rand(3, 4).repeat(10, 1), KMeansConfig(depth=3, branching=4, iters=10)),  # fewer distinct than k at root
        (torch.ones(7, 4), KMeansConfig(depth=3, branching=3, iters=5)),  # all identical
        (_rand(1, 4), KMeansConfig(depth=2, branching=5, iters=5)),  # single point
    ],
    ids=["populated", "small", "duplicates", "few-distinct", "identical", "single"],
)
def test_every_leaf_reachable(features: torch.Tensor, cfg: KMeansConfig) -> None:
    km = HierarchicalKMeans.fit(features, cfg)
    _assert_all_leaves_reachable(km)
    # training points descend along the path they were fitted on, so each distinct point gets its own
    # leaf when the tree has room for it
    if torch.unique(features, dim=0).shape[0] <= cfg.branching:
        assert torch.unique(km.encode(features)).numel() == torch.unique(features, dim=0).shape[0]


def test_encode_matches_reference_descent_and_paths() -> None:
    cfg = KMeansConfig(depth=3, branching=4, iters=10)
    km = HierarchicalKMeans.fit(_rand(500, 6), cfg)
    queries = _rand(200, 6, seed=7) * 1.5
    ids = km.encode(queries)
    assert ids.dtype == torch.long and ids.shape == (200,)
    assert ids.tolist() == [km.reference_descent(q) for q in queries]
    paths = km.paths(queries)
    assert paths.shape == (200, 3) and int(paths.min()) >= 0 and int(paths.max()) < 4
    assert torch.equal(ids, paths[:, 0] * 16 + paths[:, 1] * 4 + paths[:, 2])


def test_encode_empty_and_bad_dim() -> None:
    km = HierarchicalKMeans.fit(_rand(50, 3), KMeansConfig(depth=2, branching=3, iters=3))
    out = km.encode(torch.zeros(0, 3))
    assert out.shape == (0,) and out.dtype == torch.long
    assert km.paths(torch.zeros(0, 3)).shape == (0, 2)
    with pytest.raises(ValueError):
        km.encode(torch.zeros(4, 5))


def test_fit_rejects_empty_features() -> None:
    with pytest.raises(ValueError):
        HierarchicalKMeans.fit(torch.zeros(0, 4), KMeansConfig(depth=1, branching=2))


def test_separated_blobs_are_pure() -> None:
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(12, 16, generator=g) * 50.0  # (12, 16) far apart
    labels = torch.arange(12).repeat_interleave(40)  # (480,)
    x = centers[labels] + torch.randn(480, 16, generator=g)
    km = HierarchicalKMeans.fit(x, KMeansConfig(depth=1, branching=12, iters=20))
    ids = km.encode(x)
    leaf_of_blob = [torch.unique(ids[labels == b]) for b in range(12)]
    assert all(u.numel() == 1 for u in leaf_of_blob)  # purity 1.0: each blob maps to one leaf
    assert len({int(u) for u in leaf_of_blob}) == 12  # and distinct blobs to distinct leaves


def test_save_load_round_trip(tmp_path) -> None:
    km = HierarchicalKMeans.fit(_rand(300, 6), KMeansConfig(depth=2, branching=4, iters=5, seed=5))
    km.save(tmp_path / "hkm")
    assert (tmp_path / "hkm" / "kmeans.json").is_file()
    assert (tmp_path / "hkm" / "kmeans.safetensors").is_file()
    loaded = HierarchicalKMeans.load(tmp_path / "hkm", device="cpu")
    assert loaded.config == km.config
    q = _rand(100, 6, seed=9)
    assert torch.equal(loaded.encode(q), km.encode(q))


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        HierarchicalKMeans.load(tmp_path / "missing")
    km = HierarchicalKMeans.fit(_rand(50, 3), KMeansConfig(depth=2, branching=3, iters=3))
    km.save(tmp_path / "a")
    (tmp_path / "a" / "kmeans.json").write_text('{"depth": 3, "branching": 3, "iters": 3, "seed": 0, "dim": 3}')
    with pytest.raises(ValueError):
        HierarchicalKMeans.load(tmp_path / "a")
    (tmp_path / "a" / "kmeans.json").write_text('{"depth": 2, "branching": 3, "iters": 3, "seed": 0, "dim": 4}')
    with pytest.raises(ValueError, match="dim"):
        HierarchicalKMeans.load(tmp_path / "a")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # CUDA too wherever there is one


@pytest.mark.parametrize("device", DEVICES)
def test_fit_and_encode_on_device(device) -> None:
    x = _rand(1000, 8)
    km = HierarchicalKMeans.fit(x, KMeansConfig(depth=2, branching=4, iters=10), device=device)
    assert km.leaf_centroids().device.type == device
    _assert_all_leaves_reachable(km)
    ids = km.encode(x)  # CPU input is moved to the centroids' device
    assert ids.device.type == device
    assert torch.equal(ids.cpu(), km.to("cpu").encode(x))
