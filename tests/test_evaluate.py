"""End to end on a tiny store: the eval stage, its keyed feature cache, refusals, figures, report and CLI."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import stages.evaluate as ev
from stages.cli import main
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import write_image_store
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone
from stages.evaluate import EvaluateConfig, evaluate
from stages.report import ReportConfig, report

FAST = dict(probe_epochs=2, batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def store(module_dir):
    rng = np.random.default_rng(0)
    n = 48
    labels = np.arange(n) % 3
    images = (rng.integers(0, 60, (n, 8, 8, 1)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    root = module_dir
    m = write_image_store(root, images, labels, (np.arange(n) % 4 == 3).astype(np.uint8),
                          [f"x{i}" for i in range(n)], dataset="tiny", classes=["a", "b", "c"], source="test")
    return root, m["fingerprint"]


def _model(path, fingerprint, seed):
    save_model(path, build_backbone("resnet18", small_input=True, seed=seed), default_preprocessing(8),
               data_fingerprint=fingerprint, method="test")
    return path


def test_random_init_writes_flat_metrics_and_reuses_its_features(store, tmp_path, monkeypatch):
    data, _ = store
    cfg = EvaluateConfig(data=data, out=tmp_path / "m" / "random.json", random_init="resnet18", small_input=True,
                         **FAST)
    m = evaluate(cfg)
    saved = json.loads(cfg.out.read_text())
    for key in ("nn", "knn20", "linear", "ca"):
        assert isinstance(saved[key], float) and 0 <= saved[key] <= 100
    assert saved["name"] == "random" and saved["source"]["kind"] == "random-init"
    assert saved["protocols"]["knn"]["k"] == 20 and saved["protocols"]["ca"]["reported_score"] == "precision"
    assert "git_sha" in saved["provenance"]
    monkeypatch.setattr(ev, "embed_blocks", lambda *a, **k: pytest.fail("features were recomputed"))
    assert evaluate(cfg)["nn"] == m["nn"]  # same key: the fp16 features on disk, same numbers


def test_features_are_never_reused_across_models(store, tmp_path):
    data, fp = store
    out = tmp_path / "s.json"
    evaluate(EvaluateConfig(data=data, out=out, model=_model(tmp_path / "a.pt", fp, 1), **FAST))
    a = np.load(tmp_path / "s.features.npy")
    evaluate(EvaluateConfig(data=data, out=out, model=_model(tmp_path / "b.pt", fp, 2), **FAST))
    b = np.load(tmp_path / "s.features.npy")
    assert not np.array_equal(a, b)
    key = json.loads((tmp_path / "s.features.npy.key").read_text())
    assert key["data_fingerprint"] == fp and len(key["model_sha256"]) == 64


def test_refusals_name_the_value(store, tmp_path):
    data, fp = store
    wrong = _model(tmp_path / "w.pt", "f" * 64, 1)
    with pytest.raises(CompressError, match=f"ffffffffffff.*{fp[:12]}"):
        evaluate(EvaluateConfig(data=data, out=tmp_path / "w.json", model=wrong, **FAST))
    with pytest.raises(CompressError, match="missing.pt"):
        evaluate(EvaluateConfig(data=data, out=tmp_path / "x.json", model=tmp_path / "missing.pt"))
    with pytest.raises(CompressError, match="exactly one"):
        evaluate(EvaluateConfig(data=data, out=tmp_path / "x.json", model=wrong, random_init="resnet18"))


def test_teacher_cache_uses_view_zero(store, tmp_path, monkeypatch):
    data, fp = store
    import cache.load
    n = 48
    z = torch.nn.functional.normalize(torch.randn(n, 2, 16), dim=2)
    z[:, 0, :3] += 5 * torch.nn.functional.one_hot(torch.arange(n) % 3, 3)  # only view 0 knows the classes
    z = torch.nn.functional.normalize(z, dim=2).half()
    (tmp_path / "t.zarr").mkdir()

    def fake_load(path, expect_fingerprint=None):
        assert expect_fingerprint == fp
        return z, {"teacher": {"arch": "fake"}}
    monkeypatch.setattr(cache.load, "load_embeddings", fake_load)
    m = evaluate(EvaluateConfig(data=data, out=tmp_path / "teacher.json", cache=tmp_path / "t.zarr", **FAST))
    assert m["source"]["kind"] == "teacher" and m["nn"] == 100.0 and m["knn20"] == 100.0


def test_figures_and_report(store, tmp_path):
    data, fp = store
    metrics = tmp_path / "metrics"
    evaluate(EvaluateConfig(data=data, out=metrics / "r.json", random_init="resnet18", small_input=True, **FAST))
    evaluate(EvaluateConfig(data=data, out=metrics / "s.json", model=_model(tmp_path / "s.pt", fp, 3),
                            figures=tmp_path / "fig", compare_model=tmp_path / "s.pt", grid_queries=3,
                            grid_k=2, **FAST))
    for name in ("s_confusion.png", "s_retrieval.png"):
        assert (tmp_path / "fig" / name).read_bytes()[:4] == b"\x89PNG"
    table = report(ReportConfig(metrics=metrics, out=metrics / "summary.md"))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["model", "kind", "NN"] and lines[2].startswith("s ")  # students first
    assert "| s | student |" in (metrics / "summary.md").read_text()


def test_retrieval_grid_frames_each_neighbour_by_whether_its_label_matches_the_query():
    from pipeline.evaluation.figures import GREEN, GREY, RED, _rgb, compose_grid
    images = np.stack([np.full((8, 8, 1), 10 * i, dtype=np.uint8) for i in range(6)])
    labels = np.array([0, 0, 1, 1, 0, 1])
    # query 0 (label 0): A's neighbours 1 (same label) and 2 (other), B's neighbours 3 (other) and 4 (same)
    canvas, col_x, _ = compose_grid(images, labels, np.array([0]), np.array([[1, 2]]), np.array([[3, 4]]))
    frames = [tuple(canvas[0, x]) for x in col_x]  # the top-left pixel of each tile is its frame
    assert frames == [tuple(_rgb(c)) for c in (GREY, GREEN, RED, RED, GREEN)]
    inside = [int(canvas[10, x + 10, 0]) for x in col_x]  # 8 px digits are drawn 4x, inside the 2 px frame
    assert inside == [0, 10, 20, 30, 40]


def test_figures_alone_draw_the_models_own_retrieval_grid(store, tmp_path):
    from pipeline.evaluation.figures import GREEN, GREY, RED, _rgb, compose_grid
    data, _ = store
    r = CliRunner().invoke(main, ["eval", "--data", str(data), "--random-init", "resnet18", "--small-input",
                                  "--out", str(tmp_path / "r.json"), "--figures", str(tmp_path / "fig"),
                                  "--probe-epochs", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    grid = tmp_path / "fig" / "r_retrieval.png"
    assert grid.read_bytes()[:4] == b"\x89PNG"
    assert str(grid) in json.loads((tmp_path / "r.json").read_text())["figures"]
    # without a reference the grid is the query and one block of neighbours
    images = np.stack([np.full((8, 8, 1), 10 * i, dtype=np.uint8) for i in range(3)])
    canvas, col_x, _ = compose_grid(images, np.array([0, 0, 1]), np.array([0]), np.array([[1, 2]]))
    assert len(col_x) == 3 and canvas.shape[1] == col_x[-1] + (8 * 4 + 4)
    assert [tuple(canvas[0, x]) for x in col_x] == [tuple(_rgb(c)) for c in (GREY, GREEN, RED)]


def test_cli_help_and_one_line_errors(store, tmp_path):
    runner = CliRunner()
    for sub in ("eval", "report"):
        r = runner.invoke(main, [sub, "--help"])
        assert r.exit_code == 0 and "Example" in r.output
    r = runner.invoke(main, ["eval", "--data", str(store[0]), "--model", str(tmp_path / "nope.pt"),
                             "--out", str(tmp_path / "n.json")])
    assert r.exit_code == 1 and "nope.pt" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["report", "--metrics", str(tmp_path / "none")])
    assert r.exit_code == 1 and "does not exist" in r.output
