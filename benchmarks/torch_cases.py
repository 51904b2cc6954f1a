"""PyTorch side of `benchmarks.run_all`: hypnettorch and plain PyTorch versions of cases 1-3.

Imported only when torch is importable (the `compare` extra: torch==2.13.0, then
`pip install --no-deps hypnettorch hyper-nn hyperlight`). Sizes, batches and timing are run_all's, so both
frameworks see the same problem (rotating real digits batches). Each function returns *entries*
`{"name", "framework", "run", "final"}`: `run()` does one step (or forward) and waits for it; run_all times
the entries of a case interleaved, in rounds, so drift of a shared machine hits every row alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F



def environment() -> dict[str, Any]:
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    return {"torch": torch.__version__, "hypnettorch": version("hypnettorch"), "hyperlight": version("hyperlight"),
            "hyper-nn": version("hyper-nn"), "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()), "cuda_available": torch.cuda.is_available()}


class Runner:
    """Device, synchronisation and batch rotation for one framework side."""

    def __init__(self, device: str, batches: Sequence[tuple[np.ndarray, np.ndarray]]):
        self.device = torch.device(device)
        self.batches = [(torch.from_numpy(x).to(self.device), torch.from_numpy(y.astype(np.int64)).to(self.device))
                        for x, y in batches]
        self.count = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batches[self.count % len(self.batches)]
        self.count += 1
        return batch

    def entry(self, name: str, fn: Callable[[], Any], final: Callable[[], dict] | None = None) -> dict[str, Any]:
        def run():
            fn()
            self.sync()
        return {"name": name, "framework": "torch", "run": run, "final": final or dict}


# ---------------------------------------------------------------- plain PyTorch building blocks
class Hnet(torch.nn.Module):
    """e f[..., n_in] -> relu(e W0 + b0) W1 + b1: f[..., n_out] (the hand-written hypernetwork)."""

    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__()
        self.w0 = torch.nn.Parameter(torch.randn(hidden, n_in) / math.sqrt(n_in))
        self.b0 = torch.nn.Parameter(torch.zeros(hidden))
        self.w1 = torch.nn.Parameter(0.1 * torch.randn(n_out, hidden) / math.sqrt(hidden))
        self.b1 = torch.nn.Parameter(torch.zeros(n_out))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return F.linear(F.relu(F.linear(e, self.w0, self.b0)), self.w1, self.b1)


def mlp_shapes(dims: Sequence[int]) -> list[tuple[int, ...]]:
    """[(out, in), (out,), ...] in PyTorch layout."""
    shapes: list[tuple[int, ...]] = []
    for n_in, n_out in zip(dims[:-1], dims[1:]):
        shapes += [(n_out, n_in), (n_out,)]
    return shapes


def unflatten(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    out, offset = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(flat[offset:offset + n].view(s))
        offset += n
    return out


def mlp_forward(weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    n = len(weights) // 2
    for i in range(n):
        x = F.linear(x, weights[2 * i], weights[2 * i + 1])
        if i < n - 1:
            x = F.relu(x)
    return x


ADAM_VARIANTS = {"fused": {"fused": True}, "default": {}}
ADAM_LABELS = {"fused": "Adam(fused=True)", "default": "Adam() default",
               "default+ftz": "Adam() default + set_flush_denormal(True)"}


def _quiet(build: Callable[[], Any]) -> Any:
    """Call `build()` with stdout silenced (hypnettorch prints a summary for every network it makes)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return build()


def _train_entries(prefix: str, make: Callable[[], tuple[list[torch.nn.Parameter], Callable[[], torch.Tensor]]],
                   runner: Runner, variants: Sequence[str], lr: float = 1e-3) -> list[dict]:
    """One entry per Adam variant, each on a fresh model: `loss = loss_fn(); backward; Adam step`.

    variants: "fused" (Adam(fused=True), PyTorch's fastest here), "default" (Adam()), "default+ftz"
    (Adam() with torch.set_flush_denormal(True) around each step, restored after it; CPU only).
    """
    entries = []
    for variant in variants:
        ftz = variant == "default+ftz"
        if ftz and runner.device.type != "cpu":
            continue
        torch.manual_seed(0)
        params, loss_fn = _quiet(make)
        opt = torch.optim.Adam(params, lr=lr, **ADAM_VARIANTS[variant.split("+")[0]])
        last = [float("nan")]

        def step(opt=opt, loss_fn=loss_fn, last=last, ftz=ftz):
            if ftz:
                torch.set_flush_denormal(True)
            try:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn()
                loss.backward()
                opt.step()
                last[0] = loss.detach()
            finally:
                if ftz:
                    torch.set_flush_denormal(False)

        def final(params=params, last=last, ftz=ftz):
            out = {"final_loss": float(last[0]), "trainable_params": int(sum(p.numel() for p in params))}
            if ftz:
                out["flush_denormal_supported"] = bool(torch.set_flush_denormal(True))
                torch.set_flush_denormal(False)
            return out

        entries.append({**runner.entry(f"{prefix}, {ADAM_LABELS[variant]}", step, final), "optimizer": variant})
    return entries


