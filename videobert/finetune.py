"""Fine-tuning for a downstream task: video classification (the verb, or the noun) from a segment's visual
words, with a linear head on the fused [CLS] representation. `compare` trains the same head, with the
same small labelled budget, on the pretrained VideoBERT and on a fusion model that was not pretrained
(MiniLM with fresh visual-word embeddings), and reports accuracy and macro-F1 for both."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from videobert.model import VideoBertConfig, VideoBertForPreTraining
from videobert.sequences import Example, SequenceBuilder, collate
from videobert.checkpoint import ModelPaths
from videobert.evaluate import segment_words
from videobert.text import load_tokenizer
from videobert.visual_words import VisualTokenizer

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    task: str = "verb"  # a field of the ground-truth segments: verb or noun
    budget: int = 200  # labelled segments used for training
    epochs: int = 15
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 2e-3
    seed: int = 0


class VideoClassifier(torch.nn.Module):
    def __init__(self, body: VideoBertForPreTraining, n_classes: int):
        super().__init__()
        self.body = body
        self.head = torch.nn.Linear(body.config.hidden_size, n_classes)

    def forward(self, batch: dict) -> torch.Tensor:
        hidden = self.body(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).hidden
        return self.head(hidden[:, 0])  # (B, classes) from [CLS]


def macro_f1(pred: np.ndarray, gold: np.ndarray, n: int) -> float:
    f1s = []
    for c in range(n):
        tp = np.sum((pred == c) & (gold == c))
        fp, fn = np.sum((pred == c) & (gold != c)), np.sum((pred != c) & (gold == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def _train_and_eval(body: VideoBertForPreTraining, builder: SequenceBuilder, train, test, classes: list[str],
                    cfg: FinetuneConfig, device: torch.device, desc: str, progress: bool) -> dict:
    torch.manual_seed(cfg.seed)
    model = VideoClassifier(body, len(classes)).to(device)
    opt = torch.optim.AdamW([{"params": model.body.parameters(), "lr": cfg.lr},
                             {"params": model.head.parameters(), "lr": cfg.head_lr}], weight_decay=0.01)

    def batch_of(items):
        return collate([Example(*builder.build(None, w), [-100] * (len(w) + 2), -1) for w, _ in items], device)

    rng = np.random.default_rng(cfg.seed)
    steps = cfg.epochs * max(1, len(train) // cfg.batch_size)
    for _ in tqdm(range(steps), desc=desc, unit="step", disable=not progress):
        model.train()
        idx = rng.choice(len(train), size=min(cfg.batch_size, len(train)), replace=False)
        items = [train[i] for i in idx]
        loss = F.cross_entropy(model(batch_of(items)), torch.tensor([y for _, y in items], device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(test), 128):
            preds += model(batch_of(test[s:s + 128])).argmax(1).tolist()
    pred, gold = np.array(preds), np.array([y for _, y in test])
    return {"accuracy": round(float((pred == gold).mean()), 4), "macro_f1": round(macro_f1(pred, gold, len(classes)), 4)}


def compare(model_dir: str | Path, data: str | Path, eval_data: str | Path, cfg: FinetuneConfig = FinetuneConfig(),
            device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Same head, same budget, pretrained VideoBERT vs a fusion model that was not pretrained."""
    start = time.perf_counter()
    device = torch.device(device)
    paths = ModelPaths.of(model_dir)
    visual = VisualTokenizer.load(paths.encoder, paths.vocab, device)
    train_segs = segment_words(visual, data, progress)
    test_segs = segment_words(visual, eval_data, progress)
    if cfg.task not in ("verb", "noun"):
        raise ValueError(f"task must be verb or noun, got {cfg.task!r}")
    classes = sorted({getattr(s, cfg.task) for s, _ in train_segs + test_segs})
    label = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(cfg.seed)
    pick = rng.permutation(len(train_segs))[: cfg.budget]
    train = [(train_segs[i][1], label[getattr(train_segs[i][0], cfg.task)]) for i in pick]
    test = [(w, label[getattr(s, cfg.task)]) for s, w in test_segs]
    if len(train) < len(classes) or not test:
        raise ValueError(f"too few labelled segments: {len(train)} to train, {len(test)} to test")
    pretrained = VideoBertForPreTraining.load(paths.videobert, device)
    mcfg: VideoBertConfig = pretrained.config
    builder = SequenceBuilder(load_tokenizer(), mcfg)
    result = {"task": cfg.task, "classes": classes, "train_segments": len(train), "test_segments": len(test),
              "config": asdict(cfg), "chance_accuracy": round(1 / len(classes), 4)}
    result["pretrained"] = _train_and_eval(pretrained, builder, train, test, classes, cfg, device, "finetune pretrained", progress)
    scratch = VideoBertForPreTraining.from_minilm(mcfg, seed=cfg.seed).to(device)
    result["not_pretrained"] = _train_and_eval(scratch, builder, train, test, classes, cfg, device, "finetune not pretrained", progress)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result
