"""How long `imgrec --help` takes, against the bare interpreter in the same run.

    python bench/cli_startup.py [--rounds 10] [--out bench/results/cli_startup.json]

Each round starts, one after the other, `python -c pass` (the floor: the interpreter and site)
and `imgrec --help` (the CLI as a user types it); medians over the rounds. Issue 15's target:
`imgrec --help` under 0.5 s, which holds only if nothing heavy (torch, FAISS, SQLAlchemy, ...)
is imported to print the help.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import median, results_path, write_json


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=str(results_path("cli_startup")))
    args = ap.parse_args()
    imgrec = str(Path(sys.executable).with_name("imgrec"))
    python, helps = [], []
    for _ in range(args.rounds):
        python.append(wall([sys.executable, "-c", "pass"]))
        helps.append(wall([imgrec, "--help"]))
    results = {
        "rounds": args.rounds,
        "python_s": round(median(python), 3),
        "imgrec_help_s": round(median(helps), 3),
        "target": "imgrec --help < 0.5 s",
    }
    results["met"] = results["imgrec_help_s"] < 0.5
    print(results)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
