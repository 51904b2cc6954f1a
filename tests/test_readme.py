"""The README's quick start runs as written."""

import pathlib
import re
import runpy

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = [line for block in bash for line in block.splitlines() if line.strip()]
    assert commands == ['pip install -e ".[dev]" && python -m experiments.quickstart',
                        'pip install -e ".[dev]" && python -m pytest -q']


def test_readme_quickstart_runs(tmp_path, capsys):
    blocks = python_blocks()
    assert blocks, "README has no python block"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 20
    path = tmp_path / "readme_quickstart.py"
    path.write_text(code)
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    loss = float(re.search(r"loss ([0-9.]+)", out).group(1))
    assert 0.0 < loss < 5.0, out          # a sane initial cross-entropy over 10 classes
    assert "85002 target params" in out


# README blocks whose run is long on 2 CPU cores (the HyperLSTM block: a 100-step scan compiled, an nn.RNN init;
# the continual-learning sequence and the LoRA walk-through, whose code tests/test_continual.py and
# tests/generators/test_lora*.py cover): they run in the slow profile only; every other later block by default.
SLOW_BLOCKS = ("R.hyperlstm_init(", "cl.train_sequence(", "hj.generators.factorised_apply(spec, hnet.factors")


def _check_outputs(out):
    """What the README's later blocks print."""
    assert "(32, 10)" in out                                         # per-sample logits
    assert "(5, 3) ['embedding', 'hyper'] True" in out                # a from_module generator, checked
    assert "nnx (3, 2)" in out and "equinox (3, 2)" in out             # NNX and Equinox targets, per example
    assert "10 (10,) 0 ['batch_stats']" in out                         # 10 steps per call with BatchNorm state
    assert "('same/bias', 'same/kernel') 80 of 160" in out           # one shared kernel after restore


def _run_blocks(blocks, tmp_path):
    for i, code in blocks:
        path = tmp_path / f"readme_block_{i}.py"
        path.write_text(code)
        runpy.run_path(str(path), run_name="__main__")


def test_readme_other_examples_run_fast_blocks(tmp_path, capsys):
    """The later python blocks but the SLOW_BLOCKS ones run as written, each on its own; their printed results."""
    blocks = [(i, b) for i, b in enumerate(python_blocks()) if i > 0 and not any(s in b for s in SLOW_BLOCKS)]
    assert len(blocks) >= 5, "README lost the examples this test checks"
    _run_blocks(blocks, tmp_path)
    out = capsys.readouterr().out
    _check_outputs(out)


@pytest.mark.slow   # every block, the long ones too; the fast-blocks test above runs by default
def test_readme_other_examples_run(tmp_path, capsys):
    """Every later python block of the README runs as written, on its own."""
    blocks = python_blocks()[1:]
    assert blocks, "README has only the quick start block"
    assert sum(any(s in b for s in SLOW_BLOCKS) for b in blocks) == len(SLOW_BLOCKS)   # the markers still match
    for i, code in enumerate(blocks):
        path = tmp_path / f"readme_block_{i + 1}.py"
        path.write_text(code)
        runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    _check_outputs(out)
    assert "after the last task:" in out                                # hj.continual's task sequence
    assert re.search(r"\(8, 12, 16\) \d+ True", out)                  # per-example LoRA logits, plain export
