"""The README's Python example runs as written (under a fresh name) and
type-checks under `mypy --strict` against the shipped stubs, which
`stubtest` finds true to the module."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


def example():
    text = re.search(r"## Python\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert '"my-pool"' in text
    return text


def arrays_example():
    text = re.search(r"## Python\n.*?```python\n.*?```.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert '"my-arrays"' in text and "heap.ndarray" in text
    return text


def test_the_readme_arrays_example_runs(tmp_path, name):
    pytest.importorskip("numpy")
    script = tmp_path / "arrays.py"
    script.write_text(arrays_example().replace('"my-arrays"', repr(name)))
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)


def test_the_readme_arrays_example_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (scripts/test installs it)")
    script = tmp_path / "arrays.py"
    script.write_text(arrays_example())
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def queue_example():
    text = re.search(r"```python\n(import multiprocessing\n\nimport shmkit\n.*?)```", README.read_text(), re.S).group(1)
    assert '"my-jobs"' in text and "shmkit.Queue" in text
    return text


def test_the_readme_queue_example_runs(tmp_path, name):
    script = tmp_path / "queue_example.py"
    script.write_text(
        queue_example().replace('"my-jobs"', repr(name + "-jobs")).replace('"my-done"', repr(name + "-done"))
    )
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)


def test_the_readme_queue_example_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (scripts/test installs it)")
    script = tmp_path / "queue_example.py"
    script.write_text(queue_example())
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_example_runs(tmp_path, name):
    script = tmp_path / "example.py"
    script.write_text(example().replace('"my-pool"', repr(name)))
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)


def test_the_readme_example_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (scripts/test installs it)")
    script = tmp_path / "example.py"
    script.write_text(example())
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
