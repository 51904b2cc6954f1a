"""Error-message table: bad input raises an error whose text names the offending leaf path, shape or option
(STYLE.md section 4). Calls that fail at trace time get zero-filled hparams from `jax.eval_shape(gen.init)`, so
nothing here compiles a generator."""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import hyperjax as hj

G = hj.generators
X = jnp.ones((2, 5), jnp.float32)
PATHS = r"Dense_0/bias, Dense_0/kernel, Dense_1/bias, Dense_1/kernel"


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(use_running_average=False)(nn.Dense(4)(x))


class Ctx:
    """Shared objects: generators over tiny_mlp_spec and zero hparams shaped by their init."""

    def __init__(self, spec):
        self.spec = spec
        self.vec = G.dense(spec, cond_dim=3, hidden=4)
        self.ids = G.chunked(spec, cond_dim=3, chunk_size=5, hidden=4, num_conds=4)
        self.part = G.dense(spec, cond_dim=3, hidden=4, where="*/kernel")
        self.hp = {name: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                      jax.eval_shape(getattr(self, name).init, jax.random.key(0)))
                   for name in ("vec", "ids", "part")}
        self.params = spec.zeros()

    def apply(self, name, cond, hparams=None):
        return getattr(self, name).apply(self.hp[name] if hparams is None else hparams, cond)

    def with_direct(self, **leaves):
        """The partial generator's hparams with hparams["direct"] replaced by {"Dense_i": {"bias": leaf}}."""
        return {**self.hp["part"], "direct": {k: {"bias": v} for k, v in leaves.items()}}

    def swap(self, path, value):
        """self.params with the leaf "layer/name" replaced, unchecked."""
        layer, name = path.split("/")
        return {**self.params, layer: {**self.params[layer], name: value}}


@pytest.fixture(scope="module")
def ctx(tiny_mlp_spec):
    return Ctx(tiny_mlp_spec)


def _row(id_, fn, exc, match):
    return pytest.param(fn, exc, match, id=id_)


