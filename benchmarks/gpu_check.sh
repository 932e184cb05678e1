#!/usr/bin/env bash
# The GPU check of issue 19: one script, at most 8 minutes on one GPU (the timeouts below add up to 470 s
# plus the wheels' install), run from the repository root.
# Results go under $OUT when it is set (the device tool's result folder), else runs/gpu_check:
#   gpu.txt            the GPU, driver, torch
#   pytest_cuda.log    pytest -m cuda tests/test_cuda.py (placement, resume, bf16/fp16, RNG, OOM, DDP nccl)
#   kill_resume.log    SIGKILL mid-epoch, --resume, final weights and metrics vs an uninterrupted run
#   kill_resume.json   (deterministic: true, device cuda)
#   bench_gpu.log      benchmarks/bench_gpu.py: trainlab vs a hand-written CUDA loop vs Lightning
#   bench_gpu.json
#   summary.txt        one line per part: passed / FAILED
#
# Packages the device image lacks travel as wheels in .whl (git-ignored via .git/info/exclude). Once,
# on a machine with pip access, from the repository root:
#   bash benchmarks/gpu_check.sh --fetch-wheels
# then call the device tool with carry [".whl"] and the command `bash benchmarks/gpu_check.sh`
# (timeout_s 540 leaves a minute for the machine's start and the transfers in a 10-minute call).
set -uo pipefail
cd "$(dirname "$0")/.."

# The versions trainlab's tests run with here; pydantic needs its core and these two; typing-extensions
# is newer than some images'.
WHEELS="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
typing-extensions==4.16.0 torchinfo==1.8.0 mnist1d==0.0.2.post1"

if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    mkdir -p .whl
    for spec in $WHEELS; do  # cp312 x86-64 manylinux wheels for the device's Python 3.12
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$spec" || python3 -m pip wheel -q --no-deps -w .whl "$spec"  # a pure-Python sdist: build it
    done
    ls -la .whl
    exit 0
fi

OUT=${OUT:-runs/gpu_check}
# GPU_CHECK_DEVICE=cpu runs the same script as a smoke test on a machine without a GPU (small benchmark).
DEVICE=${GPU_CHECK_DEVICE:-cuda}
export RESUME_DEVICE=$DEVICE
BENCH_ARGS=$([ "$DEVICE" = cpu ] && echo "--device cpu --quick" || echo "--device cuda --cifar-samples 25000")
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed" | tee "$OUT/summary.txt"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
result() { if [ "$2" -eq 0 ]; then echo "$1: passed" | tee -a "$SUMMARY"; else echo "$1: FAILED (exit $2)" | tee -a "$SUMMARY"; fi; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, *((torch.cuda.get_device_name(0), 'capability', torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else ('no CUDA device',)))"
  date -u; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# 1. The CUDA-marked tests (about 1 minute; at most 150 s).
timeout 150 $PY -m pytest -m cuda tests/test_cuda.py -v -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.log"
result "pytest -m cuda" "${PIPESTATUS[0]}"

# 2. SIGKILL mid-epoch (inside a checkpoint save), --resume, compare with an uninterrupted run; CUDA,
#    train.deterministic: true (about 45 s; at most 100 s).
timeout 100 $PY - "$OUT" <<'PYEOF' 2>&1 | tee "$OUT/kill_resume.log"
import json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path

import torch

from trainlab.engine import checkpoint as ckpt

out = Path(sys.argv[1])
work = Path(tempfile.mkdtemp(prefix="kill_resume_"))
# digits MLP with dropout and random crops/flips: the CUDA RNG and the loader's order must both resume.
# compile: false keeps the three runs inside the time budget (RESUME_COMPILE=auto tries the default).
args = ["train", "model.name=mlp", "model.hidden=[256,128]", "model.dropout=0.3", "data.batch_size=64",
        "data.transforms=[{RandomCrop: {size: 8, padding: 1}}, RandomHorizontalFlip]", "train.epochs=4",
        f"train.device={os.environ.get('RESUME_DEVICE', 'cuda')}", "train.deterministic=true",
        "train.checkpoint_every_n_steps=5",
        f"train.compile={os.environ.get('RESUME_COMPILE', 'false')}", "scheduler.name=cosine", "--quiet"]
trainlab = [sys.executable, "-m", "trainlab"]

def train(run, *extra, wait=True, env=None):
    log = open(work / f"{run.name}.log", "a")
    proc = subprocess.Popen([*trainlab, *args, *extra, "--out", str(run)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    return proc.wait() if wait else proc

ref, run = work / "reference", work / "run"
t = time.time()
assert train(ref) == 0, (work / "reference.log").read_text()[-3000:]
print(f"uninterrupted run: {time.time() - t:.1f} s")
# The test-only fault hook (engine/checkpoint.py) pauses the first save that replaces last.pt (step 10,
# mid epoch 1) after writing its temp file: the process is killed there, inside a save, mid-epoch.
marker = work / "paused-in-save"
proc = train(run, wait=False, env={"TRAINLAB_FAULT_PAUSE_IN_SAVE": str(marker)})
deadline = time.time() + 60
while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
assert marker.exists() and proc.poll() is None, f"the run did not pause in a save (exit {proc.returncode})"
proc.send_signal(signal.SIGKILL)
proc.wait()
last = run / "checkpoints" / "last.pt"
killed_at = ckpt.load_checkpoint(last)
print(f"SIGKILL after last.pt at step {killed_at['global_step']} (epoch {killed_at['epoch'] + 1}, batch "
      f"{killed_at['loader']['position']} of 20); device {killed_at.get('device')}, CUDA RNG states: "
      f"{len(killed_at['rng'].get('cuda', []))}")
assert train(run, "--resume") == 0, (work / "run.log").read_text()[-3000:]
a = ckpt.load_checkpoint(ref / "checkpoints" / "last.pt")
b = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
same_weights = a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
def metrics(run):  # the final metrics without the timings (samples/s, data wait), which differ by run
    final = json.loads((run / "summary.json").read_text())["final"]
    return {split: {k: v for k, v in (values or {}).items() if k not in ("samples_per_second", "data_wait_fraction")}
            for split, values in final.items()}
fa, fb = metrics(ref), metrics(run)
result = {"killed_at_step": killed_at["global_step"], "killed_mid_epoch": killed_at["loader"]["position"] > 0,
          "bit_identical_weights": same_weights, "same_final_metrics": fa == fb, "final_uninterrupted": fa,
          "final_resumed": fb, "checkpoint_device": killed_at.get("device"),
          "cuda_rng_states": len(killed_at["rng"].get("cuda", []))}
(out / "kill_resume.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result, indent=1))
sys.exit(0 if same_weights and fa == fb and result["killed_mid_epoch"] else 1)
PYEOF
result "kill and resume (deterministic, $DEVICE)" "${PIPESTATUS[0]}"

# 3. The speed table (at most 220 s): MLP, CNN, ResNet-18; trainlab vs hand-written vs Lightning. Each
#    round prints its numbers as it ends, so a run cut short still leaves the rounds it finished.
timeout 220 $PY benchmarks/bench_gpu.py $BENCH_ARGS --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
result "bench_gpu" "${PIPESTATUS[0]}"

cat "$SUMMARY"
! grep -q FAILED "$SUMMARY"
