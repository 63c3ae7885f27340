"""The README's Python examples run as written (documentation that cannot silently rot)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
    printed = capsys.readouterr().out
    if "pixel_metrics" in BLOCKS[index]:
        assert "'auroc': 75.0" in printed and "'fpr95': 50.0" in printed
    if "build_scorer" in BLOCKS[index]:
        assert "torch.Size([1, 128, 256])" in printed