CASES = [
    # ------------------------------------------------------------------ conditioning input (shape, dtype, id)
    _row("cond-wrong-dim", lambda c: c.apply("vec", jnp.ones(4)), ValueError,
         r"generators.dense: conditioning input `cond` must have shape \(3,\) \(cond_dim=3\), got \(4,\)\.$"),
    _row("cond-batch-axis", lambda c: c.apply("vec", jnp.ones((2, 3))), ValueError,
         r"got \(2, 3\)\. A leading batch axis was given: use hyperjax.per_sample\(...\) or jax.vmap"),
    _row("cond-wrong-rank", lambda c: c.apply("vec", jnp.ones((1, 1, 3))), ValueError,
         r"must have shape \(3,\) \(cond_dim=3\), got \(1, 1, 3\)\.$"),
    _row("cond-integer-vector", lambda c: c.apply("vec", jnp.ones(3, jnp.int32)), TypeError,
         r"generators.dense: conditioning input `cond` must be floating point, got int32\. For integer task ids "
         r"build the generator with num_conds=N"),
    _row("cond-id-without-num_conds", lambda c: c.apply("vec", jnp.int32(1)), ValueError,
         r"must have shape \(3,\) \(cond_dim=3\), got \(\)\. An integer id was given, but this generator was "
         r"built without `num_conds`: build it with num_conds=N"),
    _row("cond-python-int-without-num_conds", lambda c: c.apply("vec", 2), ValueError,
         r"got \(\)\. An integer id was given, but this generator was built without `num_conds`"),
    _row("id-given-a-vector", lambda c: c.apply("ids", jnp.ones(3)), ValueError,
         r"generators.chunked: this generator was built with num_conds=4, so `cond` must be an integer id of "
         r"shape \(\), got shape \(3,\) dtype float32"),
    _row("id-given-a-float", lambda c: c.apply("ids", jnp.float32(1.0)), ValueError,
         r"num_conds=4, so `cond` must be an integer id of shape \(\), got shape \(\) dtype float32"),
    _row("id-batch", lambda c: c.apply("ids", jnp.array([0, 1], jnp.int32)), ValueError,
         r"got shape \(2,\) dtype int32\. For per-example ids use jax.vmap"),
    _row("id-too-large", lambda c: c.apply("ids", jnp.int32(4)), ValueError,
         r"generators.chunked: conditioning id 4 out of range \[0, 4\)"),
    _row("id-negative", lambda c: c.apply("ids", -1), ValueError, r"conditioning id -1 out of range \[0, 4\)"),
    # ------------------------------------------------------------------ factory options
    _row("cond_dim-missing", lambda c: G.dense(c.spec), ValueError,
         r"generators.dense: `cond_dim` is required"),
    _row("cond_dim-zero", lambda c: G.chunked(c.spec, cond_dim=0, chunk_size=4), ValueError,
         r"generators.chunked: `cond_dim` must be a positive int, got 0"),
    _row("chunk_size-missing", lambda c: G.chunked(c.spec, cond_dim=3), ValueError,
         r"generators.chunked: `chunk_size` is required"),
    _row("chunk_size-zero", lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=0), ValueError,
         r"generators.chunked: `chunk_size` must be a positive int, got 0\."),
    _row("chunk_size-negative", lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=-5), ValueError,
         r"`chunk_size` must be a positive int, got -5\."),
    _row("chunk_size-float", lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=2.5), ValueError,
         r"`chunk_size` must be a positive int, got 2\.5\."),
    _row("chunk_size-bool", lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=True), ValueError,
         r"`chunk_size` must be a positive int, got True\."),
    _row("chunk_emb_dim-zero", lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=4, chunk_emb_dim=0), ValueError,
         r"`chunk_emb_dim` must be a positive int, got 0\."),
    _row("hidden-zero-width", lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=4, hidden=(8, 0)), ValueError,
         r"generators.chunked: `hidden` must be a positive int, got 0\."),
    _row("hidden-negative-width", lambda c: G.dense(c.spec, cond_dim=3, hidden=-2), ValueError,
         r"generators.dense: `hidden` must be a positive int, got -2\."),
    _row("hidden-not-a-sequence", lambda c: G.dense(c.spec, cond_dim=3, hidden=None), ValueError,
         r"`hidden` must be a sequence of positive ints, got None"),
    _row("num_conds-zero", lambda c: G.dense(c.spec, cond_dim=3, num_conds=0), ValueError,
         r"`num_conds` must be a positive int, got 0\."),
    _row("init-unknown-dense", lambda c: G.dense(c.spec, cond_dim=3, init="he"), ValueError,
         r"generators.dense: unknown `init`='he'; valid options are 'hyperfan_in', 'hyperfan_out'\."),
    _row("init-unknown-chunked", lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=4, init="fan_in"), ValueError,
         r"generators.chunked: unknown `init`='fan_in'; valid options are 'hyperfan_in', 'hyperfan_out'\."),
    _row("target-not-a-spec", lambda c: G.dense(BNNet(), cond_dim=3), TypeError,
         r"generators.dense: `target` must be a TargetSpec \(from hyperjax.targets.from_linen, .*got BNNet"),
    # ------------------------------------------------------------------ `where` (partial generation)
    _row("where-glob-matches-nothing", lambda c: G.dense(c.spec, cond_dim=3, where="*/w"), ValueError,
         r"generators.dense: `where`='\*/w' matches no leaf of the target\. Available paths: " + PATHS + "$"),
    _row("where-list-matches-nothing", lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=4, where=["enc/*", "kernel"]), ValueError,
         r"generators.chunked: `where`='enc/\*', 'kernel' matches no leaf of the target\. Available paths: " + PATHS),
    _row("where-predicate-matches-nothing", lambda c: G.dense(c.spec, cond_dim=3, where=lambda p, leaf: leaf.ndim == 3),
         ValueError, r"`where`=<lambda> matches no leaf of the target\. Available paths: " + PATHS),
    _row("where-bad-type", lambda c: G.dense(c.spec, cond_dim=3, where=3), TypeError,
         r"`where` must be a glob string, a list of globs or a \(path, leaf\) -> bool predicate, got int"),
    _row("partial-without-where", lambda c: G.partial(G.dense, c.spec, where=None, cond_dim=3), ValueError,
         r"generators.partial: `where` is required"),
    # ------------------------------------------------------------------ hparams given to apply
    _row("hparams-not-a-dict", lambda c: c.apply("part", jnp.ones(3), [c.hp["part"]]), ValueError,
         r"generators.dense: hparams must be the dict returned by init\(key\) with a 'direct' entry"),
    _row("hparams-direct-missing-leaf",
         lambda c: c.apply("part", jnp.ones(3), c.with_direct(Dense_1=jnp.zeros(3))), ValueError,
         r"generators.dense: hparams\['direct'\] lacks ordinary parameters: missing Dense_0/bias$"),
    _row("hparams-direct-wrong-shape",
         lambda c: c.apply("part", jnp.ones(3), c.with_direct(Dense_0=jnp.zeros(7), Dense_1=jnp.zeros(4))),
         ValueError, r"generators.dense: leaf 'Dense_1/bias' expected \(3,\) float32, got \(4,\) float32\."),
    # ------------------------------------------------------------------ generator output / target apply
    _row("output-missing-leaf",
         lambda c: c.spec.check({"Dense_0": c.params["Dense_0"], "Dense_1": {"kernel": jnp.zeros((7, 3))}}),
         ValueError, r"TargetSpec.check: params tree does not match the target \(missing: Dense_1/bias\)"),
    _row("output-first-differing-leaf",
         lambda c: c.spec.check(c.spec.unflatten(jnp.zeros(c.spec.size)) | {
             "Dense_0": {"kernel": jnp.zeros((7, 5)), "bias": jnp.zeros(8)}}),
         ValueError, r"TargetSpec.check: leaf 'Dense_0/bias' expected \(7,\) float32, got \(8,\) float32\."),
    _row("apply-extra-leaf", lambda c: c.spec.apply({**c.params, "Dense_2": {"kernel": jnp.zeros((3, 1))}}, X),
         ValueError, r"TargetSpec.apply: params tree does not match the target \(unexpected: Dense_2/kernel\)"),
    _row("apply-wrong-shape", lambda c: c.spec.apply(c.swap("Dense_0/kernel", jnp.zeros((5, 8))), X),
         ValueError, r"TargetSpec.apply: leaf 'Dense_0/kernel' expected \(5, 7\) float32, got \(5, 8\) float32\. "
                     r"The spec was built from a linen target"),
    _row("apply-wrong-dtype", lambda c: c.spec.apply(c.swap("Dense_1/bias", jnp.zeros(3, jnp.bfloat16)), X),
         ValueError, r"TargetSpec.apply: leaf 'Dense_1/bias' expected \(3,\) float32, got \(3,\) bfloat16"),
    _row("apply-wrong-containers",
         lambda c: hj.targets.from_fn(lambda p, x: x, ((jnp.zeros(2), jnp.zeros(3)),)).apply([[jnp.zeros(2),
                                                                                            jnp.zeros(3)]], X),
         ValueError, r"TargetSpec.apply: params tree has the target's leaf paths but different containers"),
    # ------------------------------------------------------------------ building a spec
    _row("spec-duplicate-path", lambda c: hj.targets.from_fn(lambda p, x: x, {"a/b": X, "a": {"b": X}}), ValueError,
         r"TargetSpec: two leaves have the same path string 'a/b'"),
    _row("spec-integer-leaf", lambda c: hj.targets.from_fn(lambda p, x: x, {"emb": {"ids": jnp.zeros(2, jnp.int32)}}),
         ValueError, r"TargetSpec: leaf 'emb/ids' has dtype int32; only floating point"),
    _row("spec-unknown-layout", lambda c: hj.targets.from_fn(lambda p, x: x, {"w": X}, layout="oihw"), ValueError,
         r"TargetSpec: unknown `layout`='oihw'; valid options are 'in_out', 'out_in'\."),
    _row("linen-batch_stats-refused", lambda c: hj.targets.from_linen(BNNet(), X), ValueError,
         r"from_linen: the target has non-parameter state \(batch_stats\) that a stateless apply\(params, x\) "
         r"would silently drop\. Pass with_state=True"),
]


