"""The README's Python example runs as written (under a fresh name) and
type-checks under `mypy --strict` against the shipped stubs, which
`stubtest` finds true to the module."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


def _block(pattern, *markers):
    text = re.search(pattern, README.read_text(), re.S).group(1)
    for marker in markers:
        assert marker in text, marker
    return text


# The README's Python examples: how to find each, and the segment names it
# uses (replaced by fresh ones when it runs).
EXAMPLES = {
    "allocator": (lambda: _block(r"## Python\n.*?```python\n(.*?)```", '"my-pool"'), ["my-pool"]),
    "arrays": (
        lambda: _block(r"## Python\n.*?```python\n.*?```.*?```python\n(.*?)```", '"my-arrays"', "heap.ndarray"),
        ["my-arrays"],
    ),
    "queue": (
        lambda: _block(r"```python\n(import multiprocessing\n\nimport shmkit\n.*?)```", '"my-jobs"', "shmkit.Queue"),
        ["my-jobs", "my-done"],
    ),
    "dict": (
        lambda: _block(r"```python\n(import multiprocessing\n\nimport shmkit\n\n\ndef count_words.*?)```", '"my-counts"', "shmkit.Dict"),
        ["my-counts"],
    ),
}


@pytest.mark.parametrize("which", sorted(EXAMPLES))
def test_the_readme_example_runs(tmp_path, name, which):
    if which == "arrays":
        pytest.importorskip("numpy")
    find, names = EXAMPLES[which]
    text = find()
    for index, segment in enumerate(names):
        text = text.replace(f'"{segment}"', repr(f"{name}-{index}"))
    script = tmp_path / f"readme_{which}_example.py"
    script.write_text(text)
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)


@pytest.mark.parametrize("which", sorted(EXAMPLES))
def test_the_readme_example_passes_mypy_strict(tmp_path, which):
    pytest.importorskip("mypy", reason="mypy is not installed (scripts/test installs it)")
    script = tmp_path / f"readme_{which}_example.py"
    script.write_text(EXAMPLES[which][0]())
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stubs_match_the_module():
    pytest.importorskip("mypy", reason="mypy is not installed (scripts/test installs it)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "shmkit"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
