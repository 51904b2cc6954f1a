"""Error table of the public API (STYLE.md section 4, issue 10 section 4).

One rule: `TypeError` for a wrong type (cond or id dtype, a float or bool where an int option is expected, a
non-callable, a non-TargetSpec), `ValueError` for a wrong value (a size <= 0, an unknown option, a wrong shape,
an id out of range, a tree whose paths differ). Every message starts with the public name of what was called
("hyperjax.generators.dense: ", "hyperjax.TargetSpec.apply: ") and names the path, shape or option, never a
treedef. Each row is `pytest.raises(<exc>, match="^<public name>: ...")`; `test_every_public_callable_has_a_row`
fails when a public callable has no row and is not in the commented allow-list.

Rows marked `GAP` are known to break the rule today (a message without the public name, no check at all, or a
library error leaking through). They are strict xfails: when the owner fixes the code the row passes, the xfail
turns into a failure, and the mark is removed. Calls that fail at trace time get zero-filled hparams from
`jax.eval_shape(gen.init)`, so nothing here compiles a generator except the one `hj.checked` row.
"""

from __future__ import annotations

import re
import sys
import types
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

import hyperjax as hj

G = hj.generators
P = jax.sharding.PartitionSpec
X = jnp.ones((2, 5), jnp.float32)
PATHS = r"Dense_0/bias, Dense_0/kernel, Dense_1/bias, Dense_1/kernel"
PUBLIC = {"hyperjax": hj, "hyperjax.generators": hj.generators, "hyperjax.targets": hj.targets,
          "hyperjax.training": hj.training, "hyperjax.tying": hj.tying, "hyperjax.checkpoint": hj.checkpoint,
          "hyperjax.sharding": hj.sharding, "hyperjax.testing": hj.testing}


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(use_running_average=False)(nn.Dense(4)(x))


def _zeros(tree):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


class Ctx:
    """Shared objects: generators over tiny_mlp_spec (5 -> 7 -> 3) and zero hparams shaped by their init."""

    def __init__(self, spec, tmp):
        self.spec, self.tmp = spec, tmp
        self.vec = G.dense(spec, cond_dim=3, hidden=4)
        self.ids = G.chunked(spec, cond_dim=3, chunk_size=5, hidden=4, num_conds=4)
        self.part = G.dense(spec, cond_dim=3, hidden=4, where="*/kernel")
        self.static = G.dense(spec, hidden=4)
        self.book = G.codebook(spec, num_values=3, where="*/kernel")
        self.row = G.rowwise(spec, where="Dense_0/kernel", feature_emb=jax.ShapeDtypeStruct((5, 2), jnp.float32),
                             hidden=4)
        self.hp = {name: _zeros(jax.eval_shape(getattr(self, name).init, jax.random.key(0)))
                   for name in ("vec", "ids", "part", "static", "book", "row")}
        self.params = spec.zeros()
        self.tied = hj.tie(spec, source="Dense_0/bias", dest="Dense_1/kernel",
                           fn=lambda b: jnp.tile(b[:, None], (1, 3)))
        self.mesh = jax.make_mesh((1,), ("data",))

    def apply(self, name, *args, hparams=None, **kwargs):
        return getattr(self, name).apply(self.hp[name] if hparams is None else hparams, *args, **kwargs)

    def with_direct(self, **leaves):
        """The partial generator's hparams with hparams["direct"] replaced by {"Dense_i": {"bias": leaf}}."""
        return {**self.hp["part"], "direct": {k: {"bias": v} for k, v in leaves.items()}}

    def swap(self, path, value):
        """self.params with the leaf "layer/name" replaced, unchecked."""
        layer, name = path.split("/")
        return {**self.params, layer: {**self.params[layer], name: value}}


@pytest.fixture(scope="module")
def ctx(tiny_mlp_spec, tmp_path_factory):
    return Ctx(tiny_mlp_spec, tmp_path_factory.mktemp("errors"))


class Row(NamedTuple):
    entry: str                     # the public name this row covers ("hyperjax.generators.dense")
    who: str                       # the public name the message must start with (a method: "hyperjax.TargetSpec.apply")
    fn: Callable[[Ctx], Any]
    exc: type[BaseException]
    match: str                     # regex searched after "<who>: "
    gap: str = ""                  # non-empty: a known break of the rule (strict xfail), what the owner must change


def row(id_, entry, fn, exc, match, *, who=None, gap=""):
    r = Row(entry, who or entry, fn, exc, match, gap)
    marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
    return pytest.param(r, id=f"{entry.removeprefix('hyperjax.')}:{id_}", marks=marks)


def _spec_of(c):
    return c.spec


