"""Helpers for tests that run a command as its own process."""


def assert_one_line_error(proc, *needles):
    """An expected failure: exit status 2, no traceback, one ``error: …`` line on stderr that
    contains every needle."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
