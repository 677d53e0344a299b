"""The CLI end to end in a temporary folder: train, index, query --json, query --out, status."""

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from encoder import load_image
from imgrec.cli import cli
from indexer import open_snapshot
from indexer.grids import result_grid


@pytest.fixture(scope="module")
def built(tmp_path_factory, catalog):
    """Train and index through the CLI once for this module."""
    tmp = tmp_path_factory.mktemp("cli")
    inventory, queries = catalog.inventory, catalog.queries
    runner = CliRunner()
    train = runner.invoke(
        cli,
        ["train", "--images", str(inventory), "--model", "conv-ae", "--out", str(tmp / "model"),
         "--image-size", "32", "--epochs", "3", "--seed", "1"],
    )  # fmt: skip
    assert train.exit_code == 0, train.output
    index = runner.invoke(
        cli,
        [
            "index",
            "--inventory",
            str(inventory),
            "--model",
            str(tmp / "model"),
            "--index",
            str(tmp / "index"),
        ],
    )
    assert index.exit_code == 0, index.output
    return tmp, inventory, queries, train.output, index.output


def test_train_and_index_report_what_they_did(built):
    tmp, inventory, _, train_out, index_out = built
    assert "fingerprint" in train_out and (tmp / "model" / "model.safetensors").is_file()
    n = len(list(inventory.rglob("*.jpg")))
    assert f"added {n}," in index_out and "published generation 1" in index_out


def test_query_json(built):
    tmp, _, queries, *_ = built
    result = CliRunner().invoke(
        cli, ["query", str(queries), "--index", str(tmp / "index"), "-k", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    answers = json.loads(result.output)
    assert len(answers) == len(list(queries.rglob("*.jpg")))
    for a in answers:
        assert a["error"] is None and a["score_kind"] == "similarity"
        assert [r["rank"] for r in a["results"]] == [1, 2, 3, 4]
        scores = [r["score"] for r in a["results"]]
        assert scores == sorted(scores, reverse=True)


def test_query_out_writes_grids_of_the_right_size(built, tmp_path):
    tmp, _, queries, *_ = built
    q = sorted(queries.rglob("*.jpg"))[0]
    result = CliRunner().invoke(
        cli, ["query", str(q), "--index", str(tmp / "index"), "-k", "3", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1 and "grid:" in result.output
    snap = open_snapshot(tmp / "index")
    image = load_image(q)
    expected = result_grid(
        image, snap.search_images(snap.encoder.preprocess.to_array(image)[None], k=3)[0], snap
    )
    snap.close()
    with Image.open(pngs[0]) as im:
        assert im.size == expected.size


def test_query_label_filter_and_bad_query(built, tmp_path):
    tmp, _, queries, *_ = built
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    q = sorted(queries.rglob("*.jpg"))[0]
    result = CliRunner().invoke(
        cli, ["query", str(q), str(bad), "--index", str(tmp / "index"), "--label", "rugs", "--json"]
    )
    assert result.exit_code == 0, result.output
    good, broken = json.loads(result.output)
    assert {r["label"] for r in good["results"]} == {"rugs"}
    assert broken["results"] == [] and "not a recognised image" in broken["error"]


def test_index_with_another_model_is_refused(built, tmp_path):
    tmp, inventory, *_ = built
    runner = CliRunner()
    other = tmp_path / "other"
    runner.invoke(cli, ["train", "--images", str(inventory), "--model", "conv-ae", "--out", str(other),
                        "--image-size", "32", "--epochs", "1", "--seed", "2"])  # fmt: skip
    result = runner.invoke(
        cli, ["index", "--inventory", str(inventory), "--model", str(other), "--index", str(tmp / "index")]
    )
    assert result.exit_code == 1 and "--full" in result.output


def test_status_lists_generation(built):
    tmp, *_ = built
    result = CliRunner().invoke(cli, ["status", str(tmp / "index")])
    assert result.exit_code == 0, result.output
    assert "generation 1" in result.output and "embedded" in result.output


def test_missing_index_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["query", str(tmp_path), "--index", str(tmp_path)])
    assert result.exit_code != 0 and "Error" in result.output


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
