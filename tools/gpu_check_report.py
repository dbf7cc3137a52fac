"""Gathers what tools/gpu-check.sh wrote into one JSON and one Markdown table.

    python3 tools/gpu_check_report.py OUT_DIR

Reads OUT_DIR/adapters.json, steps.tsv, tests-*.log/.rc, smoke.json,
bench-kernels.json, bench-model-w*.json, torch-w*.json (torch-fp32-w*.json
on CUDA) and torch-kernels.json; writes OUT_DIR/gpu-check.json and
OUT_DIR/gpu-check.md and prints the table. A step that failed is reported as
failed, with its error, never left out.
"""
import json
import os
import re
import sys

WIDTHS = ["0.25", "1"]


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"{os.path.basename(path)}: {e}"}


def test_summary(out, name):
    """Passed/failed/ignored counts from libtest's summary lines."""
    counts = {"passed": 0, "failed": 0, "ignored": 0}
    try:
        log = open(os.path.join(out, f"tests-{name}.log")).read()
        rc = int(open(os.path.join(out, f"tests-{name}.rc")).read().strip() or 1)
    except (OSError, ValueError) as e:
        return {"error": str(e), "ok": False}
    for line in log.splitlines():
        if line.startswith("test result"):
            for key in counts:
                m = re.search(rf"(\d+) {key}", line)
                counts[key] += int(m.group(1)) if m else 0
    failures = re.findall(r"^test (\S+) \.\.\. FAILED", log, re.M)
    summary = {**counts, "exit_status": rc, "ok": rc == 0 and counts["passed"] > 0, "failures": failures}
    if rc == 124:
        summary["error"] = "timed out (see steps)"
    return summary


def read_steps(out):
    """Each step's name, exit status, seconds and limit, in order."""
    steps = []
    try:
        for line in open(os.path.join(out, "steps.tsv")):
            name, rc, secs, limit = line.rstrip("\n").split("\t")
            steps.append({"step": name, "exit_status": int(rc), "seconds": int(secs), "limit": int(limit)})
    except (OSError, ValueError):
        pass
    return steps


def gather(out):
    adapters = read_json(os.path.join(out, "adapters.json"))
    chosen = os.environ.get("ENGINE_ADAPTER", "0")
    return {
        "adapters": adapters,
        "adapter_chosen": chosen,
        "tests": {n: test_summary(out, n) for n in ("kernels", "network")},
        "bench_kernels": read_json(os.path.join(out, "bench-kernels.json")),
        "bench_model": {w: read_json(os.path.join(out, f"bench-model-w{w}.json")) for w in WIDTHS},
        "torch": {w: read_json(os.path.join(out, f"torch-w{w}.json")) for w in WIDTHS},
        "torch_fp32": {w: read_json(os.path.join(out, f"torch-fp32-w{w}.json"))
                       for w in WIDTHS if os.path.exists(os.path.join(out, f"torch-fp32-w{w}.json"))},
        "torch_kernels": read_json(os.path.join(out, "torch-kernels.json")),
        "steps": read_steps(out),
    }


def ms(x):
    return f"{x:.1f}" if isinstance(x, (int, float)) else "-"


def network_table(r):
    rows = ["| network | width | training step (ms) | inference (ms) |", "|---|---|---|---|"]
    for w in WIDTHS:
        e, t = r["bench_model"][w], r["torch"][w]
        if "error" in e:
            rows.append(f"| engine | {w} | failed: {e['error']} | |")
        else:
            rows.append(f"| engine on {e['adapter']} | {w} | {ms(e['train_step_ms'])} "
                        f"(batch {e['batch']} at {e['train_size']}) | {ms(e['infer_ms'])} (at {e['infer_size']}) |")
        for label, t in [("", t), (", fp32", r["torch_fp32"].get(w))]:
            if t is None:
                continue
            if "error" in t:
                rows.append(f"| PyTorch{label} | {w} | not run: {t['error']} | |")
                continue
            rows.append(f"| {t['framework']} on {t['device']}{label} | {w} | {ms(t['train_step_ms'])} "
                        f"| {ms(t['infer_ms'])} |")
            if "error" not in e:
                rows.append(f"| engine / PyTorch{label} | {w} | {e['train_step_ms'] / t['train_step_ms']:.2f}x "
                            f"| {e['infer_ms'] / t['infer_ms']:.2f}x |")
    return rows


def steps_table(steps):
    rows = ["| step | exit status | seconds (limit) |", "|---|---|---|"]
    for s in steps:
        state = "timed out" if s["exit_status"] == 124 else s["exit_status"]
        rows.append(f"| {s['step']} | {state} | {s['seconds']} ({s['limit']}) |")
    return rows


def torch_rate(tk, kernel):
    """PyTorch's GFLOP/s for the engine's case `kernel` (its name, then the
    shape), from `torch_bench.py --kernels`."""
    for name, rate in tk.get("gflops", {}).items():
        if kernel == name or kernel.startswith(name + " "):
            return f"{rate:.1f}"
    return ""


def kernel_table(k, tk):
    if "error" in k:
        return [f"engine bench failed: {k['error']}"]
    s = k["shape"]
    torch_col = f"{tk['framework']} on {tk['device']} (GFLOP/s)" if "error" not in tk else "PyTorch"
    rows = [f"Kernels on {k['adapter']}, n={s['n']} c={s['c']} {s['h']}x{s['w']}:", "",
            f"| kernel | variant | ms | rate | CPU im2col+SGEMM | {torch_col} |", "|---|---|---|---|---|---|"]
    for m in k["kernels"]:
        cpu = f"{m['cpu']['rate']:.2f}" if m.get("cpu") else ""
        rows.append(f"| {m['kernel']} | {m['variant']} | {m['ms']:.3f} | {m['rate']:.2f} {m['unit']} | {cpu} "
                    f"| {torch_rate(tk, m['kernel'])} |")
    return rows


def markdown(r):
    lines = ["# gpu-check", ""]
    adapters = r["adapters"] if isinstance(r["adapters"], list) else []
    for a in adapters:
        lines.append(f"- adapter [{a['index']}] {a['name']} ({a['device_type']}, {a['backend']}, "
                     f"{a['driver']} {a['driver_info']})")
    lines += [f"- chosen: {r['adapter_chosen']}", ""]
    for name, t in r["tests"].items():
        state = "passed" if t.get("ok") else "FAILED"
        lines.append(f"- {name} tests: {state} ({t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                     f"{t.get('ignored', 0)} ignored){' ' + ', '.join(t.get('failures', [])) if t.get('failures') else ''}")
    tables = network_table(r) + [""] + kernel_table(r["bench_kernels"], r["torch_kernels"]) + [""] + steps_table(r["steps"])
    return "\n".join(lines + [""] + tables) + "\n"


def main():
    out = sys.argv[1]
    report = gather(out)
    with open(os.path.join(out, "gpu-check.json"), "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(os.path.join(out, "gpu-check.md"), "w") as f:
        f.write(text)
    print(text)
    failed = [n for n, t in report["tests"].items() if not t.get("ok")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # exit status 1 means failed tests, not this
        print(f"gpu_check_report: {e!r}", file=sys.stderr)
        sys.exit(2)
