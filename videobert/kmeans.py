"""Hierarchical k-means: VideoBERT's visual-word tokenizer.

VideoBERT (Sun et al., 2019) turns each clip feature vector into a discrete "visual word" with
hierarchical k-means: the feature space is split into `branching` clusters, each cluster is split again
on its own points, `depth` times, giving branching**depth leaves (paper: depth 4, branching 12 = 20,736
visual words). Fitting is top-down (k-means++ init plus Lloyd iterations per node); encoding is a tree
descent that costs depth * branching distance checks per vector instead of one check per leaf.
Invariant that keeps every leaf reachable by descent: each child centroid lies in its parent's region
(the intersection of the Voronoi cells along its path), because it is a convex combination of the parent's
points and centroid, or a point on a short segment from the parent centroid towards a point of that region
(see `_degenerate_children`); siblings are always pairwise distinct. One exact distance formula
(`_sq_dists`) and lowest-index argmin tie breaking are used for the fit partition, `encode` and
`reference_descent` alike, so a training point always descends along the path it was fitted on.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

logger = logging.getLogger(__name__)

CONFIG_FILE = "kmeans.json"
WEIGHTS_FILE = "kmeans.safetensors"
_CHUNK_ELEMS = 1 << 24  # cap on the (rows, k, D) temporaries of exact distance computations
_REL_TOL = 1e-4  # duplicate tolerance, relative to the largest feature magnitude


@dataclass(frozen=True)
class KMeansConfig:
    depth: int = 4  # levels of the tree (paper: 4)
    branching: int = 12  # children per node (paper: 12) -> branching**depth leaves
    iters: int = 30  # Lloyd iterations per node
    seed: int = 0

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.branching < 2:
            raise ValueError(f"branching must be >= 2, got {self.branching}")
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Exact squared distances ((x - c)**2).sum(-1), broadcasting; the one formula behind every tree decision."""
    return (x - c).square().sum(-1)


