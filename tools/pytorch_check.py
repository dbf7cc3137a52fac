#!/usr/bin/env python3
"""Loads an engine checkpoint into the PyTorch network of engine_torch.py and
compares its probability map with the one `engine infer` wrote.

    python tools/pytorch_check.py CHECKPOINT IMAGE.png ENGINE_PROB.png

IMAGE is an 8-bit grey PNG whose sides are multiples of 32 (so that the
engine runs it unpadded); ENGINE_PROB is `engine infer`'s NAME_prob.png
(16-bit, 65535 = 1.0). Needs torch, safetensors, numpy and pillow. Run by
`cargo test` (tests/python_interop.rs) when python3 with torch is found at
build time.
"""
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_torch import load_checkpoint, preprocess  # noqa: E402


def main():
    ckpt, image, engine_prob = sys.argv[1:4]
    net, meta = load_checkpoint(ckpt)
    gray = np.asarray(Image.open(image).convert("L"))
    x = preprocess(gray, pad=False)
    with torch.no_grad():
        p = net.probability(x)[0, 0].numpy()
    e = np.asarray(Image.open(engine_prob), dtype=np.float64) / 65535.0
    diff = np.abs(p - e)
    n = sum(1 for _ in net.state_dict())
    print(f"{n} tensors in the module; width {meta['width']}, resize {meta['resize']}; "
          f"image {x.shape[3]}x{x.shape[2]}")
    print(f"max |torch - engine| = {diff.max():.2e}, mean = {diff.mean():.2e}")
    assert diff.max() < 1e-3, "PyTorch and engine disagree"
    print("PyTorch agrees with engine")


if __name__ == "__main__":
    main()
