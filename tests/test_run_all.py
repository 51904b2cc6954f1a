"""benchmarks.run_all: the JSON schema of a smoke run (not its timings), goals, markdown, helpers, the import
graph of benchmarks/ (no cycle, public hyperjax names only); and the training-step fix the benchmarks found
(hyperjax.training.global_norm)."""

import ast
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperjax as hj
from benchmarks import _common, _problem, _report, _steps, _timing, case_chunked, case_dense, run_all, scaling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KEYS = {"name", "framework", "median_ms", "min_ms", "max_ms", "repeats", "ratio", "ratio_to"}
GOAL_KEYS = {"name", "value", "op", "target", "passed", "note"}


# ---------------------------------------------------------------- smoke run, schema
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`run_all --quick --cases 1,3` with 3 repeats, torch made unimportable: (payload, out_dir, stdout)."""
    out = tmp_path_factory.mktemp("run_all")
    code = ("import sys\n"   # as if torch were not installed: its import raises ImportError
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('No module named torch')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from benchmarks.run_all import main\n"
            f"main(['--quick', '--cases', '1,3', '--repeats', '3', '--warmup', '1', '--out-dir', {str(out)!r}])")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "run_all_quick.json") as f:
        return json.load(f), out, proc.stdout


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_smoke_schema(smoke):
    payload, out, _ = smoke
    assert {"benchmark", "environment", "command", "config", "torch", "cases", "goals", "wall_s"} <= set(payload)
    assert payload["benchmark"] == "run_all_quick"
    assert payload["config"]["quick"] and payload["config"]["cases"] == [1, 3]
    assert set(payload["cases"]) == {"1_dense", "3_per_sample"}
    for case in payload["cases"].values():
        assert {"title", "rows", "columns", "goals", "notes"} <= set(case)
        for r in case["rows"]:
            assert ROW_KEYS <= set(r), r["name"]
            assert r["repeats"] >= 3 and r["median_ms"] > 0
        for g in case["goals"]:
            assert set(g) == GOAL_KEYS
    assert len(payload["goals"]) == sum(len(c["goals"]) for c in payload["cases"].values())
    assert (out / "run_all_quick.md").exists()
    assert not (out / "RESULTS.md").exists()  # quick runs leave RESULTS.md alone


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_smoke_missing_torch_is_reported(smoke):
    payload, _, stdout = smoke
    assert payload["torch"]["available"] is False
    assert payload["torch"]["note"].startswith("torch not installed: PyTorch rows skipped")
    frameworks = {r["framework"] for c in payload["cases"].values() for r in c["rows"]}
    assert frameworks == {"jax"}
    torch_goals = [g for g in payload["goals"] if "hypnettorch" in g["name"] or "bmm" in g["name"]]
    assert torch_goals and all(g["passed"] is None and g["value"] is None for g in torch_goals)
    assert "torch not installed" in stdout


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_smoke_dense_rows_and_ratio(smoke):
    payload, _, _ = smoke
    case = payload["cases"]["1_dense"]
    rows = {r["name"]: r for r in case["rows"]}
    hand, lib = rows[_steps.HAND], rows[_steps.lib_name("dense")]
    assert hand["ratio"] == pytest.approx(1.0)
    assert lib["ratio"] == pytest.approx(lib["median_ms"] / hand["median_ms"])
    assert lib["trainable_params"] == 759_418   # the same hypernetwork as hypnettorch's HMLP
    firsts = {r["first_loss"] for r in case["rows"]}
    assert max(firsts) - min(firsts) < 1e-5      # same hparams, same computation on every JAX row
    goal = case["goals"][0]
    assert goal["value"] == pytest.approx(lib["ratio"]) and goal["passed"] == (lib["ratio"] <= 1.05)
    default = case["goals"][1]
    want = rows[_steps.lib_name("dense", default=True)]["median_ms"] / rows[_steps.HAND_NORM]["median_ms"]
    assert default["value"] == pytest.approx(want)


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_smoke_dense_steps_per_call_rows(smoke):
    """make_step(steps_per_call=k) and the hand-written lax.scan at the quick k values: rows named by k, timed
    per call and reported per step, same first loss, the summary and goals (no torch: speedups unmeasured)."""
    payload, _, _ = smoke
    case = payload["cases"]["1_dense"]
    rows = {r["name"]: r for r in case["rows"]}
    ks = case_dense.STEPS_PER_CALL["quick"]
    assert rows[_steps.lib_name("dense")]["steps_per_call"] == rows[_steps.HAND]["steps_per_call"] == 1
    for k in ks:
        for name in (_steps.multi_lib_name("dense", k), _steps.multi_hand_name(k)):
            r = rows[name]
            assert f"k={k}" in name and r["steps_per_call"] == k and ROW_KEYS <= set(r)
            assert r["call_median_ms"] == pytest.approx(k * r["median_ms"])
            assert r["call_min_ms"] == pytest.approx(k * r["min_ms"])
            assert r["ratio"] == pytest.approx(r["median_ms"] / rows[_steps.HAND]["median_ms"])
            assert r["first_loss"] == pytest.approx(rows[_steps.HAND]["first_loss"], abs=1e-5)  # call 0: batch 0
    summary = case["steps_per_call"]
    assert summary["ks"] == [1, *ks]
    per_step = {int(k): v for k, v in summary["hyperjax_ms_per_step"].items()}
    assert per_step == {1: rows[_steps.lib_name("dense")]["median_ms"],
                        **{k: rows[_steps.multi_lib_name("dense", k)]["median_ms"] for k in ks}}
    assert summary["best_k"] == min(per_step, key=per_step.get)
    assert summary["speedup_vs_k1"] == pytest.approx(per_step[1] / per_step[summary["best_k"]])
    assert summary["speedup_vs_hypnettorch_fastest"] is None and summary["speedup_vs_plain_pytorch_fused"] is None
    goals = {g["name"]: g for g in case["goals"]}
    for k in ks:
        g = goals[f"hyperjax make_step k={k} / hand-written JAX lax.scan k={k} (per step)"]
        want = rows[_steps.multi_lib_name("dense", k)]["median_ms"] / rows[_steps.multi_hand_name(k)]["median_ms"]
        assert g["value"] == pytest.approx(want) and g["passed"] == (want <= 1.05)
    best = goals["hypnettorch (fastest Adam) / hyperjax at its best k, per step"]
    assert best["value"] is None and best["passed"] is None
    text = "\n".join(_report.render(payload, "CPU"))
    assert f"| {_steps.multi_lib_name('dense', ks[-1])} | {ks[-1]} |" in text


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_smoke_per_sample_agrees_with_loop(smoke):
    payload, _, _ = smoke
    checks = payload["cases"]["3_per_sample"]["checks"]
    assert all(v < 1e-4 for v in checks.values()), checks
    assert payload["cases"]["3_per_sample"]["modulation"]["available"] in (True, False)


# ---------------------------------------------------------------- layout of benchmarks/
def benchmark_imports() -> dict[str, set[str]]:
    """{module: every module it imports, at top level or inside a function} for benchmarks/*.py."""
    graph = {}
    for path in glob.glob(os.path.join(REPO, "benchmarks", "*.py")):
        name, found = os.path.splitext(os.path.basename(path))[0], set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = found
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle among the benchmarks modules (as a list of names), or None."""
    edges = {m: {i.split(".")[1] for i in imps if i.startswith("benchmarks.") and i.split(".")[1] in graph}
             for m, imps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n] if n in stack else [m, n]
            if n not in state and (cycle := visit(n, stack + [n])):
                return cycle
        state[m] = 2
        return None

    return next((c for m in sorted(edges) if m not in state and (c := visit(m, [m]))), None)


def test_benchmarks_import_graph_has_no_cycle():
    graph = benchmark_imports()
    assert {"run_all", "scaling", "case_dense", "_common"} <= set(graph)
    assert find_cycle(graph) is None, find_cycle(graph)
    # the check itself finds a cycle when there is one
    assert find_cycle({**graph, "_common": graph["_common"] | {"benchmarks.run_all"}}) is not None


def test_benchmarks_use_only_public_hyperjax_and_no_experiments():
    for module, imports in benchmark_imports().items():
        bad = sorted(i for i in imports if i.split(".")[0] == "experiments" or i.startswith("hyperjax._src"))
        assert not bad, f"benchmarks/{module}.py imports {bad}"


# ---------------------------------------------------------------- helpers
@pytest.mark.parametrize("value,op,target,passed", [
    (1.0, "<=", 1.05, True), (1.2, "<=", 1.05, False), (3.5, ">=", 3.0, True), (2.0, ">=", 3.0, False),
    (None, ">=", 3.0, None),
])
def test_goal(value, op, target, passed):
    assert _report.goal("g", value, op, target)["passed"] is passed


def test_goal_rejects_unknown_op():
    with pytest.raises(ValueError, match="op must be '<=' or '>='"):
        _report.goal("g", 1.0, "<", 1.0)


@pytest.mark.parametrize("argv,message", [
    (["--cases", "7"], "choose from"), (["--cases", "a,b"], "expected numbers"), (["--device", "tpu"], "invalid choice"),
])
def test_parse_args_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        run_all.parse_args(argv)
    assert message in capsys.readouterr().err


def test_parse_args_and_config():
    args = run_all.parse_args(["--quick", "--cases", "3,1,3", "--no-torch"])
    assert args.cases == [1, 3] and args.quick and args.no_torch
    cfg = run_all.make_config(True, warmup=1, repeats=2)
    assert cfg["fast"] == (1, 2) and cfg["slow"] == (1, 2) and cfg["adam"] == run_all.CONFIGS["quick"]["adam"]


def test_no_torch_flag():
    mod, note = run_all.load_torch(no_torch=True, device="cpu")
    assert mod is None and "PyTorch rows skipped" in note


def test_chunked_flops_match_reference_estimate():
    """The anchors' common.flops_B for the chunked case: 1473.71 MFLOP per step, 263 chunks."""
    f = case_chunked.chunked_flops(_problem.CHUNKED_DIMS, _problem.CHUNK)
    assert f["step"] / 1e6 == pytest.approx(1473.71, abs=0.01)
    assert f["hnet_fwd"] / 1e6 == pytest.approx(216.29, abs=0.01)


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_render_markdown(smoke, tmp_path):
    payload, _, _ = smoke
    text = "\n".join(_report.render(payload, "CPU"))
    assert "### 1. Dense hypernetwork" in text and "### Goals" in text
    assert f"| {_steps.lib_name('dense')} |" in text and "n/a" in text
    (tmp_path / "run_all.json").write_text(json.dumps(payload))
    path = _report.write_results_md(str(tmp_path), str(tmp_path / "RESULTS.md"))
    assert "## CPU" in open(path).read() and "## GPU" not in open(path).read()


def test_walk_finds_nested_numbers():
    found = dict(_common.walk_numbers({"a": {"speedup": 6.5, "ok": True}, "b": [1], "c": 2}))
    assert found == {"a.speedup": 6.5, "c": 2.0}


@pytest.mark.parametrize("n", [10_000, 100_000, 1_000_000, 10_000_000])
def test_scaling_width_hits_target_size(n):
    w = scaling.width_for(n)
    assert abs(_problem.target_params((64, w, w, 10)) - n) / n < 0.02


def test_scaling_run_small(tmp_path):
    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in _common.digits_batches(32)[:2]]
    result = scaling.run(quick=True, reps=(0, 2), batches=batches, key=jax.random.key(0), out_dir=str(tmp_path),
                         sizes=(1_000,))
    assert {r["generator"] for r in result["rows"]} == {"dense", "chunked"}
    for r in result["rows"]:
        assert r["peak_mb"] is None or r["peak_mb"] > 0
        assert r["trainable_params"] > 0 and r["median_ms"] > 0
    assert sorted(os.path.basename(p) for p in result["pngs"]) == ["scaling_memory_quick.png", "scaling_time_quick.png"]
    assert all(os.path.getsize(p) > 0 for p in result["pngs"])


def test_torch_per_sample_bmm_matches_vmap():
    pytest.importorskip("torch")
    from benchmarks import torch_cases

    runner = torch_cases.Runner("cpu", _common.digits_batches(_problem.PER_SAMPLE_N)[:2])
    conds = np.random.default_rng(0).normal(size=(_problem.PER_SAMPLE_N, _problem.EMB)).astype(np.float32)
    entries, checks = torch_cases.case_per_sample(runner, _problem.DENSE_DIMS, _problem.EMB, _problem.HIDDEN, conds)
    assert checks["max_abs_diff_torch_vmap_vs_bmm"] < 1e-4
    rows = _timing.measure(entries, warmup=0, repeats=2, rounds=2)
    assert [r["name"] for r in rows] == ["torch.func.vmap + functional_call", "torch hand-batched bmm"]
    assert all(r["repeats"] == 2 and r["framework"] == "torch" for r in rows)


# ---------------------------------------------------------------- hyperjax.training.global_norm (fix)
@pytest.mark.parametrize("shapes", [[(3,)], [(100, 75)], [(2049,), (7,)], [(33, 40), (0,), (5, 1, 3)]],
                         ids=["tiny", "2d", "ragged-rows", "mixed"])
def test_global_norm_matches_optax(shapes, maybe_jit):
    keys = jax.random.split(jax.random.key(0), len(shapes))
    tree = {f"l{i}": jax.random.normal(k, s) for i, (k, s) in enumerate(zip(keys, shapes))}
    np.testing.assert_allclose(maybe_jit(hj.training.global_norm)(tree), optax.global_norm(tree), rtol=1e-5)


def test_global_norm_mixed_dtypes():
    tree = {"a": jnp.full((1500,), 2.0, jnp.bfloat16), "b": jnp.full((4,), 1.0, jnp.float32)}
    assert float(hj.training.global_norm(tree)) == pytest.approx(np.sqrt(1500 * 4 + 4), rel=1e-5)


def test_make_step_grad_norm_is_the_gradient_norm(tiny_mlp_spec, key):
    gen = hj.generators.dense(tiny_mlp_spec, cond_dim=2, hidden=4, num_conds=1)
    x, y = jnp.ones((6, 5)), jnp.arange(6, dtype=jnp.int32) % 3

    def loss_fn(params, batch, rng):
        logits = tiny_mlp_spec.apply(gen.apply(params, 0), batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    hparams = jax.jit(gen.init)(key)
    want = optax.global_norm(jax.jit(jax.grad(loss_fn))(hparams, (x, y), None))
    for jit in (False, True):
        state = hj.training.init_state(hparams, optax.sgd(0.1), key)
        _, metrics = hj.training.make_step(loss_fn, optax.sgd(0.1), jit=jit)(state, (x, y))
        np.testing.assert_allclose(metrics["grad_norm"], want, rtol=1e-5)


def test_device_gpu_without_a_gpu_is_a_clear_error():
    """`--device gpu` on a machine whose JAX has no GPU stops before running anything, saying why."""
    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU: the GPU path runs instead")
    with pytest.raises(SystemExit, match="--device gpu: JAX sees no GPU.*nothing was run"):
        run_all.setup_jax("gpu")