def _nearest(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, D) points vs (k, D) centroids -> (squared distance, index) of the nearest, lowest index on ties."""
    rows = max(1, _CHUNK_ELEMS // max(1, c.numel()))
    dists, idx = [x.new_zeros(0)], [torch.zeros(0, dtype=torch.long, device=x.device)]
    for s in range(0, x.shape[0], rows):
        d = _sq_dists(x[s : s + rows, None, :], c)  # (B, k)
        i = d.argmin(1)  # (B,)
        dists.append(d.gather(1, i[:, None]).squeeze(1))
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator, tol: float) -> torch.Tensor:
    """k-means++ seeds (m, D), pairwise > tol apart; m < k exactly when every point is within tol of a seed."""
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centers = [x[first]]
    d2 = _sq_dists(x, x[first])  # (n,)
    while len(centers) < k:
        # sampled with the CPU generator in float64: same picks on any device, any N
        cum = torch.where(d2 > tol**2, d2, 0.0).double().cpu().cumsum(0)  # (n,)
        if cum[-1] <= 0:
            break
        u = torch.rand(1, generator=gen, dtype=torch.float64) * cum[-1]
        i = min(int(torch.searchsorted(cum, u, right=True)), x.shape[0] - 1)
        centers.append(x[i])
        d2 = torch.minimum(d2, _sq_dists(x, x[i]))
    return torch.stack(centers)


def _lloyd(x: torch.Tensor, centers: torch.Tensor, iters: int) -> torch.Tensor:
    """Lloyd iterations; an empty cluster is re-seeded with the point farthest from its centroid."""
    k, xx = centers.shape[0], x.square().sum(1, keepdim=True)  # (n, 1)
    for _ in range(iters):
        d = xx - 2 * x @ centers.T + centers.square().sum(1)  # (n, k), fast matmul form
        assign = d.argmin(1)  # (n,)
        onehot = F.one_hot(assign, k).to(x.dtype)  # (n, k); matmul sums are deterministic on CUDA too
        counts = onehot.sum(0)  # (k,)
        new = (onehot.T @ x) / counts.clamp(min=1)[:, None]  # (k, D)
        if bool((counts == 0).any()):
            far = _sq_dists(x, centers[assign])  # (n,)
            for j in torch.nonzero(counts == 0).flatten().tolist():
                i = int(far.argmax())
                new[j], far[i] = x[i], -1.0
        if torch.equal(new, centers):
            break
        centers = new
    return centers


def _make_distinct(x: torch.Tensor, centers: torch.Tensor, tol: float) -> torch.Tensor:
    """Replace any centroid within tol/2 of an earlier one by the point farthest from all centroids.

    x holds k points pairwise > tol apart, so that point is >= tol/2 from every centroid (pigeonhole)."""
    centers = centers.clone()
    for j in range(1, centers.shape[0]):
        if float(_sq_dists(centers[:j], centers[j]).min()) <= (tol / 2) ** 2:
            centers[j] = x[int(_nearest(x, centers)[0].argmax())]
    return centers


def _degenerate_children(parent: torch.Tensor, seeds: torch.Tensor, k: int, tol: float,
                         anchor: Callable[[], tuple[torch.Tensor, float]]) -> torch.Tensor:
    """k distinct children (k, D) for a node with fewer than k points > tol apart (`seeds`, maybe none).

    With seeds q farther than tol from the parent centroid: candidates lerp(parent, q, alpha) for
    alpha = 1, 0, 1/2, 1/4, 3/4, 1/8, ... (the points themselves first), keeping those > tol/4 from every
    kept one. They lie on segments between points of the parent's convex region, so inside it. Otherwise
    (zero points, or all within tol of the centroid): children lerp(parent, target, t_j), t_j = s*j/(k-1),
    where `anchor` gives a target whose segment to the parent stays inside some ancestor's region and a radius
    r such that the ball B(parent, r/2) lies in the Voronoi cells of the nodes in between; s keeps every child
    within 0.45*r of the parent, so the children stay inside the parent's region. Child 0 is the parent itself.
    """
    q = seeds[_sq_dists(seeds, parent) > tol**2]  # (m, D)
    if q.shape[0] > 0:
        alphas, m = [1.0, 0.0], 1
        while len(alphas) <= 2 * k:
            alphas += [j / 2**m for j in range(1, 2**m, 2)]
            m += 1
        kept: list[torch.Tensor] = []
        for c in (torch.lerp(parent, qi, a) for a in alphas for qi in q):
            if len(kept) < k and all(float(_sq_dists(c, o)) > (tol / 4) ** 2 for o in kept):
                kept.append(c)
        if len(kept) == k:
            return torch.stack(kept)
    target, radius = anchor()
    s = min(1.0, 0.45 * radius / float((target - parent).norm()))
    t = torch.arange(k, dtype=parent.dtype, device=parent.device)[:, None] * (s / (k - 1))  # (k, 1)
    return torch.lerp(parent.expand(k, -1), target.expand(k, -1), t)


def _anchor(levels: list[torch.Tensor], root: torch.Tensor, lvl: int, node: int, k: int
            ) -> tuple[torch.Tensor, float]:
    """(target, radius) for `node` at `lvl` (-1 = root): walk up while ancestors share its centroid.

    radius = min distance to siblings along the way; target = first ancestor centroid that differs."""
    c = root if lvl < 0 else levels[lvl][node]
    radius = math.inf
    while lvl >= 0:
        first = node // k * k
        siblings = torch.cat([levels[lvl][first:node], levels[lvl][node + 1 : first + k]])  # (k-1, D)
        radius = min(radius, float(_sq_dists(siblings, c).min().sqrt()))
        node, lvl = node // k, lvl - 1
        up = root if lvl < 0 else levels[lvl][node]
        if not torch.equal(up, c):
            return up, radius
    return c + 1.0, radius  # the root's region is the whole space: any direction will do


class HierarchicalKMeans:
    """Centroid tree: levels[l] is (k**(l+1), D); node n's children are rows n*k..n*k+k-1 one level down."""

    def __init__(self, config: KMeansConfig, levels: list[torch.Tensor]) -> None:
        if len(levels) != config.depth:
            raise ValueError(f"expected {config.depth} levels, got {len(levels)}")
        if levels[0].ndim != 2 or levels[0].shape[1] < 1:
            raise ValueError(f"level 0 must be (k, dim) with dim >= 1, got shape {tuple(levels[0].shape)}")
        k, dim = config.branching, levels[0].shape[1]
        for l, t in enumerate(levels):
            if tuple(t.shape) != (k ** (l + 1), dim):
                raise ValueError(f"level {l} has shape {tuple(t.shape)}, expected {(k ** (l + 1), dim)}")
        self.config = config
        self.levels = [t.detach().to(levels[0].device, torch.float32).contiguous() for t in levels]

    @classmethod
    def fit(cls, features: torch.Tensor, config: KMeansConfig, device: str | torch.device | None = None,
            progress: bool = False) -> HierarchicalKMeans:
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            raise ValueError(f"features must be a non-empty (N, D) tensor, got {tuple(features.shape)}")
        dev = device if device is not None else features.device
        x = features.to(dev, torch.float32).contiguous()  # (N, D)
        k, (n, dim) = config.branching, x.shape
        logger.info("fitting hierarchical k-means: %d points, dim %d, depth %d, branching %d on %s",
                    n, dim, config.depth, k, x.device)
        root = x.mean(0)  # (D,)
        tol = _REL_TOL * float(x.abs().max())  # points closer than this count as duplicates
        levels: list[torch.Tensor] = []
        assign = torch.zeros(n, dtype=torch.long, device=x.device)  # (N,) node at the previous level
        degenerate = 0
        with tqdm(total=(k**config.depth - 1) // (k - 1), disable=not progress, desc="hkmeans nodes") as bar:
            for level in range(config.depth):
                n_parents = k**level
                parents = root[None] if level == 0 else levels[-1]  # (n_parents, D)
                children = x.new_empty(n_parents * k, dim)
                new_assign = torch.empty_like(assign)
                counts = torch.bincount(assign, minlength=n_parents).tolist()
                for p, idx in enumerate(torch.split(torch.argsort(assign, stable=True), counts)):
                    pts = x[idx]  # (n_p, D)
                    node_id = (n_parents - 1) // (k - 1) + p  # breadth-first index of the parent node
                    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + node_id)
                    init = _kmeans_pp(pts, k, gen, tol) if pts.shape[0] else pts  # (m, D)
                    if init.shape[0] == k:
                        cent = _make_distinct(pts, _lloyd(pts, init, config.iters), tol)
                    else:
                        degenerate += 1
                        cent = _degenerate_children(parents[p], init, k, tol,
                                                    lambda: _anchor(levels, root, level - 1, p, k))
                    children[p * k : (p + 1) * k] = cent
                    new_assign[idx] = p * k + _nearest(pts, cent)[1]
                    bar.update(1)
                levels.append(children)
                assign = new_assign
        km = cls(config, levels)
        leaf_ids = torch.arange(km.vocab_size, device=x.device)
        unreachable = int((km.encode(km.leaf_centroids()) != leaf_ids).sum())
        if unreachable:  # only under float32 precision loss on pathological (near-duplicate) data
            logger.warning("%d of %d leaves are not reachable by descent", unreachable, km.vocab_size)
        logger.info("hierarchical k-means done: %d leaves, %d degenerate nodes", km.vocab_size, degenerate)
        return km

    @property
    def vocab_size(self) -> int:
        return self.config.branching**self.config.depth

    @property
    def dim(self) -> int:
        return self.levels[0].shape[1]

    @property
    def device(self) -> torch.device:
        return self.levels[0].device

    def leaf_centroids(self) -> torch.Tensor:
        return self.levels[-1]  # (vocab_size, D)

    def to(self, device: str | torch.device) -> HierarchicalKMeans:
        """Move the centroids in place; returns self."""
        self.levels = [t.to(device) for t in self.levels]
        return self

    def paths(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, depth) LongTensor: the child digit chosen at each level of the descent."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got shape {tuple(features.shape)}")
        x = features.to(self.device, torch.float32)  # (N, D)
        k = self.config.branching
        out = torch.empty(x.shape[0], self.config.depth, dtype=torch.long, device=self.device)
        offsets = torch.arange(k, device=self.device)  # (k,)
        rows = max(1, _CHUNK_ELEMS // (k * self.dim))
        for s in range(0, x.shape[0], rows):
            xb = x[s : s + rows]  # (B, D)
            node = torch.zeros(xb.shape[0], dtype=torch.long, device=self.device)  # (B,)
            for l, cents in enumerate(self.levels):
                cand = node[:, None] * k + offsets  # (B, k) rows of this level
                digit = _sq_dists(xb[:, None, :], cents[cand]).argmin(1)  # (B,)
                out[s : s + rows, l] = digit
                node = node * k + digit
        return out

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) LongTensor of leaf ids (visual words), depth * branching distance checks each."""
        depth = self.config.depth
        weights = self.config.branching ** torch.arange(depth - 1, -1, -1, device=self.device)  # (depth,)
        return (self.paths(features) * weights).sum(1)

    def reference_descent(self, x: torch.Tensor) -> int:
        """Plain per-vector descent for one (D,) vector; for tests."""
        x, node, k = x.to(self.device, torch.float32), 0, self.config.branching
        for cents in self.levels:
            node = node * k + int(_sq_dists(x, cents[node * k : node * k + k]).argmin())
        return node

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"format": "videobert-hierarchical-kmeans", "version": 1, **asdict(self.config), "dim": self.dim}
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        tensors = {f"level{l}": t.detach().cpu().contiguous() for l, t in enumerate(self.levels)}
        save_file(tensors, str(d / WEIGHTS_FILE))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None) -> HierarchicalKMeans:
        d = Path(directory)
        for f in (d / CONFIG_FILE, d / WEIGHTS_FILE):
            if not f.is_file():
                raise FileNotFoundError(f"missing {f} (expected a HierarchicalKMeans.save directory)")
        meta = json.loads((d / CONFIG_FILE).read_text())
        try:
            config = KMeansConfig(**{f: int(meta[f]) for f in ("depth", "branching", "iters", "seed")})
            dim = int(meta["dim"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{d / CONFIG_FILE} is missing or has a bad field: {e}") from e
        tensors = load_file(str(d / WEIGHTS_FILE))
        expected = [f"level{l}" for l in range(config.depth)]
        if sorted(tensors) != sorted(expected):
            raise ValueError(f"{d / WEIGHTS_FILE} holds {sorted(tensors)}, expected {expected}")
        km = cls(config, [tensors[name] for name in expected])
        if km.dim != dim:
            raise ValueError(f"{d / CONFIG_FILE} says dim {dim} but the centroids have dim {km.dim}")
        return km.to(device) if device is not None else km
