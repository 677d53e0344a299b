"""Damage at rest gives one clear line, a distinct exit code and the next step, from every command
(issue 10, items 6 and 7); `imgrec verify --repair` repairs what can be repaired.

Real indexes are damaged in real ways (`tests/support.py`), then the real commands run: through
click's CliRunner in this process, and `imgrec serve` as a subprocess (it must exit, not serve).
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from imgrec.cli import cli
from imgrec.exit_codes import ExitCode
from indexer import current_generation_id, run_index
from tests.support import (
    KINDS,
    copy_index,
    damage,
    fill,
    imgrec_command,
    make_inventory,
    make_model_dir,
    remove_model_copy,
)


@dataclasses.dataclass(frozen=True)
class Built:
    inventory: Path
    model: Path
    index: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, model) -> Built:
    """An index with two generations: 20 items, then 5 more (a new segment only the second lists)."""
    root = tmp_path_factory.mktemp("damage")
    make_inventory(root / "inventory", 20)
    run_index(root / "inventory", model, root / "index")
    make_inventory(root / "inventory", 5, start=100)
    assert run_index(root / "inventory", model, root / "index").generation_id == 2
    return Built(root / "inventory", model, root / "index")


@pytest.fixture
def index(built: Built, tmp_path: Path) -> Path:
    """A private copy of the built index."""
    copy_index(built.index, tmp_path / "index")
    return tmp_path / "index"


def command(name: str, built: Built, index: Path) -> list[str]:
    query_image = next((built.inventory / "mugs").iterdir())
    return {
        "index": ["index", "--inventory", str(built.inventory), "--model", str(built.model), "--index", str(index)],
        "query": ["query", "--index", str(index), str(query_image)],
        "eval": ["eval", "--index", str(index), "--queries", str(built.inventory), "--baseline-size", "0"],
        "info": ["info", str(index)],
        "status": ["status", str(index)],
        "rollback": ["rollback", str(index)],
        "compact": ["compact", str(index)],
        "duplicates": ["duplicates", "--index", str(index)],
        "verify": ["verify", str(index)],
        "serve": ["serve", "--index", str(index), "--port", "0"],
    }[name]  # fmt: skip


COMMANDS = (
    "index",
    "query",
    "eval",
    "info",
    "status",
    "rollback",
    "compact",
    "duplicates",
    "verify",
    "serve",
)

SEGMENT, CATALOG, MODEL = ExitCode.SEGMENT_DAMAGED, ExitCode.CATALOG_DAMAGED, ExitCode.MODEL_COPY_MISSING
EXPECTED = {  # (kind, command) -> exit code; the others: the kind's code
    ("segment-bytes", "rollback"): ExitCode.OK,  # rollback is a way out: to generation 1, intact
    ("segment-truncated", "rollback"): ExitCode.OK,
    ("model-missing", "index"): ExitCode.OK,  # the run restores the copy from --model
}
KIND_CODE = {
    "segment-bytes": SEGMENT,
    "segment-truncated": SEGMENT,
    "catalog": CATALOG,
    "model-missing": MODEL,
}


def next_step(kind: str, index: Path) -> str:
    if kind == "catalog":
        return f"imgrec verify {index}"
    if kind == "model-missing":
        return f"imgrec verify --repair --model MODEL_DIR {index}"
    return f"imgrec verify --repair {index}"


def run(args: list[str], in_thread: bool = False) -> Result:
    """The command through click's runner. `in_thread` (serve): in a thread, so that a command that
    wrongly starts serving makes the test fail instead of hanging it."""
    if in_thread:
        box: list[Result] = []
        worker = threading.Thread(target=lambda: box.append(CliRunner().invoke(cli, args)), daemon=True)
        worker.start()
        worker.join(timeout=300)
        assert box, f"`imgrec {' '.join(args)}` did not exit (it serves a damaged index)"
        result = box[0]
    else:
        result = CliRunner().invoke(cli, args)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_command_on_every_damage(kind: str, name: str, built: Built, index: Path):
    damage(index, kind)
    want = EXPECTED.get((kind, name), KIND_CODE[kind])
    result = run(command(name, built, index), in_thread=name == "serve")
    check_outcome(kind, name, index, want, result.exit_code, result.stdout, result.stderr)


def test_serve_exits_on_damage_real_command(built: Built, index: Path):
    """The installed `imgrec serve` on a damaged index says why and exits: it does not serve it."""
    damage(index, "segment-bytes")
    done = subprocess.run(
        imgrec_command() + command("serve", built, index), capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    check_outcome("segment-bytes", "serve", index, SEGMENT, done.returncode, done.stdout, done.stderr)


def check_outcome(kind: str, name: str, index: Path, want: int, code: int, out: str, err: str) -> None:
    """The exit code, and: one "Error:" line with the next step (verify: its problems and verdict),
    or for the commands that repair, what they did."""
    assert code == want, (out, err)
    if want == ExitCode.OK:
        assert (
            "restored the model copy" in out if kind == "model-missing" else "moved damaged segments/" in out
        )
        return
    step = next_step(kind, index)
    if name == "verify":  # one line per problem, then the verdict with the way to repair
        (verdict,) = [line for line in err.splitlines() if line.startswith("damaged: ")]
        assert out.startswith("problem: ")
        assert (step if kind != "catalog" else "restore catalog.sqlite from a backup") in verdict
        return
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and step in errors[0], err


def test_a_healthy_index_verifies(index: Path):
    result = run(["verify", str(index)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        f"ok: {index} verified: generation 2, 2 current or kept generations, 2 segment files"
    )


@pytest.mark.parametrize("kind", ["segment-bytes", "segment-truncated"])
def test_repair_rolls_back_to_the_newest_intact_generation(kind: str, built: Built, index: Path):
    damaged = damage(index, kind)
    evidence = damaged.read_bytes()
    result = run(["verify", "--repair", str(index)])
    assert result.exit_code == 0, result.output
    assert "repair: rolled back from damaged generation 2 to generation 1 (20 items)" in result.stdout
    (moved,) = (index / "damaged").iterdir()
    assert f"repair: moved damaged segments/{damaged.name} to damaged/{moved.name}" in result.stdout
    assert moved.read_bytes() == evidence  # kept, not deleted
    assert current_generation_id(index) == 1
    assert run(["verify", str(index)]).exit_code == 0
    assert run(command("query", built, index)).exit_code == 0
    again = run(command("index", built, index))  # the 5 files of the damaged generation come back
    assert again.exit_code == 0 and "added 5," in again.stdout, again.output
    assert run(["verify", str(index)]).exit_code == 0


@pytest.mark.parametrize("source", ["--model", "recorded"])
def test_repair_restores_the_model_copy(source: str, built: Built, index: Path):
    remove_model_copy(index)
    args = ["verify", "--repair", str(index)] + (["--model", str(built.model)] if source == "--model" else [])
    result = run(args)
    assert result.exit_code == 0, result.output
    assert "repair: restored the model copy models/" in result.stdout
    assert f"from {built.model.resolve() if source == 'recorded' else built.model}" in result.stdout
    assert run(command("query", built, index)).exit_code == 0


def test_repair_refuses_another_model(built: Built, index: Path, tmp_path: Path):
    remove_model_copy(index)
    other = make_model_dir(tmp_path / "other", seed=1)
    result = run(["verify", "--repair", "--model", str(other), str(index)])
    assert result.exit_code == MODEL, result.output
    assert "cannot restore the model copy from" in result.stdout and "the index needs" in result.stdout
    assert not list((index / "models").iterdir())


def test_repair_leaves_a_damaged_catalog_as_it_is(index: Path):
    catalog = damage(index, "catalog")
    before = catalog.read_bytes()
    result = run(["verify", "--repair", str(index)])
    assert result.exit_code == CATALOG, result.output
    assert "repair: the catalog is damaged: nothing repaired" in result.stdout
    assert catalog.read_bytes() == before


def test_repair_with_no_intact_generation_changes_nothing(index: Path):
    shared = index / "segments" / "000001.faiss"  # listed by both generations
    with open(shared, "r+b") as f:
        f.truncate(100)
    result = run(["verify", "--repair", str(index)])
    assert result.exit_code == SEGMENT, result.output
    assert "no kept generation is intact: nothing rolled back" in result.stdout
    assert current_generation_id(index) == 2 and shared.stat().st_size == 100


def test_rollback_refuses_a_damaged_target(built: Built, index: Path):
    with open(index / "segments" / "000001.faiss", "r+b") as f:
        f.truncate(100)
    result = run(["rollback", str(index)])
    assert result.exit_code == SEGMENT, result.output
    assert "generation 1: segment segments/000001.faiss is 100 bytes" in result.stderr
    assert current_generation_id(index) == 2


def test_every_command_on_a_full_disk(built: Built, small_disk: Path):  # noqa: F811 - the fixture
    """A full disk: SQLite cannot even create its WAL files to open the catalog. Every command says
    so in one line and exits 74; nothing changes."""
    index = small_disk / "index"
    copy_index(built.index, index)
    filler = fill(small_disk)
    try:
        for name in COMMANDS:
            result = run(command(name, built, index), in_thread=name == "serve")
            assert result.exit_code == ExitCode.STORAGE, (name, result.output)
            errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
            assert len(errors) == 1 and "disk full while opening the catalog" in errors[0], (
                name,
                result.stderr,
            )
    finally:
        filler.unlink()
    assert current_generation_id(index) == 2
    assert run(["verify", str(index)]).exit_code == 0


def test_a_full_rebuild_replaces_a_damaged_generation(built: Built, index: Path):
    damaged = damage(index, "segment-truncated")
    args = command("index", built, index) + ["--full"]
    rebuilt = run(args)
    assert rebuilt.exit_code == 0 and "published generation 3" in rebuilt.stdout, rebuilt.output
    assert run(["verify", str(index)]).exit_code == SEGMENT  # kept generation 2 still lists the file
    repaired = run(["verify", "--repair", str(index)])
    assert repaired.exit_code == 0, repaired.output
    assert "kept generation 2 has damaged files: no longer a rollback target (pruned)" in repaired.stdout
    assert f"moved damaged segments/{damaged.name} to damaged/" in repaired.stdout
    assert current_generation_id(index) == 3 and run(["verify", str(index)]).exit_code == 0