DENSE, CHUNKED = "hyperjax.generators.dense", "hyperjax.generators.chunked"
CASES = [
    # ------------------------------------------------------------------ conditioning input (shape, dtype, id)
    row("cond-wrong-dim", DENSE, lambda c: c.apply("vec", jnp.ones(4)), ValueError,
        r"conditioning input `cond` must have shape \(3,\) \(cond_dim=3\), got \(4,\)\.$"),
    row("cond-batch-axis", DENSE, lambda c: c.apply("vec", jnp.ones((2, 3))), ValueError,
        r"got \(2, 3\)\. A leading batch axis was given: use hyperjax.per_sample\(...\) or jax.vmap"),
    row("cond-wrong-rank", DENSE, lambda c: c.apply("vec", jnp.ones((1, 1, 3))), ValueError,
        r"must have shape \(3,\) \(cond_dim=3\), got \(1, 1, 3\)\.$"),
    row("cond-integer-vector", DENSE, lambda c: c.apply("vec", jnp.ones(3, jnp.int32)), TypeError,
        r"conditioning input `cond` must be floating point, got int32\. For integer task ids build the generator "
        r"with num_conds=N"),
    row("cond-a-string", DENSE, lambda c: c.apply("vec", "task-1"), TypeError,
        r"conditioning input `cond` must be an array or a number, got str\."),
    row("cond-id-without-num_conds", DENSE, lambda c: c.apply("vec", jnp.int32(1)), ValueError,
        r"must have shape \(3,\) \(cond_dim=3\), got \(\)\. An integer id was given, but this generator was "
        r"built without `num_conds`: build it with num_conds=N"),
    row("cond-python-int-without-num_conds", DENSE, lambda c: c.apply("vec", 2), ValueError,
        r"got \(\)\. An integer id was given, but this generator was built without `num_conds`"),
    row("cond-missing", DENSE, lambda c: c.apply("vec"), ValueError,
        r"this generator is conditioned \(cond_dim=3\): call apply\(hparams, cond\) with cond of shape \(3,\)"),
    row("cond-given-to-static", DENSE, lambda c: c.apply("static", jnp.ones(3)), ValueError,
        r"built without conditioning \(cond_dim=None\), so `cond` must be None, got shape \(3,\)\. Call "
        r"apply\(hparams\) or rebuild it with cond_dim=N\."),
    row("id-given-a-vector", CHUNKED, lambda c: c.apply("ids", jnp.ones(3)), ValueError,
        r"this generator was built with num_conds=4, so `cond` must be an integer id of shape \(\), got shape "
        r"\(3,\) dtype float32"),
    row("id-given-a-float", CHUNKED, lambda c: c.apply("ids", jnp.float32(1.0)), TypeError,
        r"num_conds=4, so `cond` must be an integer id of shape \(\), got shape \(\) dtype float32"),
    row("id-given-a-bool", CHUNKED, lambda c: c.apply("ids", True), TypeError,
        r"`cond` must be an integer id of shape \(\), got shape \(\) dtype bool"),
    row("id-batch", CHUNKED, lambda c: c.apply("ids", jnp.array([0, 1], jnp.int32)), ValueError,
        r"got shape \(2,\) dtype int32\. For per-example ids use jax.vmap"),
    row("id-too-large", CHUNKED, lambda c: c.apply("ids", jnp.int32(4)), ValueError,
        r"conditioning id 4 out of range \[0, 4\)"),
    row("id-negative", CHUNKED, lambda c: c.apply("ids", -1), ValueError, r"conditioning id -1 out of range \[0, 4\)"),
    # ------------------------------------------------------------------ factory options: ints, sequences, choices
    row("cond_dim-zero", CHUNKED, lambda c: G.chunked(c.spec, cond_dim=0, chunk_size=4), ValueError,
        r"`cond_dim` must be a positive int, got 0\.$"),
    row("cond_dim-float", DENSE, lambda c: G.dense(c.spec, cond_dim=3.0), TypeError,
        r"`cond_dim` must be a positive int, got 3\.0 \(float\)\.$"),
    row("chunk_size-zero", CHUNKED, lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=0), ValueError,
        r"`chunk_size` must be a positive int, got 0\.$"),
    row("chunk_size-negative", CHUNKED, lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=-5), ValueError,
        r"`chunk_size` must be a positive int, got -5\.$"),
    row("chunk_size-float", CHUNKED, lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=2.5), TypeError,
        r"`chunk_size` must be a positive int, got 2\.5 \(float\)\.$"),
    row("chunk_size-bool", CHUNKED, lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=True), TypeError,
        r"`chunk_size` must be a positive int, got True \(bool\)\.$"),
    row("chunk_size-string", CHUNKED, lambda c: G.chunked(c.spec, chunk_size="4"), TypeError,
        r"`chunk_size` must be a positive int, got '4' \(str\)\.$"),
    row("chunk_emb_dim-zero", CHUNKED, lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=4, chunk_emb_dim=0),
        ValueError, r"`chunk_emb_dim` must be a positive int, got 0\.$"),
    row("hidden-zero-width", CHUNKED, lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=4, hidden=(8, 0)),
        ValueError, r"`hidden` must be a positive int, got 0\.$"),
    row("hidden-negative-width", DENSE, lambda c: G.dense(c.spec, cond_dim=3, hidden=-2), ValueError,
        r"`hidden` must be a positive int, got -2\.$"),
    row("hidden-float-width", DENSE, lambda c: G.dense(c.spec, hidden=(8.0,)), TypeError,
        r"`hidden` must be a positive int, got 8\.0 \(float\)\.$"),
    row("hidden-none", DENSE, lambda c: G.dense(c.spec, cond_dim=3, hidden=None), TypeError,
        r"`hidden` must be a sequence of positive ints, got None \(NoneType\)\.$"),
    row("hidden-string", DENSE, lambda c: G.dense(c.spec, hidden="64"), TypeError,
        r"`hidden` must be a sequence of positive ints, got '64' \(str\)\.$"),
    row("num_conds-zero", DENSE, lambda c: G.dense(c.spec, cond_dim=3, num_conds=0), ValueError,
        r"`num_conds` must be a positive int, got 0\.$"),
    row("num_conds-without-cond_dim", DENSE, lambda c: G.dense(c.spec, num_conds=3), ValueError,
        r"`num_conds` needs `cond_dim`"),
    row("z_dim-bool", DENSE, lambda c: G.dense(c.spec, z_dim=False), TypeError,
        r"`z_dim` must be a positive int, got False \(bool\)\.$"),
    row("init-unknown", DENSE, lambda c: G.dense(c.spec, cond_dim=3, init="he"), ValueError,
        r"unknown `init`='he'; valid options are 'hyperfan_in', 'hyperfan_out'\.$"),
    row("init-unknown", CHUNKED, lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=4, init="fan_in"), ValueError,
        r"unknown `init`='fan_in'; valid options are 'hyperfan_in', 'hyperfan_out'\.$"),
    row("target-not-a-spec", DENSE, lambda c: G.dense(BNNet(), cond_dim=3), TypeError,
        r"`target` must be a TargetSpec \(from hyperjax.targets.from_linen, .*got BNNet"),
    row("rank-zero", "hyperjax.generators.low_rank", lambda c: G.low_rank(c.spec, rank=0), ValueError,
        r"`rank` must be a positive int, got 0\.$"),
    row("rank-float", "hyperjax.generators.low_rank", lambda c: G.low_rank(c.spec, rank=2.0), TypeError,
        r"`rank` must be a positive int, got 2\.0 \(float\)\.$"),
    row("bias-not-a-matrix", "hyperjax.generators.low_rank", lambda c: G.low_rank(c.spec, rank=2, where="*/bias"),
        ValueError, r"leaf 'Dense_0/bias' \(7,\) is a bias of its layer, not a kernel; low_rank modulates kernels"),
    row("init_scale-string", "hyperjax.generators.low_rank", lambda c: G.low_rank(c.spec, rank=2, init_scale="1"),
        TypeError, r"`init_scale` must be a finite number >= 0, got '1' \(str\)\.$"),
    row("rank-zero", "hyperjax.generators.lora", lambda c: G.lora(c.spec, rank=0), ValueError,
        r"`rank` must be a positive int, got 0\.$"),
    row("share-unknown", "hyperjax.generators.lora", lambda c: G.lora(c.spec, rank=2, share="all"), ValueError,
        r"unknown `share`='all'; valid options are 'leaf', 'layers'\.$"),
    row("bias-not-a-kernel", "hyperjax.generators.lora", lambda c: G.lora(c.spec, rank=2, where="*/bias"),
        ValueError, r"leaf 'Dense_0/bias' \(7,\) is a bias of its layer, not a kernel; LoRA adapts kernels"),
    row("layers-without-cond", "hyperjax.generators.lora", lambda c: G.lora(c.spec, rank=2, share="layers"),
        ValueError, r"share='layers' shares one generator across layers from a condition"),
    row("plain-params", "hyperjax.generators.factorised_apply",
        lambda c: G.factorised_apply(c.spec, c.params, jnp.ones((2, 5))), TypeError,
        r"`factors` has no LoRAFactors / LowRankFactors / ScaleFactors leaf"),
    row("batch-mismatch", "hyperjax.generators.factorised_apply",
        lambda c: G.factorised_apply(c.spec, (lambda g: g.factors(g.init(jax.random.key(0)), jnp.ones((3, 2))))(
            G.lora(c.spec, rank=1, cond_dim=2)), jnp.ones((2, 5))), ValueError,
        r"leaf 'Dense_0/kernel': the layer's input has leading axes \(2,\) but the per-example factors have "
        r"batch axes \(3,\)"),
    row("mode-unknown", "hyperjax.generators.scale_modulation", lambda c: G.scale_modulation(c.spec, mode="diag"),
        ValueError, r"unknown `mode`='diag'; valid options are 'rowcol', 'row', 'col'\.$"),
    row("init_scale-negative", "hyperjax.generators.scale_modulation",
        lambda c: G.scale_modulation(c.spec, init_scale=-0.5), ValueError,
        r"`init_scale` must be a finite number >= 0, got -0\.5\.$"),
    row("stack_axes-float", "hyperjax.generators.per_layer", lambda c: G.per_layer(c.spec, stack_axes=1.5), TypeError,
        r"`stack_axes` must be None \(read from the target\) or an int >= 0 .*got float"),
    row("stack_axes-negative", "hyperjax.generators.per_layer", lambda c: G.per_layer(c.spec, stack_axes=-1),
        ValueError, r"`stack_axes` must be an int >= 0"),
    row("block-not-a-pair", "hyperjax.generators.per_layer", lambda c: G.per_layer(c.spec, block=(2,)), ValueError,
        r"`block` must be a pair \(in_block, out_block\) of positive ints"),
    row("kernels-unknown", "hyperjax.generators.per_layer", lambda c: G.per_layer(c.spec, kernels="conv3d"),
        ValueError, r"unknown `kernels`='conv3d'; valid options are 'auto', 'conv', 'dense'\.$"),
    row("where-two-leaves", "hyperjax.generators.rowwise", lambda c: G.rowwise(c.spec, where="*/kernel", emb_dim=2),
        ValueError, r"`where`='\*/kernel' must select exactly one leaf .*matched 2: Dense_0/kernel, Dense_1/kernel"),
    row("feature_emb-integer", "hyperjax.generators.rowwise",
        lambda c: G.rowwise(c.spec, where="Dense_0/kernel", feature_emb=jnp.ones((5, 2), jnp.int32)), TypeError,
        r"`feature_emb` must be a floating 2-D array f\[D, E\] .*got shape \(5, 2\) dtype int32\.$"),
    row("feature_emb-1d", "hyperjax.generators.rowwise",
        lambda c: G.rowwise(c.spec, where="Dense_0/kernel", feature_emb=jnp.ones(5)), ValueError,
        r"`feature_emb` must be a floating 2-D array f\[D, E\] .*got shape \(5,\) dtype float32\.$"),
    row("emb_dim-and-feature_emb", "hyperjax.generators.rowwise",
        lambda c: G.rowwise(c.spec, where="Dense_0/kernel", emb_dim=2, feature_emb=jnp.ones((5, 2))), ValueError,
        r"give exactly one of `feature_emb` or `emb_dim`, got `feature_emb`, `emb_dim`\."),
    row("apply-feature_emb-integer", "hyperjax.generators.rowwise",
        lambda c: c.apply("row", feature_emb=jnp.ones((5, 2), jnp.int32)), TypeError,
        r"`feature_emb` must be a floating array of shape \(5, 2\) \(D features x emb_dim\), got \(5, 2\) int32\."),
    row("apply-feature_emb-shape", "hyperjax.generators.rowwise",
        lambda c: c.apply("row", feature_emb=jnp.ones((5, 3))), ValueError,
        r"`feature_emb` must be a floating array of shape \(5, 2\) .*got \(5, 3\) float32\."),
    row("num_values-float", "hyperjax.generators.codebook", lambda c: G.codebook(c.spec, num_values=2.5), TypeError,
        r"`num_values` must be a positive int, got 2\.5 \(float\)\.$"),
    row("num_values-zero", "hyperjax.generators.codebook", lambda c: G.codebook(c.spec, num_values=0), ValueError,
        r"`num_values` must be a positive int, got 0\.$"),
    row("conditioned", "hyperjax.generators.codebook", lambda c: G.codebook(c.spec, num_values=3, cond_dim=2),
        ValueError, r"codebook has no conditioned form \(cond_dim=2, num_conds=None\)"),
    row("tau-integer-array", "hyperjax.generators.codebook", lambda c: c.apply("book", tau=jnp.int32(1)), TypeError,
        r"the temperature `tau` must be a floating scalar of shape \(\), got shape \(\) dtype int32"),
    row("tau-negative", "hyperjax.generators.codebook", lambda c: c.apply("book", tau=jnp.float32(-0.5)), ValueError,
        r"the temperature `tau` must be > 0, got -0\.5\.$"),
    row("module-not-a-module", "hyperjax.generators.from_module", lambda c: G.from_module(3, c.spec), TypeError,
        r"`module` must be a flax.linen.Module, a flax.nnx.Module, an equinox.Module or a TargetSpec, got int\.$"),
    row("module-output-size", "hyperjax.generators.from_module",
        lambda c: G.from_module(hj.testing.MLP(features=(3,)), c.spec, cond_dim=2), ValueError,
        r"the module maps a cond of shape \(2,\) to \(3,\) float32, but the 4 generated leaves need one floating "
        r"vector of \(66,\)"),
    row("target-not-a-spec", "hyperjax.generators.num_outputs", lambda c: G.num_outputs(3), TypeError,
        r"`target` must be a TargetSpec"),
    row("where-matches-nothing", "hyperjax.generators.num_outputs", lambda c: G.num_outputs(c.spec, where="*/w"),
        ValueError, r"`where`='\*/w' matches no leaf of the target\. Available paths: " + PATHS + "$"),
    # ------------------------------------------------------------------ `where` (partial generation)
    row("where-glob-matches-nothing", DENSE, lambda c: G.dense(c.spec, cond_dim=3, where="*/w"), ValueError,
        r"`where`='\*/w' matches no leaf of the target\. Available paths: " + PATHS + "$"),
    row("where-list-matches-nothing", CHUNKED,
        lambda c: G.chunked(c.spec, cond_dim=3, chunk_size=4, where=["enc/*", "kernel"]), ValueError,
        r"`where`='enc/\*', 'kernel' matches no leaf of the target\. Available paths: " + PATHS),
    row("where-predicate-matches-nothing", DENSE,
        lambda c: G.dense(c.spec, cond_dim=3, where=lambda p, leaf: leaf.ndim == 3), ValueError,
        r"`where`=<lambda> matches no leaf of the target\. Available paths: " + PATHS),
    row("where-bad-type", DENSE, lambda c: G.dense(c.spec, cond_dim=3, where=3), TypeError,
        r"`where` must be a glob string, a list of globs or a \(path, leaf\) -> bool predicate, got int"),
    row("where-without-where", "hyperjax.generators.partial",
        lambda c: G.partial(G.dense, c.spec, where=None, cond_dim=3), ValueError, r"`where` is required"),
    row("factory-not-callable", "hyperjax.generators.partial", lambda c: G.partial(3, c.spec, where="*/kernel"),
        TypeError, r"`factory` must be a generator factory"),
    # ------------------------------------------------------------------ hparams given to apply
    row("hparams-not-a-dict", DENSE, lambda c: c.apply("part", jnp.ones(3), hparams=[c.hp["part"]]), TypeError,
        r"hparams must be the dict returned by this generator's init\(key\), got list\."),
    row("hparams-direct-missing-leaf", DENSE,
        lambda c: c.apply("part", jnp.ones(3), hparams=c.with_direct(Dense_1=jnp.zeros(3))), ValueError,
        r"hparams tree does not match the target \(missing: direct/Dense_0/bias\)\. Pass the hparams made by this "
        r"generator's init\(key\)"),
    row("hparams-direct-wrong-shape", DENSE,
        lambda c: c.apply("part", jnp.ones(3), hparams=c.with_direct(Dense_0=jnp.zeros(7), Dense_1=jnp.zeros(4))),
        ValueError, r"leaf 'direct/Dense_1/bias' expected \(3,\) float32, got \(4,\) float32\."),
    # ------------------------------------------------------------------ codebook regularisers and export
    row("tau-zero", "hyperjax.generators.codebook_entropy", lambda c: G.codebook_entropy(c.hp["book"], 0), ValueError,
        r"`tau` must be a positive finite number, got 0\.$"),
    row("tau-string", "hyperjax.generators.codebook_entropy", lambda c: G.codebook_entropy(c.hp["book"], "1"),
        TypeError, r"the temperature `tau` must be an array or a number, got str\.$"),
    row("hparams-not-a-dict", "hyperjax.generators.codebook_usage", lambda c: G.codebook_usage([c.hp["book"]]),
        TypeError, r"hparams must be a dict with a 'hyper' entry, got list"),
    row("hparams-of-another-generator", "hyperjax.generators.codebook_usage",
        lambda c: G.codebook_usage(c.hp["vec"]), ValueError,
        r"hparams\['hyper'\] has no codebook 'logits' and 'values'"),
    row("prior-shape", "hyperjax.generators.codebook_usage_kl",
        lambda c: G.codebook_usage_kl(c.hp["book"], prior=jnp.ones(2) / 2), ValueError,
        r"`prior` must have shape \(3,\) \(num_values\), got \(2,\)\.$"),
    row("hparams-without-hyper", "hyperjax.generators.codebook_export",
        lambda c: G.codebook_export(c.book, {"direct": {}}), ValueError, r"hparams has no 'hyper' entry"),
    row("hnet-not-a-generator", "hyperjax.generators.codebook_export",
        lambda c: G.codebook_export(3, c.hp["book"]), TypeError, r"`hnet` must be"),
    row("x-kernel-mismatch", "hyperjax.generators.modulated_matmul",
        lambda c: G.modulated_matmul(jnp.ones((2, 4)), jnp.ones((5, 3))), ValueError,
        r"expected x f\[\.\.\., n_in\] and a kernel f\[n_in, n_out\] .*got x \(2, 4\) and w \(5, 3\)\.$"),
    row("w-a-string", "hyperjax.generators.modulated_matmul",
        lambda c: G.modulated_matmul(jnp.ones((2, 4)), "w"), TypeError, r"`w` must be"),
    row("like-empty", "hyperjax.generators.shared",
        lambda c: G.shared(jnp.ones(3), jnp.ones((2, 0))), ValueError,
        r"`like` must be a non-empty array .*got \(2, 0\)\.$"),
    row("x-int", "hyperjax.generators.shared",
        lambda c: G.shared(jnp.arange(3), jnp.ones(2)), TypeError, r"`x` must be a floating-point array .*got int32"),
    row("z_dim-zero", "hyperjax.generators.per_layer_param_count",
        lambda c: G.per_layer_param_count((3, 3), z_dim=0), ValueError, r"`z_dim` must be a positive int"),
    row("emb_dim-float", "hyperjax.generators.rowwise_param_count",
        lambda c: G.rowwise_param_count(emb_dim=2.5, units=3), TypeError, r"`emb_dim` must be a positive int"),
    # ------------------------------------------------------------------ TargetSpec: generator output / target apply
    row("check-missing-leaf", "hyperjax.TargetSpec",
        lambda c: c.spec.check({"Dense_0": c.params["Dense_0"], "Dense_1": {"kernel": jnp.zeros((7, 3))}}),
        ValueError, r"params tree does not match the target \(missing: Dense_1/bias\)",
        who="hyperjax.TargetSpec.check"),
    row("check-first-differing-leaf", "hyperjax.TargetSpec",
        lambda c: c.spec.check(c.swap("Dense_0/bias", jnp.zeros(8))), ValueError,
        r"leaf 'Dense_0/bias' expected \(7,\) float32, got \(8,\) float32\.", who="hyperjax.TargetSpec.check"),
    row("check-string-leaf", "hyperjax.TargetSpec", lambda c: c.spec.check(c.swap("Dense_0/bias", "zeros")),
        TypeError, r"leaf 'Dense_0/bias' must be an array or a number, got str\.$", who="hyperjax.TargetSpec.check"),
    row("apply-extra-leaf", "hyperjax.TargetSpec",
        lambda c: c.spec.apply({**c.params, "Dense_2": {"kernel": jnp.zeros((3, 1))}}, X), ValueError,
        r"params tree does not match the target \(unexpected: Dense_2/kernel\)", who="hyperjax.TargetSpec.apply"),
    row("apply-wrong-shape", "hyperjax.TargetSpec",
        lambda c: c.spec.apply(c.swap("Dense_0/kernel", jnp.zeros((5, 8))), X),
        ValueError, r"leaf 'Dense_0/kernel' expected \(5, 7\) float32, got \(5, 8\) float32\. The spec was built "
                    r"from a linen target", who="hyperjax.TargetSpec.apply"),
    row("apply-wrong-dtype", "hyperjax.TargetSpec",
        lambda c: c.spec.apply(c.swap("Dense_1/bias", jnp.zeros(3, jnp.bfloat16)), X), ValueError,
        r"leaf 'Dense_1/bias' expected \(3,\) float32, got \(3,\) bfloat16", who="hyperjax.TargetSpec.apply"),
    row("apply-wrong-containers", "hyperjax.TargetSpec",
        lambda c: hj.targets.from_fn(lambda p, x: x, ((jnp.zeros(2), jnp.zeros(3)),)).apply(
            [[jnp.zeros(2), jnp.zeros(3)]], X), ValueError,
        r"params tree has the target's leaf paths but different containers at the root: got list, expected tuple\.",
        who="hyperjax.TargetSpec.apply"),
    row("apply-dict-key-types", "hyperjax.TargetSpec",
        lambda c: hj.targets.from_fn(lambda p, x: x, {"a": {"0": jnp.zeros(2)}}).apply({"a": {0: jnp.zeros(2)}}, X),
        ValueError, r"different containers at 'a': got dict with keys \[0\], expected dict with keys \['0'\]\.",
        who="hyperjax.TargetSpec.apply"),
    row("unflatten-wrong-size", "hyperjax.TargetSpec", lambda c: c.spec.unflatten(jnp.zeros(3)), ValueError,
        r"expected a vector of 66 values", who="hyperjax.TargetSpec.unflatten"),
    row("init_moments-mode", "hyperjax.TargetSpec", lambda c: c.spec.init_moments("Dense_0/kernel", "glorot"),
        ValueError, r"unknown `mode`='glorot'; valid options are 'fan_in', 'fan_out'\.$",
        who="hyperjax.TargetSpec.init_moments"),
    row("apply_fn-not-callable", "hyperjax.TargetSpec", lambda c: hj.TargetSpec(3, c.spec.leaves, c.spec.treedef),
        TypeError, r"`apply_fn` must be callable or None, got int\.$"),
    row("treedef-mismatch", "hyperjax.TargetSpec",
        lambda c: hj.TargetSpec(None, c.spec.leaves, jax.tree.structure([0, 0])), ValueError,
        r"`treedef` has 2 leaves but `leaves` has 4"),
    # ------------------------------------------------------------------ target adapters
    row("duplicate-path", "hyperjax.targets.from_fn",
        lambda c: hj.targets.from_fn(lambda p, x: x, {"a/b": X, "a": {"b": X}}),
        ValueError, r"two leaves have the same path string 'a/b'"),
    row("integer-leaf", "hyperjax.targets.from_fn",
        lambda c: hj.targets.from_fn(lambda p, x: x, {"emb": {"ids": jnp.zeros(2, jnp.int32)}}), ValueError,
        r"leaf 'emb/ids' has dtype int32; only floating point"),
    row("unknown-layout", "hyperjax.targets.from_fn",
        lambda c: hj.targets.from_fn(lambda p, x: x, {"w": X}, layout="oihw"), ValueError,
        r"unknown `layout`='oihw'; valid options are 'in_out', 'out_in'\.$"),
    row("apply_fn-not-callable", "hyperjax.targets.from_fn", lambda c: hj.targets.from_fn(3, {"w": X}), TypeError,
        r"`apply_fn` must be callable"),
    row("not-a-module", "hyperjax.targets.from_linen", lambda c: hj.targets.from_linen(3, X), TypeError,
        r"expected a flax.linen.Module, got int\. For NNX use from_nnx, for Equinox from_equinox\."),
    row("batch_stats-refused", "hyperjax.targets.from_linen", lambda c: hj.targets.from_linen(BNNet(), X), ValueError,
        r"the target has non-parameter state \(batch_stats\) that a stateless apply\(params, x\) would silently drop\. "
        r"Pass with_state=True"),
    row("not-a-module", "hyperjax.targets.from_nnx", lambda c: hj.targets.from_nnx(3), TypeError,
        r"expected a flax.nnx.Module, got int\.$"),
    row("not-a-module", "hyperjax.targets.from_equinox", lambda c: hj.targets.from_equinox(3), TypeError,
        r"expected an equinox.Module, got int\.$"),
    row("not-transformed", "hyperjax.targets.from_haiku", lambda c: hj.targets.from_haiku(3), TypeError,
        r"expected the result of hk.transform, got int\.$"),
    row("not-a-tree-of-arrays", "hyperjax.targets.abstract", lambda c: hj.targets.abstract({"w": "x"}), TypeError,
        r"leaf 'w'"),
    # ------------------------------------------------------------------ per-example weights, checks
    row("conds-scalar", "hyperjax.generate_batch", lambda c: hj.generate_batch(c.vec, c.hp["vec"], jnp.float32(1.0)),
        ValueError, r"conds needs a leading batch axis \(f\[B, cond_dim\] or int\[B\] ids\), got shape \(\)"),
    row("conds-a-list", "hyperjax.generate_batch", lambda c: hj.generate_batch(c.vec, c.hp["vec"], [[1.0, 2.0, 3.0]]),
        TypeError, r"`conds` must be an array f\[B, cond_dim\] \(or int\[B\] ids\), got list"),
    row("hnet-not-a-generator", "hyperjax.generate_batch", lambda c: hj.generate_batch(3, {}, jnp.ones((2, 3))),
        TypeError, r"`hnet` must be a hypernetwork with an apply\(hparams, cond\) function"),
    row("target-not-a-spec", "hyperjax.per_sample", lambda c: hj.per_sample(c.vec, 3), TypeError,
        r"`target` must be a TargetSpec \(from hyperjax.targets\), got int\.$"),
    row("batch-mismatch", "hyperjax.per_sample",
        lambda c: jax.eval_shape(hj.per_sample(c.vec, c.spec), c.hp["vec"], jnp.ones((2, 3)), jnp.ones((3, 5))),
        ValueError,
        r"conds and xs need the same leading batch axis, got conds \(2, 3\) and xs with leading sizes \[3\]"),
    row("traced-id-out-of-range", "hyperjax.checked", lambda c: hj.checked(c.ids.apply)(c.hp["ids"], jnp.int32(9)),
        ValueError, r"conditioning id 9 out of range \[0, 4\)", who=CHUNKED),
    row("fn-not-callable", "hyperjax.checked", lambda c: hj.checked(3), TypeError, r"`fn` must be callable"),
    row("pattern-not-a-string", "hyperjax.select", lambda c: hj.select("*/kernel", 3), TypeError,
        r"expected one or more glob strings, got \('\*/kernel', 3\)"),
    row("no-pattern", "hyperjax.select", lambda c: hj.select(), TypeError, r"expected one or more glob strings"),
    # ------------------------------------------------------------------ tying
    row("unknown-source", "hyperjax.tie", lambda c: hj.tie(c.spec, source="enc/kernel", dest="Dense_1/kernel"),
        ValueError, r"source 'enc/kernel' is not a leaf path of the target\. Available paths: " + PATHS),
    row("fn-not-callable", "hyperjax.tie", lambda c: hj.tie(c.spec, source="Dense_0/bias", dest="Dense_1/bias", fn=3),
        TypeError, r"fn for source 'Dense_0/bias' must be callable \(leaf -> leaf\), got 3\.$"),
    row("shape-mismatch", "hyperjax.tie", lambda c: hj.tie(c.spec, source="Dense_0/bias", dest="Dense_1/bias"),
        ValueError, r"cannot tie dest 'Dense_1/bias' .* to source 'Dense_0/bias'"),
    row("no-ties", "hyperjax.tie", lambda c: hj.tie(c.spec), ValueError, r"no ties given"),
    row("bad-tie", "hyperjax.tie", lambda c: hj.tie(c.spec, ties=[3]), TypeError,
        r"each tie must be hj.Tie\(source, dest, fn=None\)"),
    row("target-a-number", "hyperjax.tie", lambda c: hj.tie(3, source="a", dest="b"), TypeError,
        r"`target` must be a TargetSpec, a dict of TargetSpecs \(a tie across targets\) or a parameter tree"),
    row("expand-missing-leaf", "hyperjax.Tied", lambda c: c.tied.expand({"Dense_0": c.params["Dense_0"]}), ValueError,
        r"params tree does not match the target \(missing: Dense_1/bias\)", who="hyperjax.Tied.expand"),
    # ------------------------------------------------------------------ training
    row("optimizer-not-optax", "hyperjax.training.init_state", lambda c: hj.training.init_state(c.params, 3), TypeError,
        r"`optimizer` must be an optax.GradientTransformation \(e.g. optax.adam\(1e-3\)\), got int\.$"),
    row("key-an-int", "hyperjax.training.init_state",
        lambda c: hj.training.init_state(c.params, optax.sgd(1.0), key=3), TypeError,
        r"`key` must be a PRNG key \(jax.random.key\(seed\)\) or None, got int"),
    row("loss_fn-not-callable", "hyperjax.training.make_step", lambda c: hj.training.make_step(3, optax.sgd(1.0)),
        TypeError, r"`loss_fn` must be callable as loss_fn\(params, batch, rng\), got int"),
    row("optimizer-not-optax", "hyperjax.training.make_step",
        lambda c: hj.training.make_step(lambda p, b, r: 0.0, 3), TypeError,
        r"`optimizer` must be an optax.GradientTransformation"),
    row("transforms-not-a-dict", "hyperjax.training.multi_optimizer", lambda c: hj.training.multi_optimizer(3),
        TypeError, r"`transforms` must be a dict \{label: optax transform\}, got int"),
    row("transforms-empty", "hyperjax.training.multi_optimizer", lambda c: hj.training.multi_optimizer({}),
        ValueError, r"`transforms` is empty; give one per label"),
    row("missing-label", "hyperjax.training.multi_optimizer",
        lambda c: hj.training.multi_optimizer({"hyper": optax.sgd(1.0)}).init({"direct": c.params}), ValueError,
        r"no transform for label\(s\) \['direct'\]; given: \['hyper'\]\.$"),
    row("rules-not-pairs", "hyperjax.training.labels", lambda c: hj.training.labels(c.params, rules=3), TypeError,
        r"`rules` must be a sequence of \(glob, label\) pairs"),
    row("rule-label-not-a-string", "hyperjax.training.labels",
        lambda c: hj.training.labels(c.params, rules=[("*/kernel", 3)]), TypeError,
        r"the label of rule \('\*/kernel', 3\) must be a str"),
    row("optimizer-not-optax", "hyperjax.training.frozen", lambda c: hj.training.frozen(3, "*/kernel"), TypeError,
        r"`optimizer` must be an optax.GradientTransformation"),
    row("where-matches-nothing", "hyperjax.training.frozen",
        lambda c: hj.training.frozen(optax.sgd(1.0), "*/w").init(c.params), ValueError,
        r"`where`='\*/w' matches no leaf of the trainable params\. Available paths: " + PATHS),
    row("string-leaf", "hyperjax.training.count_params", lambda c: hj.training.count_params({"w": "x"}), TypeError,
        r"leaf 'w'"),
    row("string-leaf", "hyperjax.training.global_norm", lambda c: hj.training.global_norm({"w": "x"}), TypeError,
        r"leaf 'w'"),
    row("metrics-not-a-dict", "hyperjax.training.first_nonfinite",
        lambda c: hj.training.first_nonfinite(c.params, 3), TypeError, r"`metrics` must be"),
    # ------------------------------------------------------------------ checkpoint (no files are written)
    row("max_to_keep-float", "hyperjax.checkpoint.manager",
        lambda c: hj.checkpoint.manager(c.tmp / "a", max_to_keep=2.5), TypeError,
        r"`max_to_keep` must be a positive int or None \(keep all\), got float"),
    row("best_mode-unknown", "hyperjax.checkpoint.manager",
        lambda c: hj.checkpoint.manager(c.tmp / "b", best_mode="x"), ValueError,
        r"unknown `best_mode`='x'; valid options are 'min', 'max'\.$"),
    row("mgr-not-a-manager", "hyperjax.checkpoint.save", lambda c: hj.checkpoint.save(3, 0, {}), TypeError,
        r"`mgr` must come from hyperjax.checkpoint.manager\(directory, \.\.\.\), got int"),
    row("mgr-not-a-manager", "hyperjax.checkpoint.restore", lambda c: hj.checkpoint.restore(3, {}), TypeError,
        r"`mgr` must come from hyperjax.checkpoint.manager"),
    row("mgr-not-a-manager", "hyperjax.checkpoint.restore_latest_valid",
        lambda c: hj.checkpoint.restore_latest_valid(3, {}), TypeError, r"`mgr` must come from hyperjax.checkpoint"),
    row("mgr-not-a-manager", "hyperjax.checkpoint.load_config", lambda c: hj.checkpoint.load_config(3), TypeError,
        r"`mgr` must come from hyperjax.checkpoint.manager"),
    row("mgr-not-a-manager", "hyperjax.checkpoint.metrics", lambda c: hj.checkpoint.metrics(3), TypeError,
        r"`mgr` must come from hyperjax.checkpoint.manager"),
    row("no-array-leaves", "hyperjax.checkpoint.export", lambda c: hj.checkpoint.export(c.tmp / "e", {}), ValueError,
        r"`params` has no array leaves\.$"),
    row("no-export-there", "hyperjax.checkpoint.load_export", lambda c: hj.checkpoint.load_export(c.tmp / "none"),
        FileNotFoundError, r"no exported checkpoint at .*none\.$"),
    # ------------------------------------------------------------------ sharding
    row("rules-not-pairs", "hyperjax.sharding.place", lambda c: hj.sharding.place(c.params, c.mesh, rules=3),
        TypeError, r"`rules` must be a sequence of \(glob, PartitionSpec\) pairs, got int"),
    row("unknown-mesh-axis", "hyperjax.sharding.shardings",
        lambda c: hj.sharding.shardings(c.params, c.mesh, rules=[("*/kernel", P("model"))]), ValueError,
        r"leaf 'Dense_0/kernel': mesh has no axis 'model'"),
    row("default-not-a-spec", "hyperjax.sharding.abstract_with_shardings",
        lambda c: hj.sharding.abstract_with_shardings(c.params, c.mesh, default=3), TypeError,
        r"`default` must be a PartitionSpec, got int"),
    row("unknown-mesh-axis", "hyperjax.sharding.batch_sharding", lambda c: hj.sharding.batch_sharding(c.mesh, "model"),
        ValueError, r"mesh has no axis 'model' \(axes: data\)"),
    row("rank-mismatch", "hyperjax.sharding.spec_for",
        lambda c: hj.sharding.spec_for("a", (2,), c.mesh, [("a", P("data", None))]), ValueError,
        r"leaf 'a' has shape \(2,\) \(rank 1\) but its rule gives PartitionSpec\('data', None\) of rank 2"),
    # ------------------------------------------------------------------ hyperjax.testing (its assertions: AssertionError)
    row("no-float-hparams", "hyperjax.testing.assert_generates",
        lambda c: hj.testing.assert_generates(hj.HyperNetwork(lambda k: {}, lambda hp: {}), c.spec), AssertionError,
        r"hnet.init\(key\) returned no floating-point leaves to train"),
    row("hnet-not-a-generator", "hyperjax.testing.assert_generates", lambda c: hj.testing.assert_generates(3, c.spec),
        TypeError, r"`hnet` must be"),
    row("stale-glob", "hyperjax.testing.assert_grads_reach",
        lambda c: hj.testing.assert_grads_reach({"a": jnp.ones(2)}, allow_zero_grad="b"), ValueError,
        r"allow_zero_grad glob 'b' matches no hparams leaf; the leaves are: a$"),
    row("other-leaves", "hyperjax.testing.assert_tree_like",
        lambda c: hj.testing.assert_tree_like({"a": jnp.ones(2)}, c.spec), AssertionError,
        r"tree does not match the target's leaves \(missing: " + PATHS + r"; unexpected: a\)\.$"),
    row("pool-unknown", "hyperjax.testing.cnn_spec", lambda c: hj.testing.cnn_spec(pool="max"), ValueError,
        r"unknown `pool`='max'; valid options are 'mean', 'flatten'\.$"),
    row("layout-unknown", "hyperjax.testing.fn_mlp_spec", lambda c: hj.testing.fn_mlp_spec(layout="oi"), ValueError,
        r"unknown `layout`='oi'; valid options are 'in_out', 'out_in'\.$"),
    row("dtypes-names-no-leaf", "hyperjax.testing.fn_mlp_spec",
        lambda c: hj.testing.fn_mlp_spec(dtypes={"l9/kernel": jnp.bfloat16}), ValueError,
        r"`dtypes` names no leaf: l9/kernel"),
    row("no-such-leaf", "hyperjax.testing.leaf_at", lambda c: hj.testing.leaf_at({"a": 1.0}, "b"), KeyError,
        r"no leaf 'b'; the tree has: a"),
    row("one-width", "hyperjax.testing.mlp_spec", lambda c: hj.testing.mlp_spec((5,)), ValueError, r"`widths`"),
    row("depth-zero", "hyperjax.testing.stacked_spec", lambda c: hj.testing.stacked_spec(0), ValueError,
        r"`depth` must be a positive int"),
    row("low-not-a-dtype", "hyperjax.testing.mixed_dtype_spec", lambda c: hj.testing.mixed_dtype_spec(low="x"),
        TypeError, r"`low`"),
    row("dtype-unknown", "hyperjax.testing.sds", lambda c: hj.testing.sds((2,), "x"), TypeError, r"`dtype`"),
    row("negative-size", "hyperjax.testing.ramp", lambda c: hj.testing.ramp((2, -1)), ValueError, r"`shape`"),
    row("not-shapes", "hyperjax.testing.filled", lambda c: hj.testing.filled({"w": "x"}), TypeError, r"leaf 'w'"),
    row("not-a-key-path", "hyperjax.testing.path_of", lambda c: hj.testing.path_of(3), TypeError, r"key path"),
    # ------------------------------------------------ the 2-D view of kernels, sharding helpers
    row("as-matrix-shape", "hyperjax.targets.as_matrix",
        lambda c: hj.targets.as_matrix(c.spec, "Dense_0/kernel", jnp.zeros((3, 3))), ValueError,
        r"leaf 'Dense_0/kernel' must have shape \(5, 7\), got \(3, 3\)"),
    row("from-matrix-shape", "hyperjax.targets.from_matrix",
        lambda c: hj.targets.from_matrix(c.spec, "Dense_0/kernel", jnp.zeros((7, 5))), ValueError,
        r"leaf 'Dense_0/kernel' has the 2-D view \(5, 7\); got a matrix of shape \(7, 5\)"),
    row("matrix-of-a-bias", "hyperjax.targets.matrix_shape",
        lambda c: hj.targets.matrix_shape(c.spec, "Dense_0/bias"), ValueError, r"'Dense_0/bias' .* is a bias, not a kernel"),
    row("mesh-too-big", "hyperjax.sharding.make_mesh", lambda c: hj.sharding.make_mesh(data=3, model=5), ValueError,
        r"a 3x5 mesh needs 15 devices"),
    row("mesh-name-type", "hyperjax.sharding.mesh_name", lambda c: hj.sharding.mesh_name(3), TypeError,
        r"`mesh` must be a jax.sharding.Mesh"),
    row("mp-rules-axis", "hyperjax.sharding.model_parallel_rules", lambda c: hj.sharding.model_parallel_rules(axis=3),
        TypeError, r"`axis` must be a mesh axis name \(str\), got int"),
    row("largest-rules-mesh", "hyperjax.sharding.largest_axis_rules",
        lambda c: hj.sharding.largest_axis_rules({"a": jnp.zeros(3)}, 3), TypeError, r"`mesh` must be a jax.sharding"),
    row("constrain-no-mesh", "hyperjax.sharding.constrain",
        lambda c: hj.sharding.constrain({"a": jnp.zeros(3)}, [("a", jax.sharding.PartitionSpec("x"))]), ValueError,
        r"no `mesh` given and no mesh context"),
    row("logical-rules-target", "hyperjax.sharding.logical_rules",
        lambda c: hj.sharding.logical_rules({"a": 1}, []), TypeError, r"`target` must be a TargetSpec"),
    row("global-batch-mesh", "hyperjax.sharding.global_batch", lambda c: hj.sharding.global_batch(jnp.zeros(3), 3),
        TypeError, r"`mesh` must be a jax.sharding.Mesh"),
]

