"""Video encoders: clip (B, T, H, W, 3) uint8 -> feature vector (B, D). One small interface, a registry,
and the default: a small 3D CNN the project trains itself (no pretrained video weights exist offline).

To plug in another network (say an S3D with weights from a local file), subclass VideoEncoder, decorate
it with @register("name"), and pass `--arch name` to `vbs train encoder` (or load it by name)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from videobert.reader import ClipSpec

REGISTRY: dict[str, type["VideoEncoder"]] = {}


def register(name: str):
    def deco(cls: type[VideoEncoder]) -> type[VideoEncoder]:
        if name in REGISTRY:
            raise ValueError(f"video encoder {name!r} is already registered ({REGISTRY[name].__name__})")
        cls.arch = name
        REGISTRY[name] = cls
        return cls

    return deco


class VideoEncoder(nn.Module):
    """The interface: `forward(clips)` maps uint8 clips (B, T, H, W, 3) to features (B, feature_dim).

    `config()` returns the constructor keyword arguments, so a checkpoint can rebuild the same network."""

    arch: ClassVar[str] = ""
    feature_dim: int

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def to_input(clips: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) centred on zero, laid out channels-last-3d: the
        clips' own memory order, so no copy but the conversion to float (the layout oneDNN's 3D convolutions
        want; a contiguous input costs them a copy of their own)."""
        if clips.dim() != 5 or clips.shape[-1] != 3:
            raise ValueError(f"clips must be (B, T, H, W, 3), got {tuple(clips.shape)}")
        return clips.permute(0, 4, 1, 2, 3).float().div_(255.0).sub_(0.5)

    @staticmethod
    def with_motion(x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, 6, T, H, W): colour plus the change since the previous frame, so what
        moves stands out from what stays still (the first frame's change is zero). Channels-last-3d, like
        `to_input`, filled in place: converting a contiguous result for the first convolution took a sixth
        of a float32 training step."""
        b, c, t, h, w = x.shape
        out = torch.empty((b, 2 * c, t, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
        out[:, :c] = x
        out[:, c:, :1] = 0
        torch.sub(x[:, :, 1:], x[:, :, :-1], out=out[:, c:, 1:])
        return out

    @staticmethod
    def change_energy(x: torch.Tensor, motion: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, H, W): how much each place changes over the clip (absolute frame-to-frame
        change, summed over colour and time). `motion`: the clip's `with_motion`, whose change channels are
        those differences already."""
        diff = motion[:, x.shape[1]:, 1:] if motion is not None else x[:, :, 1:] - x[:, :, :-1]
        return diff.abs().sum(dim=(1, 2))


def _block(cin: int, cout: int, kernel, stride, padding) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


@register("conv3d-small")
class Conv3DEncoder(VideoEncoder):
    """Five 3D conv blocks (a spatial-only stem, then 3x3x3), global average pool, linear.

    Small on purpose: it trains on a CPU in minutes (its training speed per CPU: docs/MEASURED.md).
    `early_time` False makes the second and third blocks spatial-only too (1x3x3): the input's motion channels
    already carry the frame-to-frame change, the last two blocks still mix time, and a step costs about a
    quarter less on a CPU without bf16."""

    def __init__(self, width: int = 16, feature_dim: int = 256, motion: bool = True, attention: bool = True,
                 early_time: bool = True):
        super().__init__()
        w = width
        self.width, self.feature_dim, self.motion, self.attention = width, feature_dim, motion, attention
        self.early_time = early_time
        k, pad = (3, 1) if early_time else ((1, 3, 3), (0, 1, 1))
        self.early = nn.Sequential(
            _block(6 if motion else 3, w, (1, 5, 5), (1, 2, 2), (0, 2, 2)),  # (B, w, T, H/2, W/2)
            _block(w, 2 * w, k, (1, 2, 2), pad),  # (B, 2w, T, H/4, W/4)
            _block(2 * w, 4 * w, k, (1, 2, 2), pad),  # (B, 4w, T, H/8, W/8)
        )
        self.late = nn.Sequential(
            _block(4 * w, 8 * w, 3, (2, 2, 2), 1),  # (B, 8w, T/2, H/16, W/16)
            _block(8 * w, 16 * w, 3, (2, 2, 2), 1),  # (B, 16w, T/4, H/32, W/32)
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),  # (B, 16w)
        )
        # attention pooling over the mid-level map: one learned score per place and time, softmax, weighted
        # mean. It learns to look where things change (the acting shape), not at still distractors.
        self.score = nn.Conv3d(4 * w, 1, 1) if attention else None
        self.proj = nn.Linear(16 * w + (4 * w if attention else 0), feature_dim)  # (B, D)

    def config(self) -> dict[str, Any]:
        return {"width": self.width, "feature_dim": self.feature_dim, "motion": self.motion, "attention": self.attention,
                "early_time": self.early_time}

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.to_input(clips)
        moving = self.with_motion(x) if self.motion else None
        mid = self.early(moving if self.motion else x)  # (B, 4w, T, h, w)
        pooled = [self.late(mid)]
        if self.score is not None:
            # prior: how much each place changes over the clip, at the map's resolution
            energy = self.change_energy(x, moving)  # (B, H, W)
            energy = nn.functional.adaptive_avg_pool2d(energy, mid.shape[-2:])  # (B, h, w)
            energy = energy / energy.flatten(1).sum(1).clamp(min=1e-6)[:, None, None]
            logits = self.score(mid).squeeze(1) + torch.log(energy + 1e-3)[:, None]  # (B, T, h, w)
            weights = logits.flatten(1).softmax(dim=1)  # (B, T*h*w)
            pooled.append(torch.einsum("bcn,bn->bc", mid.flatten(2), weights))  # (B, 4w)
        return self.proj(torch.cat(pooled, dim=1))


