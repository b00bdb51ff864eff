"""The math of merging single-concept weights into one model, one linear layer at a time.

Conventions (those of torch's `F.linear`): a weight W is [out, in]; activations are rows x [..., in]
and the layer computes y = x W^T (bias left out: both methods fit outputs minus bias). Stacking a
concept's activation rows gives X_i [N_i, in], and its Gram matrix is G_i = X_i^T X_i [in, in] (the
papers write features as columns, X_i X_i^T: the same matrix).

1. Gradient fusion, Mix-of-Show (Gu et al., NeurIPS 2023; github:TencentARC/Mix-of-Show,
   `gradient_fusion.py`: `update_quasi_newton`, `merge_*`). Concept i brings its fused LoRA weight
   W_i = W0 + dW_i (MoS: W0 + alpha_i B_i A_i, alpha chosen by the caller) and the inputs X_i the layer
   sees when concept i's own model runs on concept i's prompts (or its own sample). The fused W fits
   every concept's outputs on its own inputs, rows pooled over concepts:

       min_W  L(W) = 1/(N out) sum_i ||X_i W^T - X_i W_i^T||_F^2,      N = sum_i N_i.

   MoS has no regulariser toward W0: it starts LBFGS at W0 and stops after a fixed number of
   iterations (500 for the text encoder and the cross-attention K/V, 50 for the other UNet layers).
   Setting the gradient to zero gives the normal equations, with G = sum_i G_i and D = sum_i dW_i G_i:

       (W - W0) G = D.

   If G is invertible W = W0 + D G^-1 = (sum_i W_i G_i) G^-1. If it is not (K/V see 6 token vectors
   per concept in a 768-d space) the minimisers form an affine set, and the one LBFGS converges to
   from W0 is its point nearest W0: every gradient, (W - W0) G - D, has its rows in the range of G,
   so the iterates never leave W0 + {rows in range(G)}. That point is W0 + D G^+ (Moore-Penrose
   pseudo-inverse), which `closed_form` computes from G and D alone: activations can be streamed
   through a `GramAccumulator` and dropped. (This closed form is ours, not MoS's.)

2. Constrained merge of cross-attention K/V, Custom Diffusion (Kumari et al., CVPR 2023;
   github:adobe-research/custom-diffusion, `src/diffusers_composenW.py`: `gdupdateWexact`, `compose`).
   Rows of R [n, in] are text-encoder features of ordinary (regularisation) captions, S = R^T R;
   rows of C [m, in] are the features of every concept's prompts, stacked over concepts, and
   V [m, out] their targets, V_i = C_i W_i^T under concept i's fine-tuned weight. Keep W's outputs on
   ordinary captions, reproduce every concept's outputs exactly:

       min_W ||R W^T - R W0^T||_F^2   subject to   C W^T = V.

   With Lagrange multipliers: (W - W0) S = L C, and the constraint fixes L, so

       W = W0 + (V^T - W0 C^T) (C S^-1 C^T)^-1 C S^-1,

   which needs S invertible (n >= in independent caption features) and C of full row rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

# Mix-of-Show's solver settings (gradient_fusion.py, identical on its research_branch):
# optim.LBFGS(lr=1, max_iter=iters, history_size=25, line_search_fn="strong_wolfe",
# tolerance_grad=1e-16, tolerance_change=1e-16), one optimizer.step, keeping the best W seen.
MOS_TEXT_ITERS = 500  # --optimize_textenc_iters: text-encoder layers and the UNet's cross-attention K/V
MOS_UNET_ITERS = 50  # --optimize_unet_iters: every other UNet LoRA layer
MOS_HISTORY = 25
MOS_LR = 1.0
MOS_TOLERANCE = 1e-16
SOLVERS = ("closed_form", "lbfgs")


class GramAccumulator:
    """G = sum over rows x of x^T x, [in, in], streamed: `update` takes activations of any leading shape
    [..., in], adds their Gram and lets them go; `rows` counts the rows. While there are no more rows than
    input features they are also kept (`kept_rows`, float64: never more memory than the Gram itself), so that
    `closed_form_fusion` can solve in the rows' space (K/V: 6 rows a concept against 768 features); beyond
    that, the only tensor kept is `gram`.

    Accumulates in float64 by default: the sum runs over thousands of rows (MoS: 20 steps x 4096 tokens
    per UNet layer), and the solve amplifies its rounding error by G's condition number, which is large
    for real activations. float32 halves the memory and is faster on consumer GPUs; say so when used."""

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
        if in_features <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.gram = torch.zeros(in_features, in_features, dtype=dtype, device=device)
        self.rows = 0
        self.input_eps = 0.0  # the coarsest rounding of the activations seen: what the Gram can resolve
        self._kept: list[torch.Tensor] | None = []

    @property
    def kept_rows(self) -> torch.Tensor | None:
        """Every row seen, [rows, in], while rows <= in; None beyond."""
        if self._kept is None:
            return None
        return torch.cat(self._kept) if self._kept else self.gram.new_zeros(0, self.in_features)

    @property
    def in_features(self) -> int:
        return self.gram.shape[0]

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> GramAccumulator:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"activations must be [..., {self.in_features}], got {tuple(x.shape)}")
        self.input_eps = max(self.input_eps, torch.finfo(x.dtype).eps if x.is_floating_point() else 0.0)
        x = x.detach().reshape(-1, self.in_features).to(self.gram.device, self.gram.dtype)
        self.gram.addmm_(x.T, x)
        self.rows += x.shape[0]
        if self._kept is not None:
            self._kept = self._kept + [x.clone()] if self.rows <= self.in_features else None
        return self

    @classmethod
    def of(cls, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> GramAccumulator:
        """The Gram of activations already in memory."""
        if x.ndim == 0:
            raise ValueError("activations must be [..., in], got a scalar")
        return cls(x.shape[-1], dtype=dtype, device=x.device).update(x)


@dataclass
class ConceptLayer:
    """What one concept brings to one layer's fusion: its weight W_i = W0 + dW_i [out, in], and either its
    inputs X_i [..., in] (needed by the LBFGS solver) or their Gram G_i (enough for the closed form)."""

    weight: torch.Tensor
    gram: torch.Tensor | GramAccumulator | None = None
    inputs: torch.Tensor | None = None


def _check_weights(w0: torch.Tensor, weights: Sequence[torch.Tensor]) -> None:
    if w0.ndim != 2:
        raise ValueError(f"w0 must be a 2-D weight [out, in], got shape {tuple(w0.shape)}")
    if len(weights) == 0:
        raise ValueError("no concepts to fuse")
    for i, w in enumerate(weights):
        if w.shape != w0.shape:
            raise ValueError(f"concept {i}: weight shape {tuple(w.shape)} differs from w0's {tuple(w0.shape)}")


def closed_form_fusion(w0: torch.Tensor, weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor],
                       rtol: float | None = None, ridge: float = 0.0,
                       rows: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """W = W0 + D G^+ with G = sum_i G_i, D = sum_i (W_i - W0) G_i: the minimiser of MoS's objective
    nearest W0, i.e. the limit of MoS's LBFGS from W0 (module docstring). Computed in float64.

    G^+ through G's eigendecomposition: eigenvalues at most rtol * max eigenvalue count as zero (their
    directions are not seen by any concept, so W keeps W0 there). Default rtol = in * eps of the Grams'
    dtype, numpy's/torch's pinv rule: it drops only rounding noise. `ridge` > 0 instead solves
    W = W0 + D (G + ridge * mean_eig(G) I)^-1, a Tikhonov pull toward W0 (scale-free: relative to G's
    mean eigenvalue) for activations whose small eigen-directions are noise rather than signal.

    As in MoS, every row counts once, so a concept with more rows weighs more; scale G_i by 1/N_i to
    weigh concepts equally.

    `rows` (each concept's activations X_i, optional): with fewer rows N in all than inputs, the same W is
    solved in the rows' space, W = W0 + Y^T (X X^T)^+ X with X the stacked rows and Y = [X_i dW_i^T]
    (D G^+ = Y^T X (X^T X)^+ = Y^T (X X^T)^+ X; X X^T has G's nonzero eigenvalues, so the cutoff is the
    same): an N x N eigendecomposition in place of an in x in one."""
    _check_weights(w0, weights)
    if len(grams) != len(weights):
        raise ValueError(f"{len(weights)} weights but {len(grams)} Gram matrices")
    n_in = w0.shape[1]
    for i, g in enumerate(grams):
        if g.shape != (n_in, n_in):
            raise ValueError(f"concept {i}: Gram shape {tuple(g.shape)}, expected [in, in] = [{n_in}, {n_in}]")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    rtol = n_in * torch.finfo(grams[0].dtype).eps if rtol is None else rtol

    f64 = dict(dtype=torch.float64, device=w0.device)
    base = w0.to(**f64)
    if rows is not None and ridge == 0 and sum(len(x) for x in rows) < n_in:
        return _row_space_fusion(base, weights, rows, rtol).to(w0.dtype)
    gram = torch.zeros(n_in, n_in, **f64)
    d = torch.zeros_like(base)
    for w, g in zip(weights, grams):
        g = g.to(**f64)
        gram += g
        d += (w.to(**f64) - base) @ g
    gram = (gram + gram.T) / 2  # exact symmetry for eigh/cholesky; the sum is symmetric up to rounding
    scale = gram.diagonal().sum() / n_in  # mean eigenvalue
    if scale <= 0:
        raise ValueError("the Gram matrices are zero: no activations were accumulated")

    if ridge > 0:
        # G + ridge I is symmetric positive definite: Cholesky, then W - W0 = D (G + ridge I)^-1.
        factor = torch.linalg.cholesky(gram + ridge * scale * torch.eye(n_in, **f64))
        delta = torch.cholesky_solve(d.T, factor).T
    else:
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)
        keep = eigenvalues > rtol * eigenvalues[-1]  # eigh sorts ascending
        u = eigenvectors[:, keep]
        delta = ((d @ u) / eigenvalues[keep]) @ u.T  # D U diag(1/lambda) U^T = D G^+
    return (base + delta).to(w0.dtype)


def _row_space_fusion(base: torch.Tensor, weights: Sequence[torch.Tensor], rows: Sequence[torch.Tensor],
                      rtol: float) -> torch.Tensor:
    """`closed_form_fusion` through the rows: W0 + Y^T (X X^T)^+ X, float64."""
    xs = [x.reshape(-1, base.shape[1]).to(base) for x in rows]
    x = torch.cat(xs)
    y = torch.cat([xi @ (w.to(base) - base).T for xi, w in zip(xs, weights)])  # [N, out]: each row's target change
    if not len(x) or not (x.abs().sum() > 0):
        raise ValueError("the Gram matrices are zero: no activations were accumulated")
    eigenvalues, eigenvectors = torch.linalg.eigh(x @ x.T)
    keep = eigenvalues > rtol * eigenvalues[-1]
    u = eigenvectors[:, keep]
    return base + (((y.T @ u) / eigenvalues[keep]) @ u.T) @ x


def fusion_loss(w: torch.Tensor, weights: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """MoS's objective: the mean squared error between X_i W^T and X_i W_i^T, rows pooled over concepts."""
    xs = [x.reshape(-1, w.shape[1]).to(w.dtype) for x in inputs]
    x = torch.cat(xs)
    y = torch.cat([xi @ wi.to(w.dtype).T for xi, wi in zip(xs, weights)])
    return F.mse_loss(x @ w.T, y)


def lbfgs_fusion(w0: torch.Tensor, weights: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
                 iters: int = MOS_TEXT_ITERS, history_size: int = MOS_HISTORY, lr: float = MOS_LR,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mix-of-Show's solver, as in its `update_quasi_newton`: LBFGS on W from W0 over all concepts'
    rows at once, strong-Wolfe line search, one `step` of `iters` iterations (torch's default max_eval,
    1.25 x iters, bounds the function evaluations), and the W of the lowest loss seen is returned.
    Defaults are MoS's: 500 iterations (text encoder, K/V; pass MOS_UNET_ITERS = 50 for the other UNet
    layers), history 25, lr 1, float32. One difference: MoS records its targets from the fp16 model's
    forward pass, here they are X_i W_i^T computed in `dtype`."""
    _check_weights(w0, weights)
    if len(inputs) != len(weights):
        raise ValueError(f"{len(weights)} weights but {len(inputs)} input tensors")
    n_in = w0.shape[1]
    for i, x in enumerate(inputs):
        if x.ndim == 0 or x.shape[-1] != n_in:
            raise ValueError(f"concept {i}: inputs must be [..., {n_in}], got {tuple(x.shape)}")
    if iters <= 0:
        raise ValueError(f"iters must be positive, got {iters}")

    xs = [x.detach().reshape(-1, n_in).to(w0.device, dtype) for x in inputs]
    x = torch.cat(xs)
    y = torch.cat([xi @ wi.detach().to(w0.device, dtype).T for xi, wi in zip(xs, weights)])
    w = w0.detach().to(dtype).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w], lr=lr, max_iter=iters, history_size=history_size,
                                  line_search_fn="strong_wolfe", tolerance_grad=MOS_TOLERANCE,
                                  tolerance_change=MOS_TOLERANCE)
    best = {"loss": math.inf, "w": w.detach().clone()}

    def closure():
        optimizer.zero_grad()
        loss = F.mse_loss(x @ w.T, y)
        if loss.item() < best["loss"]:  # MoS keeps the best iterate: the line search may end on a worse one
            best["loss"], best["w"] = loss.item(), w.detach().clone()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers often run under no_grad (hooks, sampling)
        optimizer.step(closure)
    return best["w"].to(w0.dtype)


def activation_rtol(in_features: int, eps: float) -> float:
    """The relative eigenvalue below which a Gram of activations rounded to `eps` (their dtype's) resolves
    nothing: rounding X to X + E, |E|_F <= eps |X|_F <= eps sqrt(in) |X|_2, moves G = X^T X by at most
    2 |X|_2 |E|_2 <= 2 sqrt(in) eps lambda_max (Weyl). Float32 activations of SD's 768 features: 6.6e-6."""
    return 2 * math.sqrt(in_features) * eps


def fuse_layer(w0: torch.Tensor, concepts: Sequence[ConceptLayer], solver: str = "closed_form",
               **options) -> torch.Tensor:
    """Gradient fusion of one linear layer (module docstring, 1). `solver`: "closed_form" (default; uses
    each concept's `gram`, or the Gram of its `inputs`; options rtol, ridge) or "lbfgs" (MoS's iterative
    solver; needs `inputs`; options iters, history_size, lr, dtype). Returns W in w0's dtype.

    The closed form's default rtol is set by the activations' precision, not the Gram's (`activation_rtol`):
    eigen-directions below it are rounding noise of the activations, and inverting them moves W far along
    directions no concept really sees (LBFGS from W0 leaves W0 there)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: expected one of {', '.join(SOLVERS)}")
    weights = [c.weight for c in concepts]
    _check_weights(w0, weights)
    if solver == "lbfgs":
        missing = [i for i, c in enumerate(concepts) if c.inputs is None]
        if missing:
            raise ValueError(f"the lbfgs solver needs inputs, missing for concepts {missing}")
        return lbfgs_fusion(w0, weights, [c.inputs for c in concepts], **options)
    accumulators = []
    for i, c in enumerate(concepts):
        if isinstance(c.gram, GramAccumulator):
            accumulators.append(c.gram)
        elif c.gram is not None:
            accumulators.append(None)
        elif c.inputs is not None:
            if c.inputs.ndim == 0 or c.inputs.shape[-1] != w0.shape[1]:
                raise ValueError(f"concept {i}: inputs must be [..., {w0.shape[1]}], got {tuple(c.inputs.shape)}")
            accumulators.append(GramAccumulator.of(c.inputs))
        else:
            raise ValueError(f"concept {i}: needs a gram or inputs")
    grams = [a.gram if a is not None else c.gram for a, c in zip(accumulators, concepts)]
    input_eps = max((a.input_eps for a in accumulators if a is not None), default=0.0)
    if "rtol" not in options and "ridge" not in options and input_eps > 0:
        options = {**options, "rtol": activation_rtol(w0.shape[1], input_eps)}
    kept = [a.kept_rows if a is not None else None for a in accumulators]
    if all(rows is not None for rows in kept):
        options = {**options, "rows": kept}
    return closed_form_fusion(w0, weights, grams, **options)


def concept_targets(weight: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C_i, V_i) for `custom_diffusion_merge`: concept i's prompt features C_i [m_i, in] and their
    outputs under concept i's fine-tuned K or V weight, V_i = C_i W_i^T [m_i, out]."""
    c = embeddings.reshape(-1, embeddings.shape[-1])
    return c, c.to(weight.dtype) @ weight.T


def custom_diffusion_merge(w0: torch.Tensor, reg_embeddings: torch.Tensor | GramAccumulator,
                           targets: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Custom Diffusion's constrained closed-form merge of one cross-attention K or V weight (module
    docstring, 2): W = W0 + (V^T - W0 C^T) (C S^-1 C^T)^-1 C S^-1, S = R^T R.

    w0: [out, in]; reg_embeddings: R, rows [..., in] (CD: features of 200 ordinary captions, every
    position but BOS), or a GramAccumulator of them; targets: per concept (C_i [m_i, in], V_i [m_i, out]),
    see `concept_targets`. Duplicate rows of C are dropped, keeping the first, as CD does (two concepts'
    prompts can encode identically); the rest must be linearly independent. Computed in float64 with
    Cholesky factorisations (S and C S^-1 C^T are symmetric positive definite when the merge is
    well-posed); returns W in w0's dtype."""
    if w0.ndim != 2:
        raise ValueError(f"w0 must be a 2-D weight [out, in], got shape {tuple(w0.shape)}")
    n_out, n_in = w0.shape
    if len(targets) == 0:
        raise ValueError("no concept targets to merge")
    f64 = dict(dtype=torch.float64, device=w0.device)

    if isinstance(reg_embeddings, GramAccumulator):
        if reg_embeddings.in_features != n_in:
            raise ValueError(f"reg_embeddings Gram is [{reg_embeddings.in_features}]^2, expected in = {n_in}")
        s = reg_embeddings.gram.to(**f64)
    else:
        if reg_embeddings.ndim == 0 or reg_embeddings.shape[-1] != n_in:
            raise ValueError(f"reg_embeddings must be [..., {n_in}], got {tuple(reg_embeddings.shape)}")
        r = reg_embeddings.reshape(-1, n_in).to(**f64)
        s = r.T @ r

    cs, vs = [], []
    for i, (c, v) in enumerate(targets):
        c, v = c.reshape(-1, c.shape[-1]), v.reshape(-1, v.shape[-1])
        if c.shape[1] != n_in:
            raise ValueError(f"concept {i}: embeddings C must be [m, {n_in}], got {tuple(c.shape)}")
        if v.shape != (c.shape[0], n_out):
            raise ValueError(f"concept {i}: targets V must be [m, out] = [{c.shape[0]}, {n_out}], got {tuple(v.shape)}")
        cs.append(c.to(**f64))
        vs.append(v.to(**f64))
    c, v = torch.cat(cs), torch.cat(vs)
    _, inverse = torch.unique(c, dim=0, return_inverse=True)
    seen, first = set(), []  # the index of each distinct row's first copy
    for j, k in enumerate(inverse.tolist()):
        if k not in seen:
            seen.add(k)
            first.append(j)
    c, v = c[first], v[first]
    # Checked here, not by the Cholesky below: rounding can let a singular C S^-1 C^T through. More than
    # `in` rows are always dependent (CD: at most 768 constraints per layer).
    rank = int(torch.linalg.matrix_rank(c))
    if rank < c.shape[0]:
        raise ValueError(f"target embeddings are linearly dependent (rank {rank} < {c.shape[0]} distinct rows): "
                         "the constraints C W^T = V cannot all hold")

    s_factor, info = torch.linalg.cholesky_ex(s)
    if info != 0:
        rank = int(torch.linalg.matrix_rank(s))
        raise ValueError(f"reg_embeddings span rank {rank} < in = {n_in}: S = R^T R is singular; use more "
                         "regularisation captions (CD: 200)")
    s_inv_ct = torch.cholesky_solve(c.T, s_factor)  # S^-1 C^T, [in, m]
    e_factor, info = torch.linalg.cholesky_ex(c @ s_inv_ct)  # C S^-1 C^T, [m, m]
    if info != 0:
        raise ValueError("target embeddings are nearly linearly dependent: C S^-1 C^T is not numerically "
                         "positive definite")
    base = w0.to(**f64)
    residual = v.T - base @ c.T  # V^T - W0 C^T, [out, m]
    delta = torch.cholesky_solve(residual.T, e_factor).T @ s_inv_ct.T  # residual (C S^-1 C^T)^-1 C S^-1
    return (base + delta).to(w0.dtype)