# Public callables with no input to check, each with the reason (a new entry needs one too).
ALLOW = {
    # plain NamedTuple records, like optax.GradientTransformation: the functions that make or take them check them
    "hyperjax.HyperNetwork": "NamedTuple(init, apply); factories and generate_batch / per_sample check it",
    "hyperjax.Tie": "NamedTuple(source, dest, fn); hyperjax.tie checks every field (rows above)",
    "hyperjax.generators.Modulated": "NamedTuple(init, apply, factors) returned by low_rank / scale_modulation",
    "hyperjax.generators.LowRankFactors": "NamedTuple returned by Modulated.factors; modulated_matmul checks it",
    "hyperjax.generators.ScaleFactors": "NamedTuple returned by Modulated.factors; modulated_matmul checks it",
    "hyperjax.generators.LoRAFactors": "NamedTuple returned by lora's factors; modulated_matmul / factorised_apply "
                                       "check it",
    "hyperjax.training.TrainState": "NamedTuple made by init_state (rows above)",
    "hyperjax.checkpoint.Restored": "NamedTuple returned by restore_latest_valid",
    "hyperjax.checkpoint.Manager": "made by hyperjax.checkpoint.manager; every function taking `mgr` checks its type",
    "hyperjax.checkpoint.DamagedCheckpointError": "an exception class (a ValueError naming the damaged step)",
    # predicates and tree walkers that accept any value
    "hyperjax.generators.matrices": "a `where` predicate (path, leaf) -> bool: True for 2-D leaves, any leaf",
    "hyperjax.testing.leaves_with_paths": "any Python value is a pytree",
    "hyperjax.testing.leaf_dict": "any Python value is a pytree",
    # flax dataclass modules: flax checks the fields when the module is initialised
    "hyperjax.testing.MLP": "flax.linen.Module dataclass",
    "hyperjax.testing.CNN": "flax.linen.Module dataclass",
    "hyperjax.testing.Transformer": "flax.linen.Module dataclass",
    "hyperjax.targets.LeafAxes": "NamedTuple; TargetSpec checks it against each leaf (tests/targets/test_real_models)",
    "hyperjax.targets.heuristic_axes": "reads any shape; a LeafAxes it makes is checked by TargetSpec",
    "hyperjax.sharding.initialize": "wraps jax.distributed.initialize, whose own errors name the problem; must run "
                                    "before JAX starts, so it cannot be called in this process",
    "hyperjax.testing.StackedMLP": "flax.linen.Module dataclass",
}