def motion_centre(x: torch.Tensor, smooth: int = 9) -> torch.Tensor:
    """(B, 3, T, H, W) float clips -> (B, 2) integer (row, col) of the place that changes most over the clip:
    the frame-to-frame change summed over time and colour, box-smoothed, argmax (the centre for a still clip)."""
    b, _, _, h, w = x.shape
    energy = VideoEncoder.change_energy(x)  # (B, H, W)
    energy = nn.functional.avg_pool2d(energy[:, None], smooth, stride=1, padding=smooth // 2,
                                      count_include_pad=False)[:, 0]
    flat = energy.flatten(1)
    idx = flat.argmax(dim=1)
    still = flat.max(dim=1).values <= 1e-6
    rows = torch.where(still, torch.full_like(idx, h // 2), idx // w)
    cols = torch.where(still, torch.full_like(idx, w // 2), idx % w)
    return torch.stack([rows, cols], dim=1)


def crop_at(x: torch.Tensor, centre: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T, size, size) windows centred on `centre` (B, 2), shifted to stay inside."""
    b, c, t, h, w = x.shape
    r0 = (centre[:, 0] - size // 2).clamp(0, h - size)
    c0 = (centre[:, 1] - size // 2).clamp(0, w - size)
    ar = torch.arange(size, device=x.device)
    rows = (r0[:, None] + ar[None]).view(b, 1, 1, size, 1).expand(b, c, t, size, w)
    x = x.gather(3, rows)
    cols = (c0[:, None] + ar[None]).view(b, 1, 1, 1, size).expand(b, c, t, size, size)
    return x.gather(4, cols)


@register("conv3d-fovea")
class FoveaEncoder(VideoEncoder):
    """Two views of a clip: the whole frame (the conv3d-small network, for the motion and the scene) and a
    fovea, a window that follows the place where the picture changes most, seen at twice the detail. What
    acts is usually small: the fovea gives its form the pixels the whole-frame view averages away.

    Input clips are `size` pixels square (the reader's clip size); the whole-frame view is that
    downsampled by 2, the fovea a `fovea` x `fovea` window of the full-size clip. `fovea_frames` = 0 reads
    the window with 3D convs over every frame; k > 0 reads k evenly spaced frames with 2D convs and keeps
    each feature's maximum over them (a form needs no motion; about a tenth of the 3D window's arithmetic)."""

    def __init__(self, width: int = 16, feature_dim: int = 256, fovea: int = 48, fovea_width: int = 16,
                 fovea_frames: int = 0):
        super().__init__()
        self.width, self.feature_dim, self.fovea, self.fovea_width = width, feature_dim, fovea, fovea_width
        self.fovea_frames = fovea_frames
        self.whole = Conv3DEncoder(width=width, feature_dim=feature_dim, motion=True, attention=True)
        f = fovea_width
        if fovea_frames:  # a form needs no time: 2D convs over a few frames of the window, max over them
            self.fovea_net = nn.Sequential(
                _block(6, f, (1, 3, 3), (1, 2, 2), (0, 1, 1)),  # (B, f, k, s/2, s/2)
                _block(f, 2 * f, (1, 3, 3), (1, 2, 2), (0, 1, 1)),  # s/4
                _block(2 * f, 4 * f, (1, 3, 3), (1, 2, 2), (0, 1, 1)),  # s/8
                _block(4 * f, 8 * f, (1, 3, 3), 1, (0, 1, 1)),  # (B, 8f, k, s/8, s/8)
            )
        else:
            self.fovea_net = nn.Sequential(
                _block(6, f, (1, 3, 3), (1, 2, 2), (0, 1, 1)),  # (B, f, T, s/2, s/2)
                _block(f, 2 * f, 3, (1, 1, 1), 1),
                _block(2 * f, 4 * f, 3, (1, 2, 2), 1),  # s/4
                _block(4 * f, 8 * f, 3, (2, 2, 2), 1),  # s/8
                _block(8 * f, 8 * f, 3, (2, 1, 1), 1),
                nn.AdaptiveAvgPool3d(1),
                nn.Flatten(),  # (B, 8f)
            )
        self.proj = nn.Linear(feature_dim + 8 * f, feature_dim)

    def config(self) -> dict[str, Any]:
        return {"width": self.width, "feature_dim": self.feature_dim, "fovea": self.fovea,
                "fovea_width": self.fovea_width, "fovea_frames": self.fovea_frames}

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t, h, w, _ = clips.shape
        small = clips.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float()
        small = nn.functional.avg_pool2d(small, 2).round().to(torch.uint8).permute(0, 2, 3, 1)
        whole = self.whole(small.reshape(b, t, h // 2, w // 2, 3))  # (B, D)
        x = self.to_input(clips)
        centre = motion_centre(x)
        size = min(self.fovea, h, w)
        window = self.with_motion(crop_at(x, centre, size))  # (B, 6, T, size, size)
        if self.fovea_frames:
            pick = torch.linspace(0, t - 1, self.fovea_frames, device=x.device).round().long()
            part = self.fovea_net(window[:, :, pick]).mean(dim=(3, 4)).amax(dim=2)  # (B, 8f)
        else:
            part = self.fovea_net(window)  # (B, 8f)
        return self.proj(torch.cat([whole, part], dim=1))


def check_arch(arch: str, kwargs: dict[str, Any]) -> None:
    """A clear ValueError for an unregistered arch or a keyword argument its constructor does not take."""
    if arch not in REGISTRY:
        raise ValueError(f"unknown video encoder {arch!r}; registered: {sorted(REGISTRY)}")
    allowed = set(inspect.signature(REGISTRY[arch].__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"video encoder {arch!r} takes no {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")


def build_encoder(arch: str, **kwargs: Any) -> VideoEncoder:
    check_arch(arch, kwargs)
    return REGISTRY[arch](**kwargs)


class ClipEmbedder(nn.Module):
    """A video encoder and a text projection meeting in one joint space (unit vectors).

    Video: encoder features -> linear `head`. Text: a frozen MiniLM sentence embedding -> linear
    `text_head` (initialised to the identity), which learns to weigh what the picture can show (verb,
    noun, colour) over how the sentence is phrased. The joint embedding is what retrieval compares. What
    the visual words cluster is `embed_words`: the slot heads' predictions, or without slots the word
    head's."""

    def __init__(self, encoder: VideoEncoder, text_dim: int = 384, spoken_words: list[str] | None = None,
                 slots: dict[str, list[str]] | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, text_dim)
        self.text_head = nn.Linear(text_dim, text_dim)
        with torch.no_grad():
            self.text_head.weight.copy_(torch.eye(text_dim))
            self.text_head.bias.zero_()
        # which narration words the picture predicts (trained with the encoder; see train_encoder)
        self.spoken_words = list(spoken_words or [])
        self.word_head = nn.Linear(text_dim, len(self.spoken_words)) if self.spoken_words else None
        # slots: named word sets (the tag slots, e.g. verb and noun), each a softmax over its words read off the
        # encoder's features directly, not through the joint space the sentence contrast shapes (see train_encoder)
        self.slots = {name: list(words) for name, words in (slots or {}).items()}
        n_slot_words = sum(len(w) for w in self.slots.values())
        self.slot_head = nn.Linear(encoder.feature_dim, n_slot_words) if n_slot_words else None

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.encoder(clips))  # (B, text_dim)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features (B, feature_dim) -> joint embeddings (B, text_dim), unit vectors."""
        return nn.functional.normalize(self.head(features), dim=-1)

    def by_slot(self, columns: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, all slot words) -> {slot: (B, len(words))}: the slots' columns, in the order of `slots`."""
        return dict(zip(self.slots, columns.split([len(w) for w in self.slots.values()], dim=-1)))

    def slot_logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder features (B, feature_dim) -> {slot: (B, len(words)) logits}; empty without slots."""
        if self.slot_head is None:
            return {}
        return self.by_slot(self.slot_head(features))

    def slot_space(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features -> the square roots of each slot's predicted distribution, side by side and scaled to
        unit length (N, slot words): Euclidean distance is then the Hellinger distance averaged over slots."""
        parts = [lg.softmax(dim=-1).sqrt() for lg in self.slot_logits(features).values()]
        return torch.cat(parts, dim=-1) / len(parts) ** 0.5

    def word_space(self, emb: torch.Tensor) -> torch.Tensor:
        """Joint embeddings (N, text_dim) -> the square root of the predicted distribution over spoken words
        (N, V), so that Euclidean distance is the Hellinger distance between what two clips would be narrated
        with. Without a word head, the joint embedding itself."""
        if self.word_head is None:
            return emb
        return self.word_head(emb).softmax(dim=-1).sqrt()

    def embed_text(self, sentence_emb: torch.Tensor) -> torch.Tensor:
        """MiniLM sentence embeddings (N, 384) -> joint space (N, text_dim), unit vectors."""
        return nn.functional.normalize(self.text_head(sentence_emb), dim=-1)

    @torch.no_grad()
    def features(self, clips, batch_size: int = 128, device: str | torch.device = "cpu", progress: bool = False,
                 desc: str = "encoding clips") -> torch.Tensor:
        """Eval-mode encoder features of uint8 clips (N, T, H, W, 3) (numpy or torch), in batches, on the CPU;
        `progress`: a progress bar over the clips."""
        self.eval()
        out = []
        with tqdm(total=len(clips), desc=desc, unit="clip", disable=not progress) as bar:
            for i in range(0, len(clips), batch_size):
                out.append(self.encoder(torch.as_tensor(clips[i:i + batch_size]).to(device)).cpu())
                bar.update(len(out[-1]))
        return torch.cat(out) if out else torch.zeros(0, self.encoder.feature_dim)

    @torch.no_grad()
    def quantised_space(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features -> what the visual words quantise: the slot space when the embedder has slots (the
        words the tags choose between), else the word space of the joint embeddings."""
        if self.slot_head is not None:
            return self.slot_space(features)
        return self.word_space(self.embed_features(features))

    @torch.no_grad()
    def embed(self, clips, batch_size: int = 128, device: str | torch.device = "cpu") -> torch.Tensor:
        """Eval-mode joint embeddings of uint8 clips (N, T, H, W, 3) (numpy or torch), in batches."""
        return self.embed_features(self.features(clips, batch_size, device).to(device)).cpu()

    @torch.no_grad()
    def embed_words(self, clips, batch_size: int = 128, device: str | torch.device = "cpu", progress: bool = False,
                    desc: str = "encoding clips") -> torch.Tensor:
        """What the visual words quantise (`quantised_space`) for uint8 clips, in batches."""
        return self.quantised_space(self.features(clips, batch_size, device, progress, desc).to(device)).cpu()


def save_embedder(model: ClipEmbedder, directory: str | Path, spec: ClipSpec, extra: dict | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"arch": model.encoder.arch, "config": model.encoder.config(), "text_dim": model.head.out_features,
            "clip": spec.to_dict(),
            "spoken_words": model.spoken_words, "slots": model.slots, **(extra or {})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "encoder.safetensors"))
    (directory / "encoder.json").write_text(json.dumps(meta, indent=1))


def load_embedder(directory: str | Path, device: str | torch.device = "cpu") -> tuple[ClipEmbedder, ClipSpec, dict]:
    directory = Path(directory)
    meta_path, weights = directory / "encoder.json", directory / "encoder.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{directory} is not an encoder checkpoint (needs encoder.json and encoder.safetensors)")
    meta = json.loads(meta_path.read_text())
    model = ClipEmbedder(build_encoder(meta["arch"], **meta["config"]), meta["text_dim"], meta.get("spoken_words"),
                         meta.get("slots"))
    from videobert.checkpoint import load_strict

    load_strict(model, load_file(str(weights)), weights)
    return model.to(device).eval(), ClipSpec.from_dict(meta["clip"]), meta
