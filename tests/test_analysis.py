"""PCA, silhouette and the transformed-gradient analysis (``analyze``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from instructedit import cli
from instructedit.data import load_records
from instructedit.editing.editor import Editor
from instructedit.evaluate.analysis import (
    GradientFeatures,
    analyze,
    analyze_features,
    collect_features,
    pca_2d,
    silhouette,
    silhouette_by_label,
)
from instructedit.model.backbone import load_backbone

DATA = Path(__file__).parent / "data"


def clusters(spread: float, seed: int = 0, n: int = 30, dim: int = 10) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:3] * 10
    points = np.concatenate([c + spread * rng.standard_normal((n, dim)) for c in centres])
    return points, [name for name in ("a", "b", "c") for _ in range(n)]


def test_silhouette_high_for_separated_low_for_mixed_clusters():
    separated, labels = clusters(0.1)
    assert silhouette(separated, labels) > 0.9
    rng = np.random.default_rng(1)
    mixed = rng.standard_normal((90, 10))
    assert abs(silhouette(mixed, labels)) < 0.1


def test_silhouette_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    points, labels = clusters(3.0, seed=2)
    assert silhouette(points, labels) == pytest.approx(metrics.silhouette_score(points, labels), abs=1e-9)


def test_silhouette_by_label_finds_the_cluster_that_stands_apart():
    rng = np.random.default_rng(3)
    far = rng.standard_normal((20, 2)) * 0.1 + 50
    mixed = rng.standard_normal((40, 2))
    per = silhouette_by_label(np.concatenate([far, mixed]), ["far"] * 20 + ["x", "y"] * 20)
    assert per["far"] > 0.9 and abs(per["x"]) < 0.3 and abs(per["y"]) < 0.3


def test_silhouette_needs_two_clusters():
    with pytest.raises(ValueError):
        silhouette(np.zeros((3, 2)), ["a", "a", "a"])


def test_pca_finds_the_main_directions():
    rng = np.random.default_rng(0)
    x = np.zeros((200, 5))
    x[:, 2] = 10 * rng.standard_normal(200)
    x[:, 4] = 3 * rng.standard_normal(200)
    x += 0.01 * rng.standard_normal((200, 5))
    coords, ratio = pca_2d(x)
    assert coords.shape == (200, 2)
    assert ratio[0] > 0.85 and ratio.sum() > 0.99
    assert abs(np.corrcoef(coords[:, 0], x[:, 2])[0, 1]) > 0.99


def test_pca_equals_the_svd_projection_up_to_the_sign_of_each_component():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    coords, ratio = pca_2d(x)
    expected = centred @ vt[:2].T
    signs = np.sign((coords * expected).sum(axis=0))
    np.testing.assert_allclose(coords * signs, expected, atol=1e-10)
    np.testing.assert_allclose(ratio, (s**2)[:2] / (s**2).sum(), atol=1e-12)
    # degenerate inputs: one row, or no spread at all
    assert pca_2d(x[:1])[0].shape == (1, 2) and not pca_2d(np.ones((5, 3)))[1].any()


def test_analyze_features_of_separated_clusters_and_figure(tmp_path):
    points, labels = clusters(0.2)
    result = analyze_features(GradientFeatures(points, labels, "m"), "ed", True, tmp_path / "f.png")
    assert result.silhouette_full > 0.9 and result.silhouette_2d > 0.9
    assert result.n_per_task == {"a": 30, "b": 30, "c": 30}
    assert Path(result.figure).read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def backbone(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


def test_features_of_an_editor(backbone):
    records = load_records(DATA / "easyedit_cf.json") + load_records(DATA / "convsent.json")[:3]
    editor = Editor.untrained(backbone, 0.1, normalize=False)
    feats = collect_features(editor, records, batch_size=4)
    in_dim, out_dim = editor.network.module_shapes[editor.module_names[-1]]
    assert feats.features.shape == (6, in_dim + out_dim)
    assert feats.module == editor.module_names[-1]
    # each half is a unit vector
    assert np.allclose(np.linalg.norm(feats.features[:, :in_dim], axis=1), 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(feats.features[:, in_dim:], axis=1), 1, atol=1e-4)
    result = analyze(editor, records, batch_size=4)
    assert -1 <= result.silhouette_2d <= 1 and result.figure is None
    with pytest.raises(ValueError):
        collect_features(editor, records, module="model.embed_tokens")


def test_analyze_command_writes_png(capsys, tiny_llama_dir, backbone, tmp_path):
    from tests.data.layout import make_data_dir

    data = make_data_dir(tmp_path / "data")
    Editor.untrained(backbone, 0.1).save_pretrained(tmp_path / "editor")
    out = tmp_path / "pca.png"
    try:
        code = cli.main(["analyze", "--model", str(tiny_llama_dir), "--editor", str(tmp_path / "editor"),
                         "--data", str(data), "--limit", "3", "--out", str(out), "--json",
                         "--no-instructions"])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["use_instructions"] is False and out.read_bytes()[:4] == b"\x89PNG"
    assert set(result["n_per_task"]) == {"counterfact", "recent", "convsent", "zsre"}