def _message(e: BaseException) -> str:
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)   # str(KeyError) adds quotes


@pytest.mark.parametrize("r", CASES)
def test_error_starts_with_the_public_name_and_names_the_problem(ctx, r):
    pattern = "^" + re.escape(r.who + ": ") + "(?s:.*?)" + r.match
    with pytest.raises(r.exc) as info:
        r.fn(ctx)
    assert type(info.value) is r.exc, type(info.value)          # exactly the class, not a subclass by accident
    assert re.search(pattern, _message(info.value)), f"{_message(info.value)!r} does not match {pattern!r}"


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    return getattr(PUBLIC[module], attr)


def public_callables() -> dict[int, list[str]]:
    """{id(object): [every public name of it]} for each callable in the public __all__ lists (not modules)."""
    found: dict[int, list[str]] = {}
    for module_name, module in PUBLIC.items():
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, types.ModuleType):
                found.setdefault(id(obj), []).append(f"{module_name}.{name}")
    return found


def test_every_public_callable_has_a_row():
    """A public function or class either has an error row (xfail rows count: the gap is on record) or an
    allow-list entry saying why it takes no checkable input."""
    public = public_callables()
    covered = {id(_resolve(r.values[0].entry)) for r in CASES} | {id(_resolve(n)) for n in ALLOW}
    missing = sorted(names[0] for key, names in public.items() if key not in covered)
    assert not missing, f"public callables without an error row or an ALLOW entry: {missing}"


