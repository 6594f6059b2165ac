"""Teacher agreement (agree10 / agree1): its two anchor values, a brute-force reference, and the column it adds to
`compress-cache eval --compare-cache` and `compress-cache report`."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.evaluation.agreement import teacher_agreement
from stages.cli import main
from pipeline.runtime.errors import CompressError
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone
from pipeline.runtime.provenance import sha256_file
from tests.train_fixtures import make_tiny


def _split(x, n_train):
    return x[:n_train], x[n_train:]


def _brute(s_train, s_val, t_train, t_val, k):
    def knn(a, b):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return np.argsort(-(b.astype(np.float64) @ a.T.astype(np.float64)), axis=1, kind="stable")[:, :k]
    s, t = knn(s_train, s_val), knn(t_train, t_val)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(s, t)]
    return float(np.mean(overlap)), float(np.mean(s[:, 0] == t[:, 0]))


def test_identical_features_agree_fully_whatever_their_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12)).astype(np.float32)
    train, val = _split(x, 500)
    a = teacher_agreement(train, val, 3.0 * train, 3.0 * val)  # cosine: the scale is irrelevant
    assert a["agree10"] == 1.0 and a["agree1"] == 1.0 and a["k"] == 10


def test_unrelated_features_agree_by_chance_only():
    # k of N training rows fall in the teacher's k by chance: agree10 ~ k / N = 0.05, agree1 ~ 1 / N = 0.005
    rng = np.random.default_rng(1)
    n_train, n_val = 200, 3000
    s = rng.normal(size=(n_train + n_val, 16)).astype(np.float32)
    t = rng.normal(size=(n_train + n_val, 24)).astype(np.float32)  # another width too: only ids are compared
    a = teacher_agreement(*_split(s, n_train), *_split(t, n_train))
    assert abs(a["agree10"] - 10 / n_train) < 0.012, a  # a position-wise count (~1/N) or a union (~2) fails
    assert a["agree1"] < 0.02, a


def test_matches_a_brute_force_count_on_related_features():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(460, 8)).astype(np.float32)
    s = t + 0.6 * rng.normal(size=t.shape).astype(np.float32)  # a noisy student: partial agreement
    args = (*_split(s, 400), *_split(t, 400))
    for k in (1, 5, 10):
        a = teacher_agreement(*args, k=k)
        ref10, ref1 = _brute(*args, k)
        assert a["agree10"] == pytest.approx(ref10, abs=1e-12) and a["agree1"] == pytest.approx(ref1, abs=1e-12)
    assert 0.1 < teacher_agreement(*args)["agree10"] < 0.95  # neither trivial end


def test_mismatched_rows_are_one_line_errors():
    x = np.ones((10, 4), np.float32)
    with pytest.raises(CompressError, match="different images: train 10 vs 9"):
        teacher_agreement(x, x, x[:9], x)


def test_eval_and_report_show_the_agreement_with_the_teachers_cache(tmp_path):
    d = make_tiny(tmp_path)  # 200 digits, a random ResNet-18 teacher t.pt, its cache t1.zarr
    other = tmp_path / "other.pt"
    save_model(other, build_backbone("resnet18", small_input=True, seed=7), default_preprocessing(8))
    metrics, runner = tmp_path / "metrics", CliRunner()
    common = ["--data", str(d / "data"), "--probe-epochs", "1", "--device", "cpu"]
    for name, model in (("self", d / "t.pt"), ("other", other)):
        r = runner.invoke(main, ["eval", *common, "--model", str(model), "--out", str(metrics / f"{name}.json"),
                                 "--compare-cache", str(d / "t1.zarr")])
        assert r.exit_code == 0, r.output
        assert "agree10" in r.output
    r = runner.invoke(main, ["eval", *common, "--random-init", "resnet18", "--small-input",
                             "--out", str(metrics / "random.json")])
    assert r.exit_code == 0, r.output
    own, far = (json.loads((metrics / f"{n}.json").read_text()) for n in ("self", "other"))
    # the teacher's own network against its cache: the same neighbours (fp16 rounding may swap a tie)
    assert own["agree10"] > 0.9 and own["agree1"] > 0.9
    assert far["agree10"] < own["agree10"] - 0.2
    against = own["agreement"]["against"]
    assert against["weights_sha256"] == sha256_file(d / "t.pt") and len(against["shards_sha256"]) == 64
    assert "agree10" not in json.loads((metrics / "random.json").read_text())

    r = runner.invoke(main, ["report", "--metrics", str(metrics), "--out", str(tmp_path / "summary.md")])
    assert r.exit_code == 0, r.output
    head, rows = r.output.splitlines()[0].split(), {line.split()[0]: line.split() for line in r.output.splitlines()[2:]}
    assert head[-2:] == ["agree10", "agree1"]
    assert rows["self"][-2] == f"{own['agree10']:.3f}" and rows["random"][-2:] == ["-", "-"]
    md = (tmp_path / "summary.md").read_text()
    assert "| agree10 | agree1 |" in md and f"| {far['agree10']:.3f} | {far['agree1']:.3f} |" in md


def test_a_missing_compare_cache_fails_before_the_evaluation(tmp_path):
    r = CliRunner().invoke(main, ["eval", "--data", str(tmp_path), "--random-init", "resnet18",
                                  "--out", str(tmp_path / "m.json"), "--compare-cache", str(tmp_path / "no.zarr")])
    assert r.exit_code == 1 and "no.zarr" in r.output and "Traceback" not in r.output
