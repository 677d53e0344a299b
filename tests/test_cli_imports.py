"""`imgrec --help` stays fast: importing the CLI loads none of the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "torch",
    "faiss",
    "numpy",
    "onnxruntime",
    "sqlalchemy",
    "alembic",
    "PIL",
    "flask",
    "encoder",
    "indexer",
)


def test_the_cli_imports_nothing_heavy_to_print_its_help():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from imgrec.cli import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported for --help: {out.stdout.strip()}"
