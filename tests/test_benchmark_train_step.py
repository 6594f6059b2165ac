"""benchmarks/train_step.py still runs and writes the summary the trainer issue asks for (tiny sizes: no timing
is judged here, only that every kind ran the planned number of rounds and the ratios are computed from them)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_train_step_benchmark_writes_its_summary(tmp_path):
    out = tmp_path / "ts.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks/train_step.py"), "--size", "8", "--batch", "4",
                    "--bank", "16", "--rounds", "1", "--extra-rounds", "2", "--steps", "1", "--students", "resnet18",
                    "--out", str(out)], check=True, capture_output=True, cwd=REPO)
    r = json.loads(out.read_text())
    res = r["results"]["resnet18"]
    assert {k: len(v) for k, v in res["all_seconds"].items()} == {
        "floor": 3, "cached": 3, "backbone_floor": 3, "live": 1, "teacher": 1}
    med = res["seconds_per_step"]
    assert r["summary"]["resnet18"]["cached_over_floor"] == med["cached"] / med["floor"]
    assert r["summary"]["resnet18"]["cached_over_backbone_floor"] == med["cached"] / med["backbone_floor"]
    assert len(res["cached_over_floor_by_round"]) == 3
    assert r["command"].endswith("--out " + str(out)) and r["setup"]["extra_rounds"] == 2
