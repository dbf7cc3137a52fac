"""The engine's network in PyTorch, and a loader for engine checkpoints.

    import sys; sys.path.insert(0, "tools")
    from engine_torch import load_checkpoint, preprocess
    net, meta = load_checkpoint("runs/NAME/checkpoint.safetensors")
    prob = net.probability(preprocess(gray_uint8_array))   # (1, 1, H, W) in [0, 1]

The module follows docs/MODEL.md's layer table; `load_checkpoint` reads the
safetensors file, drops the Adam moments (`*.adam_m`, `*.adam_v`) that
training checkpoints carry, checks the format, and loads the rest strictly
(apart from PyTorch's own `num_batches_tracked`). The network is fully
convolutional: sides that are multiples of 32 match the engine exactly
(the engine pads other sizes with black to a multiple of 32; `preprocess`
does the same when `pad=True`). Needs torch and safetensors.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

FORMAT = "mammo-dense-v1"

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



    def probability(self, x):
        """Sigmoid of the logits: the engine's probability map."""
        return torch.sigmoid(self.forward(x))


def preprocess(gray, pad=True):
    """An 8-bit grey image (H x W numpy array) as the network's input
    (1, 1, H', W'): (x - 127) / 255, padded with black at the bottom and
    right to multiples of 32 when `pad` (crop the output back to H x W)."""
    x = np.asarray(gray, dtype=np.float32)
    if pad:
        h, w = x.shape
        hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
        x = np.pad(x, ((0, hp - h), (0, wp - w)), constant_values=0.0)
    return torch.from_numpy((x - 127.0) / 255.0)[None, None]


def load_checkpoint(path, device="cpu"):
    """(net in eval mode, metadata dict) from an engine checkpoint."""
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an engine checkpoint (format {meta.get('format')!r})")
    state = {k: v for k, v in load_file(path, device=device).items()
             if not k.endswith((".adam_m", ".adam_v"))}
    net = Net(float(meta["width"]), meta["resize"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{path}: unexpected tensors {unexpected}")
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: missing tensors {missing}")
    return net.to(device).eval(), meta