@pytest.mark.parametrize("fn,exc,match", CASES)
def test_error_names_the_path_shape_or_option(ctx, fn, exc, match):
    with pytest.raises(exc, match=match):
        fn(ctx)


@pytest.mark.parametrize("cond", [jnp.ones(4), jnp.ones((2, 3)), jnp.int32(1)], ids=["wrong-dim", "batch", "id"])
def test_cond_errors_are_raised_at_trace_time_under_jit(ctx, cond):
    with pytest.raises(ValueError, match=r"conditioning input `cond` must have shape \(3,\)"):
        jax.jit(ctx.vec.apply)(ctx.hp["vec"], cond)


@pytest.mark.parametrize("module,adapter,package,extra", [
    ("equinox", "from_equinox", "equinox", "equinox"),
    ("haiku", "from_haiku", "dm-haiku", "haiku"),
])
def test_missing_framework_says_what_to_install(monkeypatch, module, adapter, package, extra):
    monkeypatch.setitem(sys.modules, module, None)         # `import <module>` now raises ImportError
    match = (rf"hyperjax.{adapter} needs {package}, which is not installed\. Install it with: "
             rf"pip install 'hyperjax\[{extra}\]' \(or pip install {package}\)")
    with pytest.raises(ImportError, match=match):
        getattr(hj.targets, adapter)(object())
