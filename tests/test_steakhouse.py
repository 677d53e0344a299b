"""The original example must reproduce: mean P@5 over the 3 steakhouse queries >= 0.5."""

import pytest

from imgrec.steakhouse import run_steakhouse
from tests.support import SHARED_DATASETS

STEAKHOUSE = SHARED_DATASETS / "steakhouse"


@pytest.mark.skipif(
    not STEAKHOUSE.is_dir(),
    reason=f"the steakhouse dataset is not at {STEAKHOUSE} (it lives in ../shared/datasets)",
)
def test_steakhouse_precision_at_5(tmp_path):
    result = run_steakhouse(STEAKHOUSE, tmp_path, seed=0)
    print(f"steakhouse P@5 per query: {result.per_query}, mean {result.p_at_5:.2f}")
    assert len(result.answers) == 3 and all(len(a.hits) == 5 for a in result.answers)
    assert result.p_at_5 >= 0.5