def test_rows_and_allow_list_name_public_callables():
    public = {n for names in public_callables().values() for n in names}
    stale = sorted({r.values[0].entry for r in CASES} - public) + sorted(set(ALLOW) - public)
    assert not stale, f"rows or ALLOW entries for names that are not public callables: {stale}"
    rowed = {id(_resolve(r.values[0].entry)) for r in CASES}
    both = sorted(n for n in ALLOW if id(_resolve(n)) in rowed)
    assert not both, f"in ALLOW but with a row (remove from ALLOW): {both}"
    assert len({r.id for r in CASES}) == len(CASES)


def test_the_coverage_check_finds_a_missing_row(monkeypatch):
    """The enumeration is not vacuous: a new public function without a row is reported."""
    def new_public_function(x):
        return x
    monkeypatch.setattr(hj.training, "new_public_function", new_public_function, raising=False)
    monkeypatch.setattr(hj.training, "__all__", [*hj.training.__all__, "new_public_function"])
    with pytest.raises(AssertionError, match=r"hyperjax.training.new_public_function"):
        test_every_public_callable_has_a_row()
    assert len(public_callables()) > 60


def test_rows_use_only_type_and_value_errors_for_bad_input():
    """AssertionError only for hyperjax.testing's assertions, KeyError only for leaf_at, FileNotFoundError only
    for a missing export; everything else is the TypeError / ValueError rule."""
    allowed = {AssertionError: {"hyperjax.testing.assert_generates", "hyperjax.testing.assert_tree_like"},
               KeyError: {"hyperjax.testing.leaf_at"}, FileNotFoundError: {"hyperjax.checkpoint.load_export"}}
    for p in CASES:
        r = p.values[0]
        assert r.exc in (TypeError, ValueError) or r.entry in allowed[r.exc], p.id


