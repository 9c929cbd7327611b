"""The README's Python example runs as written (under a fresh name)."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


def test_the_readme_example_runs(tmp_path, name):
    example = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert '"my-pool"' in example
    script = tmp_path / "example.py"
    script.write_text(example.replace('"my-pool"', repr(name)))
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)
