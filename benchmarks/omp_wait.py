"""Does `OMP_WAIT_POLICY=passive` slow CPU training? One training step of each study student, both ways.

The Fashion-MNIST study's docs once advised `OMP_WAIT_POLICY=passive` for every command, to keep idle OpenMP
threads from spinning on a shared 2-core machine. This measures what it costs when the machine is not shared:
for each student, SGD steps (forward, a stand-in loss, backward, update) on a batch of 128 random 40 px images
through `build_backbone`, as the study trains them, 2 torch threads, in a fresh process per policy (the policy
is read once, when OpenMP starts). Reported: images/s, cores used (process CPU seconds over wall seconds), and
passive over default measured in the same run.

    .venv/bin/python benchmarks/omp_wait.py            # ~1 min on a quiet machine -> results/omp_wait.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pipeline.runtime.provenance import provenance  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "omp_wait.json"
STUDENTS = ("resnet18_w16", "shufflenet_v2_x0_5")

CHILD = """
import sys, time, json, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads(2)
from pipeline.models.backbones import build_backbone
net = build_backbone({arch!r}, seed=0)
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x = torch.randn({batch}, 3, 40, 40, generator=torch.Generator().manual_seed(0))
def step():
    opt.zero_grad(); net(x).square().mean().backward(); opt.step()
for _ in range(3):
    step()
t, c = time.perf_counter(), time.process_time()
for _ in range({steps}):
    step()
wall = time.perf_counter() - t
print(json.dumps({{"img_per_s": {steps} * {batch} / wall, "cores": (time.process_time() - c) / wall}}))
"""


def one(arch: str, policy: str | None, steps: int, batch: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    code = CHILD.format(repo=str(REPO), arch=arch, steps=steps, batch=batch)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15, help="timed steps per measurement (after 3 warm-up steps)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians are reported")
    a = ap.parse_args()
    if a.steps < 1 or a.rounds < 1:
        ap.error(f"--steps {a.steps} --rounds {a.rounds}: give 1 or more of each")
    load = os.getloadavg()
    result = {"students": {}}
    for arch in STUDENTS:
        runs = {"default": [], "passive": []}
        for _ in range(a.rounds):
            for name, policy in (("default", None), ("passive", "PASSIVE")):
                runs[name].append(one(arch, policy, a.steps, 128))
                print(f"{arch:20s} {name:8s} {runs[name][-1]['img_per_s']:7.0f} img/s "
                      f"{runs[name][-1]['cores']:4.2f} cores", flush=True)
        med = {k: sorted(r["img_per_s"] for r in v)[len(v) // 2] for k, v in runs.items()}
        result["students"][arch] = {"rounds": runs, "median_img_per_s": med,
                                    "passive_over_default": med["passive"] / med["default"]}
    result.update({"batch": 128, "input_px": 40, "torch_threads": 2, "loadavg_before": load,
                   "loadavg_after": os.getloadavg(),
                   "command": ".venv/bin/python benchmarks/omp_wait.py" + "".join(f" {x}" for x in sys.argv[1:]),
                   "provenance": provenance({k: str(v) for k, v in vars(a).items()})})
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print({k: round(v["passive_over_default"], 2) for k, v in result["students"].items()}, "->", RESULTS)


if __name__ == "__main__":
    main()
