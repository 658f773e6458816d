"""What the CLI test files share: run ``emssl`` in-process, and check a one-line error."""

from __future__ import annotations

from napari_emssl import cli


def run(capsys, *argv):
    """``emssl ARGV`` in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *words: str) -> None:
    """stderr is one ``emssl: error: ...`` line (no traceback) holding every one of ``words``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("emssl: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, err)
