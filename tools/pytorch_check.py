#!/usr/bin/env python3
"""Loads an engine checkpoint into a PyTorch module written from docs/MODEL.md and
compares its probability map with the one `engine infer` wrote.

    python tools/pytorch_check.py CHECKPOINT IMAGE.png ENGINE_PROB.png

IMAGE is an 8-bit grey PNG whose sides are multiples of 32 (so that the
engine runs it unpadded); ENGINE_PROB is `engine infer`'s NAME_prob.png
(16-bit, 65535 = 1.0). Needs torch, safetensors, numpy and pillow. Not part
of CI (torch is several GB); measured results are in README.md, "Checking a checkpoint in PyTorch".
"""
import math
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

# docs/MODEL.md's layer table: name, kind, k, stride, dilation, in, out (width 1).
LAYERS = [
    ("conv0_1", "cbr", 3, 2, 1, 1, 32), ("conv0_2", "cbr", 3, 1, 1, 32, 32),
    ("conv0_3", "cb_skip", 3, 1, 1, 32, 32), ("pool0_1", "cbr", 3, 2, 1, 32, 48),
    ("conv1_1", "cbr", 3, 1, 1, 48, 48), ("conv1_2", "cbr", 3, 1, 1, 48, 48),
    ("conv1_3", "cb_skip", 3, 1, 1, 48, 48), ("conv2_1", "cbr", 3, 1, 1, 48, 64),
    ("conv2_2", "cbr", 3, 1, 1, 64, 64), ("conv2_3", "cb_skip", 3, 1, 1, 64, 64),
    ("conv3_1", "cbr", 3, 1, 1, 64, 128), ("conv3_2", "cbr", 3, 1, 1, 128, 128),
    ("conv3_3", "cb_skip", 3, 1, 1, 128, 128), ("conv4_0", "cbr", 3, 1, 1, 128, 256),
    ("conv4_1", "cbr", 3, 1, 1, 256, 256), ("conv4_2", "cbr", 3, 1, 1, 256, 256),
    ("conv4_3", "cb_skip", 3, 1, 1, 256, 256), ("conv5_0", "cbr", 3, 1, 2, 256, 512),
    ("conv5_1", "cbr", 3, 1, 2, 512, 512), ("conv5_2", "cbr", 3, 1, 2, 512, 512),
    ("conv5_3", "cb_skip", 3, 1, 2, 512, 512), ("fc_1", "cbr", 1, 1, 1, 512, 256),
    ("up_conv2", "cbr", 3, 1, 1, 256, 128), ("up_conv6", "cbr", 3, 1, 1, 128, 64),
    ("upsample_4", "tconv", 4, 2, 1, 64, 64), ("upsample_5", "tconv", 4, 1, 1, 64, 32),
    ("up_conv9", "cbr", 3, 1, 1, 32, 16), ("logits", "logits", 1, 1, 1, 16, 1),
]
SKIP_FROM = {"conv0_1", "conv1_1", "conv2_1", "conv3_1", "conv4_0", "conv5_0"}


def channels(c, width):
    return 1 if c == 1 else max(4, int(math.floor(c * width + 0.5)))


def same_pads(size, k, s, d):
    out = -(-size // s)
    pad = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return pad // 2, pad - pad // 2


class Conv(nn.Module):
    def __init__(self, cin, cout, k, s, d, bn):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.k, self.s, self.d = k, s, d
        if bn:
            self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.01)

    def forward(self, x):
        t, b = same_pads(x.shape[2], self.k, self.s, self.d)
        l, r = same_pads(x.shape[3], self.k, self.s, self.d)
        y = F.conv2d(F.pad(x, (l, r, t, b)), self.weight, self.bias, self.s, 0, self.d)
        return self.bn(y) if hasattr(self, "bn") else y


class TConv(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cin, cout, 4, 4))  # ConvTranspose2d layout
        self.bias = nn.Parameter(torch.zeros(cout))
        self.s = s

    def forward(self, x):
        y = F.conv_transpose2d(x, self.weight, self.bias, stride=self.s, padding=1)
        # docs/MODEL.md keeps output rows/cols in [0, in * s).
        return y[:, :, : x.shape[2] * self.s, : x.shape[3] * self.s]


def maxpool_same(x, k, s):
    t, b = same_pads(x.shape[2], k, s, 1)
    l, r = same_pads(x.shape[3], k, s, 1)
    return F.max_pool2d(F.pad(x, (l, r, t, b), value=-math.inf), k, s)


class Net(nn.Module):
    def __init__(self, width, resize):
        super().__init__()
        self.resize_mode = resize
        for name, kind, k, s, d, cin, cout in LAYERS:
            i, o = channels(cin, width), channels(cout, width)
            if kind == "tconv":
                setattr(self, name, TConv(i, o, s))
            else:
                setattr(self, name, Conv(i, o, k, s, d, kind != "logits"))

    def resize(self, x, h, w):
        if self.resize_mode == "nearest":
            return F.interpolate(x, size=(h, w), mode="nearest")
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, x):
        H, W = x.shape[2], x.shape[3]
        skip = None
        for name, kind, *_ in LAYERS:
            layer = getattr(self, name)
            if kind == "cbr":
                b = layer(x)
                if name in SKIP_FROM:
                    skip = b
                x = F.relu(b)
            elif kind == "cb_skip":
                x = F.relu(layer(x) + skip)
            elif kind == "tconv":
                x = F.relu(layer(x))
            else:
                x = layer(x)
            if name == "conv1_3":
                x = maxpool_same(x, 3, 2)
            elif name in ("conv2_3", "conv3_3"):
                x = maxpool_same(x, 2, 2)
            elif name == "fc_1":
                x = self.resize(x, -(-H // 8), -(-W // 8))
            elif name == "up_conv2":
                x = self.resize(x, -(-H // 4), -(-W // 4))
            elif name == "logits":
                x = self.resize(x, H, W)
        return x


def main():
    ckpt, image, engine_prob = sys.argv[1:4]
    with safe_open(ckpt, "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "mammo-dense-v1", meta
    state = {k: v for k, v in load_file(ckpt).items() if not k.endswith((".adam_m", ".adam_v"))}
    net = Net(float(meta["width"]), meta["resize"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    net.eval()
    x = np.asarray(Image.open(image).convert("L"), dtype=np.float32)
    x = torch.from_numpy((x - 127.0) / 255.0)[None, None]
    with torch.no_grad():
        p = torch.sigmoid(net(x))[0, 0].numpy()
    e = np.asarray(Image.open(engine_prob), dtype=np.float64) / 65535.0
    diff = np.abs(p - e)
    print(f"{len(state)} tensors loaded (strict apart from num_batches_tracked); "
          f"width {meta['width']}, resize {meta['resize']}; image {x.shape[3]}x{x.shape[2]}")
    print(f"max |torch - engine| = {diff.max():.2e}, mean = {diff.mean():.2e}")
    assert diff.max() < 1e-3, "PyTorch and engine disagree"
    print("PyTorch agrees with engine")


if __name__ == "__main__":
    main()
