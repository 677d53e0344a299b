"""`imgrec eval` end to end on a generated labelled set, with real FAISS and SQLite indexes.

A "perfect" encoder (the mean colour; each class is one colour) must score 1.0, and a random one
(a vector drawn from the image's bytes) near chance. The same indexes drive the report, the
stored figures, `imgrec info` and `imgrec duplicates`.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from encoder import Encoder, Preprocess, load_image, register_kind
from encoder.model_dir import save_model_dir
from imgrec.cli import cli
from indexer import open_snapshot, run_index
from indexer.evaluation import evaluate_index, save_eval_figures
from indexer.grids import save_result_grid
from indexer.info import generation_record
from indexer.report import write_report

COLOURS = {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210), "yellow": (220, 200, 30)}
PER_CLASS, QUERIES_PER_CLASS = 12, 6


class MeanColour(Encoder):
    """Perfect on the generated set: the mean colour, centred."""

    kind = "test-mean-colour"

    def __init__(self, state_dict: dict, config: dict, fingerprint: str):
        self.config, self.fingerprint = config, fingerprint
        self.preprocess = Preprocess.from_dict(config["preprocess"])
        self.dim = 3

    def _embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) - 0.5  # (B, 3)


class RandomVectors(MeanColour):
    """Knows nothing: a vector drawn from a seed taken from the image's pixels."""

    kind = "test-random"

    def __init__(self, state_dict: dict, config: dict, fingerprint: str):
        super().__init__(state_dict, config, fingerprint)
        self.dim = 16

    def _embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        seeds = [int.from_bytes(hashlib.sha256(row.numpy().tobytes()).digest()[:8], "little") for row in x]
        return torch.from_numpy(
            np.stack([np.random.default_rng(s).normal(size=16) for s in seeds]).astype("f4")
        )


register_kind(MeanColour.kind, MeanColour)
register_kind(RandomVectors.kind, RandomVectors)


def make_colour_set(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """inventory/<colour>/*.png and queries/<colour>/*.png: noisy squares of one colour per class."""
    rng = np.random.default_rng(seed)
    for folder, n in (("inventory", PER_CLASS), ("queries", QUERIES_PER_CLASS)):
        for name, rgb in COLOURS.items():
            (root / folder / name).mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.normal(0, 12, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / folder / name / f"{name}-{i:02d}.png")
    # an exact copy, for `imgrec duplicates`
    shutil.copy(root / "inventory/red/red-00.png", root / "inventory/red/red-copy.png")
    return root / "inventory", root / "queries"


def make_model(path: Path, kind: str) -> Path:
    config = {"kind": kind, "preprocess": Preprocess(image_size=16).to_dict(), "code_dim": 3}
    save_model_dir(path, {"unused": torch.zeros(1)}, config)
    return path


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("colours")
    inventory, queries = make_colour_set(root / "data")
    out = {"inventory": inventory, "queries": queries}
    for name, kind in (("perfect", MeanColour.kind), ("random", RandomVectors.kind)):
        run_index(inventory, make_model(root / f"model-{name}", kind), root / f"index-{name}")
        out[name] = root / f"index-{name}"
    return out


def test_perfect_encoder_scores_one(colour_set: dict[str, Path]):
    run = evaluate_index(colour_set["perfect"], colour_set["queries"], k=10)
    f = run.figures
    assert f["metrics"] == {"P@1": 1.0, "P@5": 1.0, "P@10": 1.0, "mAP@10": 1.0, "recall@10": 1.0}
    assert f["n_queries"] == 4 * QUERIES_PER_CLASS and f["n_inventory"] == 4 * PER_CLASS + 1
    assert f["chance"] == pytest.approx(0.25, abs=0.01)
    assert set(f["per_class"]) == set(COLOURS)
    assert all(v["P@5"] == 1.0 and v["queries"] == QUERIES_PER_CLASS for v in f["per_class"].values())
    # raw pixels are also perfect here (one colour per class): computed on the same images
    assert f["baseline"]["metrics"]["P@5"] == 1.0
    assert f["latency_ms"]["total_median"] > 0


def test_random_encoder_scores_near_chance(colour_set: dict[str, Path]):
    f = evaluate_index(colour_set["random"], colour_set["queries"], k=10, baseline_size=None).figures
    assert "baseline" not in f
    assert abs(f["metrics"]["P@5"] - f["chance"]) < 0.15
    assert abs(f["metrics"]["P@10"] - f["chance"]) < 0.15


def test_figures_are_stored_with_the_generation(colour_set: dict[str, Path], tmp_path: Path):
    index = tmp_path / "index"
    shutil.copytree(colour_set["perfect"], index)
    run = evaluate_index(index, colour_set["queries"], k=5, baseline_size=8)
    assert save_eval_figures(index, run.figures) == run.figures["generation_id"]
    snap = open_snapshot(index)
    try:
        assert snap.generation.eval_figures == run.figures
    finally:
        snap.close()
    assert generation_record(index)["eval_figures"]["metrics"]["P@5"] == 1.0


def test_report_is_self_contained(colour_set: dict[str, Path], tmp_path: Path):
    run = evaluate_index(colour_set["random"], colour_set["queries"], k=5, baseline_size=8)
    page = write_report(tmp_path / "report", run, colour_set["random"], n_grids=2)
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 1 + 1 + 2 + 2  # bars, t-SNE map, best, worst
    for name in ("per_class.png", "embedding_map.png", "best_1.png", "worst_2.png", "figures.json"):
        assert (tmp_path / "report" / name).is_file()


def test_result_grid_of_a_real_query(colour_set: dict[str, Path], tmp_path: Path):
    snap = open_snapshot(colour_set["perfect"])
    try:
        query = load_image(next((colour_set["queries"] / "blue").iterdir()))
        hits = snap.search_images(snap.encoder.preprocess.to_array(query)[None], k=4)[0]
        assert [h.item.label for h in hits] == ["blue"] * 4
        png = save_result_grid(tmp_path / "grid.png", query, hits, snap, thumb=48)
    finally:
        snap.close()
    with Image.open(png) as img:
        assert img.width == 4 * (48 + 6) + 6
        assert img.height > 2 * 48


def test_cli_eval_info_duplicates(colour_set: dict[str, Path], tmp_path: Path):
    index = tmp_path / "index"
    shutil.copytree(colour_set["random"], index)
    runner = CliRunner()
    r = runner.invoke(cli, ["eval", "--index", str(index), "--queries", str(colour_set["queries"]), "-k", "5",
                            "--baseline-size", "8"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "| model | P@1 | P@5 | mAP@5 | recall@5 |" in r.output

    r = runner.invoke(cli, ["info", str(index)])
    assert r.exit_code == 0, r.output
    assert "test-random" in r.output and "P@5" in r.output

    r = runner.invoke(
        cli, ["duplicates", "--index", str(index), "--threshold", "0.99", "--out", str(tmp_path / "d")]
    )
    assert r.exit_code == 0, r.output
    assert "1 groups, 2 items" in r.output and "red/red-copy.png" in r.output
    assert (tmp_path / "d" / "group-001.png").is_file()


def test_cli_eval_fails_clearly(colour_set: dict[str, Path], tmp_path: Path):
    (tmp_path / "q" / "unknown-label").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "q" / "unknown-label" / "x.png")
    r = CliRunner().invoke(
        cli, ["eval", "--index", str(colour_set["perfect"]), "--queries", str(tmp_path / "q")]
    )
    assert r.exit_code == 1
    assert "none of the query labels" in r.output