# ---------------------------------------------------------------- case 1: dense
def case_dense(runner: Runner, dims: Sequence[int], emb: int, hidden: int, variants: Sequence[str]) -> list[dict]:
    """hypnettorch HMLP + mnets.MLP, and the same network written in plain PyTorch."""
    from hypnettorch.hnets import HMLP
    from hypnettorch.mnets import MLP

    dev = runner.device
    n_target = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))

    def hypnettorch_model():
        mnet = MLP(n_in=dims[0], n_out=dims[-1], hidden_layers=list(dims[1:-1]), no_weights=True).to(dev)
        hnet = HMLP(mnet.param_shapes, uncond_in_size=0, cond_in_size=emb, layers=[hidden], num_cond_embs=1).to(dev)

        def loss_fn():
            x, y = runner.next_batch()
            return F.cross_entropy(mnet.forward(x, weights=hnet.forward(cond_id=0)), y)
        return list(hnet.parameters()), loss_fn

    def plain_model():
        hnet = Hnet(emb, hidden, n_target).to(dev)
        task_emb = torch.nn.Parameter(torch.randn(emb, device=dev))
        shapes = mlp_shapes(dims)

        def loss_fn():
            x, y = runner.next_batch()
            return F.cross_entropy(mlp_forward(unflatten(hnet(task_emb), shapes), x), y)
        return [*hnet.parameters(), task_emb], loss_fn

    return (_train_entries("hypnettorch HMLP + mnets.MLP", hypnettorch_model, runner, variants)
            + _train_entries("plain PyTorch", plain_model, runner, [v for v in variants if v != "default+ftz"]))


# ---------------------------------------------------------------- case 2: chunked
def case_chunked(runner: Runner, dims: Sequence[int], emb: int, hidden: int, chunk: int,
                 variants: Sequence[str]) -> list[dict]:
    """hypnettorch ChunkedHMLP, and the batched chunk matmul written in plain PyTorch."""
    from hypnettorch.hnets import ChunkedHMLP
    from hypnettorch.mnets import MLP

    dev = runner.device
    n_target = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    n_chunks = -(-n_target // chunk)

    def hypnettorch_model():
        mnet = MLP(n_in=dims[0], n_out=dims[-1], hidden_layers=list(dims[1:-1]), no_weights=True).to(dev)
        hnet = ChunkedHMLP(mnet.param_shapes, chunk_size=chunk, chunk_emb_size=emb, cond_in_size=emb,
                           layers=[hidden], num_cond_embs=1).to(dev)

        def loss_fn():
            x, y = runner.next_batch()
            return F.cross_entropy(mnet.forward(x, weights=hnet.forward(cond_id=0)), y)
        return list(hnet.parameters()), loss_fn

    def plain_model():
        hnet = Hnet(2 * emb, hidden, chunk).to(dev)
        chunk_embs = torch.nn.Parameter(torch.randn(n_chunks, emb, device=dev))
        task_emb = torch.nn.Parameter(torch.randn(emb, device=dev))
        shapes = mlp_shapes(dims)

        def loss_fn():
            x, y = runner.next_batch()
            inp = torch.cat([task_emb.expand(n_chunks, emb), chunk_embs], dim=1)
            flat = hnet(inp).reshape(-1)[:n_target]
            return F.cross_entropy(mlp_forward(unflatten(flat, shapes), x), y)
        return [*hnet.parameters(), chunk_embs, task_emb], loss_fn

    return (_train_entries("hypnettorch ChunkedHMLP", hypnettorch_model, runner, variants)
            + _train_entries("plain PyTorch (batched chunk matmul)", plain_model, runner,
                             [v for v in variants if v != "default+ftz"]))


# ---------------------------------------------------------------- case 3: per-sample weights
def case_per_sample(runner: Runner, dims: tuple[int, int, int], emb: int, hidden: int, conds: np.ndarray
                    ) -> tuple[list[dict], dict]:
    """Forward only, under torch.inference_mode(): 64 conds -> 64 weight sets, each on its own example.

    Returns (entries, checks) with checks = max |vmap - bmm| over one batch.
    """
    from torch.func import functional_call, vmap

    dev = runner.device
    d_in, d_hid, d_out = dims
    n_target = d_in * d_hid + d_hid + d_hid * d_out + d_out
    torch.manual_seed(0)
    hnet = Hnet(emb, hidden, n_target).to(dev)
    target = torch.nn.Sequential(torch.nn.Linear(d_in, d_hid), torch.nn.ReLU(), torch.nn.Linear(d_hid, d_out)).to(dev)
    names = [n for n, _ in target.named_parameters()]
    shapes = mlp_shapes(dims)
    c = torch.from_numpy(conds).to(dev)

    def single(ci, xi):
        return functional_call(target, dict(zip(names, unflatten(hnet(ci), shapes))), (xi,))

    vsingle = vmap(single)

    def func_vmap():
        x, _ = runner.next_batch()
        return vsingle(c, x)

    def bmm(x=None):
        x = runner.next_batch()[0] if x is None else x
        flat = hnet(c)
        n, o = flat.shape[0], 0
        w1 = flat[:, o:o + d_hid * d_in].view(n, d_hid, d_in); o += d_hid * d_in
        b1 = flat[:, o:o + d_hid]; o += d_hid
        w2 = flat[:, o:o + d_out * d_hid].view(n, d_out, d_hid); o += d_out * d_hid
        b2 = flat[:, o:o + d_out]
        h = F.relu(torch.bmm(w1, x[:, :, None])[..., 0] + b1)
        return torch.bmm(w2, h[:, :, None])[..., 0] + b2

    def inference(fn):
        def run():
            with torch.inference_mode():
                fn()
        return run

    with torch.inference_mode():
        x0 = runner.batches[0][0]
        diff = float((vsingle(c, x0) - bmm(x0)).abs().max())
    entries = [runner.entry("torch.func.vmap + functional_call", inference(func_vmap)),
               runner.entry("torch hand-batched bmm", inference(bmm))]
    return entries, {"max_abs_diff_torch_vmap_vs_bmm": diff}


# ---------------------------------------------------------------- matmul peak
def matmul_peak(device: str, n: int) -> dict[str, Any]:
    """Entry for an n x n float32 torch.mm."""
    dev = torch.device(device)
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    return Runner(device, []).entry(f"torch.mm {n}x{n} float32", lambda: torch.mm(a, b))
