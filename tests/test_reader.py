"""A reader in another process queries the index through many publishes, prunes and a rollback."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from imgrec.cli import cli
from indexer import IndexOptions, run_index
from tests.support import (
    forkserver,
    make_inventory,
    mutate_inventory,
    reader_loop,
)

pytestmark = pytest.mark.usefixtures("low_sql_variable_limit")


def test_reader_never_sees_an_error_or_a_mixed_generation(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 60)
    run_index(inventory, model, index)
    stop, out = tmp_path / "stop", tmp_path / "reader.json"

    reader = forkserver().Process(target=reader_loop, args=(str(index), str(stop), str(out)))
    reader.start()
    ready = tmp_path / "reader.json.ready"
    while not ready.exists() and reader.is_alive():
        time.sleep(0.05)

    rng = np.random.default_rng(0)
    seed, published = 1000, []
    opts = IndexOptions(batch_size=4, checkpoint_every=8, keep_generations=2)  # prunes under the reader
    for _ in range(4):
        seed = mutate_inventory(inventory, rng, seed, n=8)
        published += run_index(inventory, model, index, opts).published
    published += run_index(inventory, model, index, IndexOptions(full=True, keep_generations=2)).published
    assert CliRunner().invoke(cli, ["rollback", str(index)]).exit_code == 0
    published += run_index(inventory, model, index, opts).published
    stop.touch()
    reader.join(120)

    assert reader.exitcode == 0
    seen = json.loads(out.read_text())
    print(f"\nreader: {seen['queries']} queries over generations {sorted(map(int, seen['seen']))}")
    assert seen["errors"] == []
    assert len(published) >= 10
    assert len(seen["seen"]) >= 3  # it read through several publishes
    assert str(published[-1]) in seen["seen"]  # and ended on the newest
