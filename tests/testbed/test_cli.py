"""`paretopipe testbed` parts that need no root: listing, argument errors, help."""

from __future__ import annotations

from tests.conftest import run_cli


def test_shape_list_shows_the_named_conditions(tmp_path):
    out = run_cli("testbed", "shape", "--list")
    assert out.returncode == 0, out.stderr
    for line in ("lan (1gbit, 0.5 ms)", "wifi (50mbit, 5 ms ±1 ms)", "wan (10mbit, 50 ms)",
                 "congested (5mbit, 200 ms)"):
        assert line in out.stdout
    own = tmp_path / "c.yml"
    own.write_text("conditions:\n  mine: {rate: 3mbit, delay: 7ms, loss: 1%}\n")
    out = run_cli("testbed", "shape", "--list", "--conditions", str(own))
    assert out.stdout.strip() == "mine (3mbit, 7 ms, 1% loss)"


def test_argument_errors_are_one_line(tmp_path):
    out = run_cli("testbed", "shape", "--state-dir", str(tmp_path))
    assert out.returncode == 2 and out.stderr.startswith("paretopipe: error: say what to apply")
    out = run_cli("testbed", "shape", "--condition", "nope", "--state-dir", str(tmp_path))
    assert out.returncode == 2 and "unknown condition 'nope'" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("testbed", "shape", "--jitter", "9ms", "--delay", "1ms",
                  "--state-dir", str(tmp_path))
    assert out.returncode == 2 and "exceeds delay" in out.stderr


def test_bare_testbed_prints_help():
    out = run_cli("testbed")
    assert out.returncode == 2 and "up" in out.stdout and "check" in out.stdout
