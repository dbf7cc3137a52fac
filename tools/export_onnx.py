#!/usr/bin/env python3
"""Exports an engine checkpoint to ONNX (input "image": float32 1 x 1 x H x W,
(x - 127) / 255; output "probability": 1 x 1 x H x W).

    python tools/export_onnx.py CHECKPOINT OUT.onnx [--height 1024 --width 832]

The graph is traced at one size (the padding and resize targets are
computed from it), so export at the (multiple-of-32) size you will run.
Checks the export with onnxruntime when it is installed. Needs torch,
safetensors, onnx and (torch 2.9 and later) onnxscript.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_torch import load_checkpoint  # noqa: E402


class Probability(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.probability(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--height", type=int, default=256, help="input height (multiple of 32)")
    ap.add_argument("--width", type=int, default=256, help="input width (multiple of 32)")
    ap.add_argument("--opset", type=int, default=18)
    a = ap.parse_args()
    net, meta = load_checkpoint(a.checkpoint)
    model = Probability(net).eval()
    if a.height % 32 or a.width % 32:
        ap.error("--height and --width must be multiples of 32")
    x = torch.rand(1, 1, a.height, a.width) - 0.5
    kwargs = dict(input_names=["image"], output_names=["probability"], opset_version=a.opset)
    try:
        # One self-contained file (newer torch writes large weights beside it).
        torch.onnx.export(model, (x,), a.out, external_data=False, **kwargs)
    except TypeError:  # torch without the external_data argument
        torch.onnx.export(model, (x,), a.out, **kwargs)
    print(f"wrote {a.out}: {a.width}x{a.height} (network width {meta['width']}, "
          f"resize {meta['resize']}, opset {a.opset})")
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: export not checked")
        return
    sess = ort.InferenceSession(a.out, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(ref - got).max())
    print(f"onnxruntime vs torch: max |diff| = {diff:.2e}")
    assert diff < 1e-4, "ONNX export disagrees with torch"


if __name__ == "__main__":
    main()
