#!/usr/bin/env bash
# Proves and times the engine on this machine's GPU, in one command:
# lists the adapters, runs the kernel and network tests on the chosen one,
# times every kernel (`engine bench`) and the whole network at widths 0.25
# and 1 (`engine bench --model`), times the same network in PyTorch (CUDA
# where there is one, else the CPU), and writes gpu-check.json and a
# Markdown table into the output folder. Works on any adapter, lavapipe
# included. See README.md, "Checking a GPU".
#
#   tools/gpu-check.sh [--out DIR] [--adapter NAME|INDEX] [--iters N] [--quick]
#                      [--step-limit SECONDS]  # each step's limit (tests: twice)
#   tools/gpu-check.sh --pack DIR     # build here, copy what a run needs into DIR
#   DIR/gpu-check.sh --bin DIR ...    # run from such a folder (no Rust toolchain)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=gpu-check
adapter=""
bin=""
pack=""
iters=5
quick=0
limit=150

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --adapter) adapter=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --pack) pack=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --step-limit) limit=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "gpu-check: unknown argument '$1'" >&2; usage 2 ;;
  esac
done

say() { echo "== $*" >&2; }
die() { echo "gpu-check: $*" >&2; exit 1; }

# The Vulkan loader and, with an NVIDIA driver, its Vulkan ICD file: without
# them wgpu finds no GPU and the engine would quietly measure nothing useful.
# The loader where the dynamic linker finds it: the ldconfig cache or a
# folder on LD_LIBRARY_PATH. (Not `grep -q`: under pipefail, ldconfig's
# SIGPIPE after an early match would read as "not found".)
has_vulkan_loader() {
  local d
  ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null && return 0
  for d in ${LD_LIBRARY_PATH//:/ }; do
    [ -e "$d/libvulkan.so.1" ] && return 0
  done
  return 1
}

preflight() {
  if ! has_vulkan_loader; then
    cat >&2 <<'EOF'
gpu-check: no Vulkan loader (libvulkan.so.1) on this machine, so wgpu sees no Vulkan GPU.
  Debian/Ubuntu: apt-get install libvulkan1 (and mesa-vulkan-drivers for lavapipe).
  Without root: apt-get download libvulkan1, then dpkg -x the .deb into a folder
  and put its usr/lib/x86_64-linux-gnu on LD_LIBRARY_PATH.
EOF
    return 1
  fi
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  local f icd=""
  for f in ${VK_DRIVER_FILES:-} ${VK_ICD_FILENAMES:-} /usr/share/vulkan/icd.d/nvidia*.json \
           /etc/vulkan/icd.d/nvidia*.json /usr/local/nvidia/share/vulkan/icd.d/nvidia*.json; do
    [ -f "$f" ] && case "$f" in *nvidia*) icd=$f; break ;; esac
  done
  if [ -z "$icd" ]; then
    cat >&2 <<'EOF'
gpu-check: nvidia-smi sees a GPU, but there is no NVIDIA Vulkan ICD file (nvidia_icd.json),
  so Vulkan cannot reach it. The driver package ships it (libnvidia-gl / nvidia-vulkan-icd);
  in a container, start it with NVIDIA_DRIVER_CAPABILITIES=all (or compute,utility,graphics),
  or point VK_DRIVER_FILES at the driver's nvidia_icd.json.
EOF
    return 0
  fi
  case "$icd" in /usr/share/*|/etc/*) ;; *) export VK_DRIVER_FILES=$icd ;; esac
  say "NVIDIA Vulkan ICD: $icd"
}

# The engine binary and the kernel and network test executables: built
# here with cargo, or taken from a --bin folder made by --pack.
locate_binaries() {
  if [ -n "$bin" ]; then
    engine=$bin/engine kernels=$bin/kernels network=$bin/network
  else
    command -v cargo >/dev/null || die "no cargo here: build elsewhere with --pack DIR and run DIR/gpu-check.sh --bin DIR"
    say "building (cargo build --release, test executables)"
    cargo build --release -q || die "cargo build failed"
    engine=$PWD/target/release/engine
    local list
    list=$(cargo test --release -q --no-run --message-format=json --test kernels --test network) \
      || die "building the tests failed"
    kernels=$(echo "$list" | python3 -c "$(executable_of kernels)")
    network=$(echo "$list" | python3 -c "$(executable_of network)")
  fi
  for f in "$engine" "$kernels" "$network"; do [ -x "$f" ] || die "missing executable $f"; done
}

executable_of() {
  printf '%s\n' "import json, sys" \
    "for l in sys.stdin:" \
    "    m = json.loads(l)" \
    "    if m.get('executable') and m['target']['name'] == '$1': print(m['executable'])"
}

if [ -n "$pack" ]; then
  mkdir -p "$pack" && pack=$(cd "$pack" && pwd) && cd "$here/.." && locate_binaries
  cp "$engine" "$pack/engine" && cp "$kernels" "$pack/kernels" && cp "$network" "$pack/network" \
    && cp "$here"/{gpu-check.sh,gpu_check_report.py,engine_torch.py,torch_bench.py} "$pack/" \
    && cp -r "$here/../shaders" "$pack/" && say "packed into $pack" && exit 0
  die "packing into $pack failed"
fi

mkdir -p "$out" && out=$(cd "$out" && pwd)
if [ -n "$bin" ]; then bin=$(cd "$bin" && pwd) && cd "$bin"; else cd "$here/.."; fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
chmod 0700 "$XDG_RUNTIME_DIR"
preflight || exit 1
locate_binaries
tools=${bin:-$here}

say "adapters"
"$engine" devices --json >"$out/adapters.json" || die "no adapter: wgpu reaches no GPU here (see the messages above)"
"$engine" devices
export ENGINE_ADAPTER=${adapter:-0}
[ "$quick" = 1 ] && iters=1
: >"$out/steps.tsv"

# One step, bounded by its time limit (a driver that hangs must not eat a
# short GPU window), its stdout into FILE and stderr into FILE.err, its exit
# status and seconds appended to steps.tsv for the report.
step() {  # name limit file command...
  local name=$1 limit=$2 file=$3 t0=$SECONDS rc
  shift 3
  say "$name"
  timeout "$limit" "$@" >"$file" 2>"$file.err"
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$out/steps.tsv"
  return $rc
}

json_step() {  # as step; on failure FILE holds {"error": why}
  local rc why
  step "$@" && return 0
  rc=$?
  if [ $rc = 124 ]; then why="timed out after $2 s"; else why="exit status $rc: $(tail -1 "$3.err")"; fi
  printf '{"error": "%s"}\n' "$(echo "$why" | tr -d '"\\')" >"$3"
}

test_step() {  # name executable [filter]: libtest's output and summary
  step "tests: $1 on adapter $ENGINE_ADAPTER" "$((2 * limit))" "$out/tests-$1.log" "$2" ${3:+"$3"}
  echo "$?" >"$out/tests-$1.rc"
  cat "$out/tests-$1.log.err" >>"$out/tests-$1.log"
  grep '^test result' "$out/tests-$1.log" >&2
}

# The numbers first, then the tests: if the window closes early, what came
# back is the measurement. A one-kernel bench first proves the setup.
json_step "smoke: one convolution" "$limit" "$out/smoke.json" \
  "$engine" bench --json --iters 1 --filter "conv3x3 fwd"
torch_device=cpu
if command -v nvidia-smi >/dev/null 2>&1 && python3 -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  torch_device=cuda
fi
for w in 0.25 1; do
  json_step "engine bench --model --width $w" "$limit" "$out/bench-model-w$w.json" \
    "$engine" bench --model --json --width "$w" --iters "$iters"
  json_step "PyTorch ($torch_device) --width $w" "$limit" "$out/torch-w$w.json" \
    python3 "$tools/torch_bench.py" --device "$torch_device" --width "$w" --iters "$iters"
  # PyTorch's default lets cuDNN use TF32; the engine computes in fp32.
  [ "$torch_device" = cuda ] && json_step "PyTorch (cuda, fp32) --width $w" "$limit" "$out/torch-fp32-w$w.json" \
    python3 "$tools/torch_bench.py" --device cuda --tf32 off --width "$w" --iters "$iters"
done
json_step "engine bench (every kernel)" "$limit" "$out/bench-kernels.json" \
  "$engine" bench --json --iters "$iters" $([ "$quick" = 1 ] && echo --filter conv3x3)
json_step "PyTorch ($torch_device) kernels" "$limit" "$out/torch-kernels.json" \
  python3 "$tools/torch_bench.py" --device "$torch_device" --kernels --iters "$iters"
test_step kernels "$kernels" "$([ "$quick" = 1 ] && echo conv)"
test_step network "$network"

python3 "$tools/gpu_check_report.py" "$out"
case $? in
  0) ;;
  1) die "tests failed or timed out: see the table above and $out/tests-*.log" ;;
  *) die "could not write the report" ;;
esac
