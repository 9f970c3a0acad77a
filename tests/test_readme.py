"""Every ```python block of README.md runs as written, each on its own in a fresh
interpreter (as a reader pastes it), on whatever device the machine has.

A block that cannot run here is skipped only when the line right before its
opening fence is `<!-- readme-test: skip: <reason> -->` (the reason is shown
in the skip); no block carries it today. Code in the README (fenced blocks
and `inline code`) uses the ASCII minus, so that it survives copy-paste.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


def fenced_blocks(text):
    """(language, first line number, code, skip reason or None) of each fenced block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i].strip())
        if not opening:
            i += 1
            continue
        before = lines[i - 1] if i else ""
        skip = SKIP.search(before)
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        indent = len(lines[i]) - len(lines[i].lstrip())
        code = "\n".join(line[indent:] for line in lines[i + 1:end])
        blocks.append((opening.group(1), i + 2, code, skip.group(1) if skip else None))
        i = end + 1
    return blocks


PYTHON_BLOCKS = [b for b in fenced_blocks(README.read_text()) if b[0] == "python"]


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 4, "the README's examples were not found (fence parsing broken?)"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"README.md:{b[1]}" for b in PYTHON_BLOCKS])
def test_readme_python_block_runs(block, tmp_path):
    _, line, code, skip = block
    if skip:
        pytest.skip(skip)
    script = tmp_path / f"readme_line_{line}.py"
    script.write_text(code + "\n")
    # Run outside the repository: from its root, Python would import the
    # unbuilt source folder instead of the installed package.
    env = dict(os.environ, PYTHONPATH="")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (
        f"README.md block at line {line} failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")


def test_readme_code_uses_ascii_minus():
    text = README.read_text()
    code = [b[2] for b in fenced_blocks(text)] + re.findall(r"`([^`\n]+)`", text)
    bad = [c for c in code if "\u2212" in c]
    assert not bad, f"Unicode minus (U+2212) in README code, breaks copy-paste: {bad}"
