"""Token sequences for VideoBERT: `[CLS] text [>] video [SEP]`, text-only and video-only ones, masking
for the pretraining objectives, and padding into a batch.

Masking is BERT's (15%, then 80% [MASK] / 10% random / 10% kept), with one change for text: which tokens
are masked is drawn in proportion to how *grounded* each token is, the share of its uncertainty that the
paired visual words explain (mutual information / entropy, bias-corrected), plus a floor. Words the
picture shows ("grow", "circle") are then predicted far more often than "the" or "let": the picture can
only teach the model the words that it shows, and the rest is MiniLM's already. Computed from the
training corpus alone, for any corpus; before `fit_grounding` every token weighs the same."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from videobert.model import IGNORE, VideoBertConfig
from videobert.text import MAX_TEXT_TOKENS, text_ids


@dataclass
class Example:
    ids: list[int]
    types: list[int]
    labels: list[int]  # IGNORE where nothing is predicted
    align: int  # 1 matched, 0 mismatched, -1 no alignment target


class SequenceBuilder:
    def __init__(self, tokenizer, config: VideoBertConfig, max_text_tokens: int = MAX_TEXT_TOKENS):
        self.tok, self.cfg, self.max_text = tokenizer, config, max_text_tokens
        self.cls, self.sep, self.mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
        self.weight: dict[int, float] = {}  # masking weight per text token (see fit_grounding)

    def text_ids(self, text: str) -> list[int]:
        return text_ids([text], self.max_text, self.tok)[0]

    def fit_grounding(self, pairs: list[tuple[list[int], list[int]]], floor: float = 0.05) -> None:
        """Masking weights from (text ids, visual words) pairs: floor + I(token present; visual word) / H(token
        present), with the Miller-Madow correction so rare tokens do not look grounded by chance."""
        samples = [(set(t), w) for t, ws in pairs for w in ws]  # one sample per visual word of a pair
        n = len(samples)
        if n == 0:
            return
        p_w = Counter(w for _, w in samples)
        present: dict[int, Counter] = {}
        for toks, w in samples:
            for t in toks:
                present.setdefault(t, Counter())[w] += 1
        self.weight = {}
        for t, joint in present.items():
            n1 = sum(joint.values())
            px = n1 / n
            if n1 == n:
                self.weight[t] = floor
                continue
            h = -(px * math.log(px) + (1 - px) * math.log(1 - px))
            mi, cells = 0.0, 0
            for w, cw in p_w.items():
                for c, p_side in ((joint.get(w, 0), px), (cw - joint.get(w, 0), 1 - px)):  # present, absent
                    if c:
                        cells += 1
                        mi += c / n * math.log((c / n) / (p_side * cw / n))
            mi -= (cells - len(p_w) - 1) / (2 * n)  # Miller-Madow: (cells - rows - cols + 1) / 2n
            shrink = n1 / (n1 + 100.0)  # a token seen a few times cannot show much grounding
            self.weight[t] = floor + shrink * max(0.0, mi) / h

    def visual(self, words: list[int]) -> list[int]:
        return [self.cfg.visual_offset + int(w) for w in words]

    def build(self, text_ids: list[int] | None, words: list[int] | None) -> tuple[list[int], list[int]]:
        """(ids, token types): text and its [CLS]/[SEP] are type 0; [>], visual words and the last [SEP] type 1."""
        ids, types = [self.cls], [0]
        if text_ids:
            ids += text_ids
            types += [0] * len(text_ids)
        if words:
            if text_ids:
                ids.append(self.cfg.video_sep_id)
                types.append(1)
            ids += self.visual(words)
            types += [1] * len(words)
        ids.append(self.sep)
        types.append(1 if words else 0)
        return ids, types

    def template(self, template: str, words: list[int]) -> tuple[list[int], list[int], list[int]]:
        """A zero-shot query: (ids, types, positions of the [MASK] slots in order)."""
        ids, types = self.build(self.text_ids(template), words)
        return ids, types, [i for i, t in enumerate(ids) if t == self.mask]

    def mask_example(self, ids: list[int], types: list[int], rng: np.random.Generator, text_prob: float,
                     video_prob: float, align: int = -1) -> Example:
        ids = list(ids)
        labels = [IGNORE] * len(ids)
        off, n_vis = self.cfg.visual_offset, self.cfg.visual_vocab_size
        text_pos = [i for i, t in enumerate(ids) if t not in (self.cls, self.sep, self.cfg.video_sep_id) and t < off]
        video_pos = [i for i, t in enumerate(ids) if t >= off]
        chosen: list[int] = []
        if text_pos and text_prob > 0:
            k = max(1, int(round(text_prob * len(text_pos))))
            w = np.array([self.weight.get(ids[i], 1.0 if not self.weight else 0.05) for i in text_pos])
            chosen += list(rng.choice(text_pos, size=min(k, len(text_pos)), replace=False, p=w / w.sum()))
        if video_pos and video_prob > 0:
            picked = [i for i in video_pos if rng.random() < video_prob]
            if not picked and not text_pos:
                picked = [int(rng.choice(video_pos))]
            chosen += picked
        for i in chosen:
            labels[i] = ids[i]
            u = rng.random()
            if u < 0.8:
                ids[i] = self.mask
            elif u < 0.9:  # a random token of the same modality
                ids[i] = off + int(rng.integers(n_vis)) if ids[i] >= off else int(rng.integers(1000, self.cfg.text_vocab_size))
        return Example(ids, types, labels, align)


def collate(examples: list[Example], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Pad to the longest sequence: input_ids, token_type_ids, attention_mask, mlm_labels, align_labels."""
    n = max(len(e.ids) for e in examples)
    out = {
        "input_ids": torch.zeros(len(examples), n, dtype=torch.long),
        "token_type_ids": torch.zeros(len(examples), n, dtype=torch.long),
        "attention_mask": torch.zeros(len(examples), n, dtype=torch.long),
        "mlm_labels": torch.full((len(examples), n), IGNORE, dtype=torch.long),
    }
    for r, e in enumerate(examples):
        k = len(e.ids)
        out["input_ids"][r, :k] = torch.tensor(e.ids)
        out["token_type_ids"][r, :k] = torch.tensor(e.types)
        out["attention_mask"][r, :k] = 1
        out["mlm_labels"][r, :k] = torch.tensor(e.labels)
    out["align_labels"] = torch.tensor([e.align for e in examples], dtype=torch.long)
    return {k: v.to(device) for k, v in out.items()}
