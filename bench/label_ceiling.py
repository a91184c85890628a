"""What a video encoder can learn at a given budget when it is told the answers: the same network, clips,
augmentation, epochs and optimiser as `vbs train encoder`, but trained with the ground-truth verb and noun
of each clip (two softmax heads) instead of the narration. Scored on held-out clips; writes JSON.

    python -m bench.label_ceiling --data models/demo/data/train --heldout models/demo/data/heldout \\
        --out bench/results/label_ceiling.json

A diagnostic, not part of any recipe: the narration-trained encoder's word head (`vbs eval encoder`,
`word_head_verb` / `word_head_noun`) on the same held-out clips, set against this, says how much the weak
supervision costs and how much the network itself caps. Needs sidecar .json ground truth on both sides."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench import write_result
from videobert.clipset import load_clipset
from videobert.device import pick_device
from videobert.encoders import build_encoder, check_arch
from videobert.train_encoder import EncoderTrainConfig, augment


def label_ceiling(data: str | Path, heldout: str | Path, cfg: EncoderTrainConfig, device: str | None = None,
                  workers: int = 2, progress: bool = True) -> dict:
    check_arch(cfg.arch, cfg.arch_config)
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    cs = load_clipset(data, cfg.spec, workers=workers, progress=progress, stride=cfg.window_stride)
    hs = load_clipset(heldout, cfg.spec, workers=workers, progress=progress)
    train, test = cs.labelled(), hs.labelled()
    if len(train) < 2 or len(test) < 1:
        raise ValueError(f"need labelled clips (sidecar .json) on both sides: {len(train)} to train, {len(test)} held out")
    verbs, nouns = sorted({cs.verb[i] for i in train}), sorted({cs.noun[i] for i in train})
    y_verb = torch.tensor([verbs.index(v) if v in verbs else 0 for v in cs.verb])
    y_noun = torch.tensor([nouns.index(n) if n in nouns else 0 for n in cs.noun])
    encoder = build_encoder(cfg.arch, **cfg.arch_config).to(dev)
    head = torch.nn.Linear(encoder.feature_dim, len(verbs) + len(nouns)).to(dev)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps_per_epoch * cfg.epochs,
                                                pct_start=0.15)
    frames, start, steps = torch.from_numpy(cs.frames), time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        encoder.train()
        order = train[torch.randperm(len(train), generator=gen).numpy()]
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            if len(idx) < 2:
                continue
            out = head(encoder(augment(frames[idx], gen).to(dev)))
            loss = (F.cross_entropy(out[:, :len(verbs)], y_verb[idx].to(dev))
                    + F.cross_entropy(out[:, len(verbs):], y_noun[idx].to(dev)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss.item():.3f}", flush=True)
    encoder.eval()
    with torch.no_grad():
        out = torch.cat([head(encoder(torch.from_numpy(hs.frames[test[i:i + 128]]).to(dev))).cpu()
                         for i in range(0, len(test), 128)])
    verb_pred = [verbs[k] for k in out[:, :len(verbs)].argmax(1).tolist()]
    noun_pred = [nouns[k] for k in out[:, len(verbs):].argmax(1).tolist()]
    return {"data": str(data), "heldout": str(heldout), "arch": cfg.arch, "arch_config": cfg.arch_config,
            "clip": cfg.spec.to_dict(), "epochs": cfg.epochs, "steps": steps, "train_clips": int(len(train)),
            "heldout_clips": int(len(test)),
            "verb_top1": round(float(np.mean([p == hs.verb[i] for p, i in zip(verb_pred, test)])), 4),
            "noun_top1": round(float(np.mean([p == hs.noun[i] for p, i in zip(noun_pred, test)])), 4),
            "seconds": round(time.perf_counter() - start, 1), "device": str(dev)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled training videos")
    p.add_argument("--heldout", required=True, help="labelled held-out videos")
    p.add_argument("--arch", default="conv3d-small")
    p.add_argument("--arch-config", default="{}", metavar="JSON")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--fit", choices=("stretch", "pad"), default="stretch")
    p.add_argument("--epochs", type=int, default=6, help="default 6, as the quick preset's encoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="bench/results/label_ceiling.json")
    a = p.parse_args(argv)
    cfg = EncoderTrainConfig(arch=a.arch, arch_config=json.loads(a.arch_config), clip_size=a.size, clip_fit=a.fit,
                             epochs=a.epochs, seed=a.seed)
    r = label_ceiling(a.data, a.heldout, cfg, a.device, a.workers)
    write_result(a.out, r)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
