"""Running the command line in-process from tests."""
from __future__ import annotations

from instructedit import cli


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process (fast); returns (exit code, stdout, stderr)."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