@pytest.mark.parametrize("cond", [jnp.ones(4), jnp.ones((2, 3)), jnp.int32(1)], ids=["wrong-dim", "batch", "id"])
def test_cond_errors_are_raised_at_trace_time_under_jit(ctx, cond):
    with pytest.raises(ValueError, match=r"^hyperjax.generators.dense: conditioning input `cond` must have shape "
                                         r"\(3,\)"):
        jax.jit(ctx.vec.apply)(ctx.hp["vec"], cond)


def test_id_dtype_error_is_a_type_error_under_jit(ctx):
    with pytest.raises(TypeError, match=r"^hyperjax.generators.chunked: .*integer id of shape \(\), got shape \(\) "
                                        r"dtype float32"):
        jax.jit(ctx.ids.apply)(ctx.hp["ids"], jnp.float32(1.0))


@pytest.mark.parametrize("module,adapter,package,extra", [
    ("equinox", "from_equinox", "equinox", "equinox"),
    ("haiku", "from_haiku", "dm-haiku", "haiku"),
])
def test_missing_framework_says_what_to_install(monkeypatch, module, adapter, package, extra):
    monkeypatch.setitem(sys.modules, module, None)         # `import <module>` now raises ImportError
    # the adapters name themselves 'hyperjax.<adapter>' today, 'hyperjax.targets.<adapter>' once fixed (GAP rows)
    match = (rf"^hyperjax\.(targets\.)?{adapter}: needs {package}, which is not installed\. Install it with: "
             rf"pip install 'hyperjax\[{extra}\]' \(or pip install {package}\)")
    with pytest.raises(ImportError, match=match):
        getattr(hj.targets, adapter)(object())
