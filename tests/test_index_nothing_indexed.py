"""An index run where every file is refused says so and exits non-zero (issue 15)."""

from __future__ import annotations

from click.testing import CliRunner

from imgrec.cli import cli
from tests.support import make_inventory


def test_every_file_skipped_is_an_error_not_a_silent_empty_index(tmp_path, model):
    outside = tmp_path / "outside"
    make_inventory(outside, 3)
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    for i, image in enumerate(sorted(p for p in outside.rglob("*") if p.is_file())):
        (inventory / f"link-{i}{image.suffix}").symlink_to(image)  # each points outside the inventory
    (inventory / "notes.txt").write_text("not an image")
    args = ["index", "--inventory", str(inventory), "--model", str(model), "--index", str(tmp_path / "index")]

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 1, result.output
    assert "nothing could be indexed: all 4 files were skipped or failed" in result.output
    assert "symlink points outside the inventory" in result.output


def test_a_run_with_one_good_file_succeeds(tmp_path, model):
    inventory = tmp_path / "inventory"
    make_inventory(inventory, 1)
    (inventory / "notes.txt").write_text("not an image")
    args = ["index", "--inventory", str(inventory), "--model", str(model), "--index", str(tmp_path / "index")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
