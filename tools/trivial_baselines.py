#!/usr/bin/env python3
"""Metrics of trivial predictors on a prepared split, beside which a model's
`engine eval` numbers are read (same definitions as `engine eval`):

- pixel average precision: the precision-recall curve from the highest
  threshold down, stepwise (no interpolation), over every pixel of the split;
- image ROC AUC with the "area" image score: the (floor(H*W/750) + 1)-th
  largest probability of the map (ties count one half).

Predictors:
- constant: every pixel 0.5 (AP = the lesion prevalence, AUC = 0.5);
- intensity: p = grey value / 255 (lesions in mammograms are often brighter
  than fat, so this is the first thing a model must beat).

Usage: python3 tools/trivial_baselines.py PREPARED_DIR [SPLIT]   (needs numpy, pillow)
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def load_split(folder: Path, split: str):
    manifest = json.loads((folder / "manifest.json").read_text())
    for e in manifest["images"]:
        if e["split"] == split and not e["crop"] and e.get("mask_complete", True):
            rgb = np.asarray(Image.open(folder / e["file"]).convert("RGB"))
            yield e["file"], rgb[..., 0], rgb[..., 1] >= 128


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    # Only the last index of each run of equal scores is a threshold.
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = tp[last], fp[last]
    positives = t.sum()
    if positives == 0:
        return float("nan")
    recall = tp / positives
    precision = tp / (tp + fp)
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def roc_auc(scores, labels) -> float:
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def area_score(prob: np.ndarray) -> float:
    k = prob.size // 750 + 1
    return float(np.partition(prob.ravel(), prob.size - k)[prob.size - k])


def main():
    folder = Path(sys.argv[1])
    split = sys.argv[2] if len(sys.argv) > 2 else "test"
    images = list(load_split(folder, split))
    truth = np.concatenate([m.ravel() for _, _, m in images])
    labels = [bool(m.any()) for _, _, m in images]
    predictors = {
        "constant": lambda g: np.full(g.shape, 0.5, np.float32),
        "intensity": lambda g: g.astype(np.float32) / 255.0,
    }
    print(
        f"{folder} split {split}: {len(images)} images, {sum(labels)} with lesions, "
        f"lesion prevalence {truth.mean():.4f}"
    )
    print("predictor   pixel_AP  image_ROC_AUC")
    for name, f in predictors.items():
        maps = [f(g) for _, g, _ in images]
        ap = average_precision(np.concatenate([m.ravel() for m in maps]), truth)
        auc = roc_auc([area_score(m) for m in maps], labels)
        print(f"{name:<10}  {ap:8.4f}  {auc:13.3f}")


if __name__ == "__main__":
    main()
