"""Times docs/MODEL.md's network in PyTorch at the shapes `engine bench --model` uses.

    python3 tools/torch_bench.py --device cuda --width 0.25 --train-size 320 --batch 4 --infer-size 640
    python3 tools/torch_bench.py --device cpu --kernels   # engine bench's conv cases

A training step is forward, the weighted BCE loss, backward and an Adam step
on a batch of random crops (as `engine bench --model` times it); inference is
one forward pass and the sigmoid of one image, without gradients. Each is run
once to warm up (cuDNN picks its algorithms then), then `--iters` times, with
the device synchronised around the timed runs. Prints one JSON object; with
`--device cuda` on a machine without CUDA it says so and exits with status 3.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine_torch import Net  # noqa: E402


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, iters, device):
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3 / iters


def kernel_rates(device, n, c, size, iters):
    """GFLOP/s of the convolution cases `engine bench` times at its default
    shape (2 FLOPs per multiply-add; stride 2 does a quarter of the work)."""
    x = torch.randn(n, c, size, size, device=device, requires_grad=True)
    w3 = torch.randn(c, c, 3, 3, device=device, requires_grad=True)
    w1 = torch.randn(c, c, 1, 1, device=device)
    y = F.conv2d(x, w3, padding=1)
    g = torch.randn_like(y)
    flops = 2 * n * size * size * c * c * 9
    cases = {
        "conv3x3 fwd": (flops, lambda: F.conv2d(x, w3, padding=1)),
        "conv3x3 bwd input": (flops, lambda: torch.autograd.grad(y, x, g, retain_graph=True)),
        "conv3x3 bwd weight": (flops, lambda: torch.autograd.grad(y, w3, g, retain_graph=True)),
        "conv3x3 s2 fwd": (flops / 4, lambda: F.conv2d(x, w3, padding=1, stride=2)),
        "conv1x1 fwd": (flops / 9, lambda: F.conv2d(x, w1)),
    }
    return {name: round(f / timed(fn, iters, device) * 1e-6, 1) for name, (f, fn) in cases.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--train-size", type=int, default=320)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--infer-size", type=int, default=640)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--pos-weight", type=float, default=15.0)
    p.add_argument("--tf32", choices=["default", "off"], default="default",
                   help="off: plain fp32 convolutions on CUDA, as the engine computes "
                   "(PyTorch's default lets cuDNN use TF32 tensor cores)")
    p.add_argument("--kernels", action="store_true",
                   help="time the convolution cases of `engine bench` (n=4, 64 channels, "
                   "80x80) instead of the network, in GFLOP/s")
    a = p.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"torch {torch.__version__}: no CUDA device is available", file=sys.stderr)
        sys.exit(3)
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    if a.tf32 == "off":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    if a.kernels:
        rates = kernel_rates(device, 4, 64, 80, a.iters)
        print(json.dumps({"framework": f"torch {torch.__version__}", "device": a.device,
                          "threads": torch.get_num_threads(), "gflops": rates}))
        return
    net = Net(a.width, "bilinear").to(device)
    for m in net.modules():
        if hasattr(m, "weight") and m.weight.dim() == 4:
            torch.nn.init.kaiming_normal_(m.weight)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(a.batch, 1, a.train_size, a.train_size, device=device)
    target = (torch.rand_like(x) < 0.02).float()
    pos_weight = torch.tensor(a.pos_weight, device=device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(net(x), target, pos_weight=pos_weight)
        loss.backward()
        opt.step()

    net.train()
    train_ms = timed(train_step, a.iters, device)
    image = torch.randn(1, 1, a.infer_size, a.infer_size, device=device)
    net.eval()

    def infer():
        with torch.no_grad():
            net.probability(image)

    infer_ms = timed(infer, a.iters, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({
        "framework": f"torch {torch.__version__}",
        "device": name,
        "threads": torch.get_num_threads(),
        "width": a.width,
        "batch": a.batch,
        "train_size": a.train_size,
        "infer_size": a.infer_size,
        "iters": a.iters,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None,
        "train_step_ms": train_ms,
        "infer_ms": infer_ms,
    }))


if __name__ == "__main__":
    main()
