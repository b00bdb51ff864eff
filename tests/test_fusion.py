"""Known answers of the multi-concept merge math (dreamstudy.multi.fusion) on small random matrices."""

import pytest
import torch

from dreamstudy.multi.fusion import (
    ConceptLayer,
    GramAccumulator,
    closed_form_fusion,
    concept_targets,
    custom_diffusion_merge,
    fuse_layer,
    fusion_loss,
    lbfgs_fusion,
)

F64 = torch.float64


def lora_weight(w0: torch.Tensor, rank: int, generator: torch.Generator) -> torch.Tensor:
    """W0 + B A, a random rank-`rank` update (a fused LoRA)."""
    out, n_in = w0.shape
    b = torch.randn(out, rank, generator=generator, dtype=w0.dtype)
    a = torch.randn(rank, n_in, generator=generator, dtype=w0.dtype)
    return w0 + 0.1 * b @ a


def problem(n_in=12, out=6, rows=(30, 30), seed=0):
    """W0, per-concept LoRA weights and activations, float64."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(out, n_in, generator=g, dtype=F64)
    weights = [lora_weight(w0, 2, g) for _ in rows]
    inputs = [torch.randn(n, n_in, generator=g, dtype=F64) for n in rows]
    return w0, weights, inputs


@pytest.mark.parametrize("rows", [(30, 30), (4, 3)], ids=["full-rank", "rank-deficient"])
def test_closed_form_equals_lbfgs_to_convergence(rows):
    # Rank-deficient: 7 rows in a 12-d input space, so the minimisers form an affine set; LBFGS from W0
    # reaches the one nearest W0, which is what the pseudo-inverse gives.
    w0, weights, inputs = problem(rows=rows)
    concepts = [ConceptLayer(w, inputs=x) for w, x in zip(weights, inputs)]
    exact = fuse_layer(w0, concepts)
    iterative = fuse_layer(w0, concepts, solver="lbfgs", iters=500, dtype=F64)
    assert torch.allclose(iterative, exact, rtol=0, atol=1e-7)  # float64 LBFGS to its tolerances: ~1e-10
    assert fusion_loss(exact, weights, inputs) <= fusion_loss(iterative, weights, inputs) + 1e-12


def test_one_concept_full_rank_gives_its_weight():
    w0, (w1,), (x1,) = problem(rows=(50,))
    fused = fuse_layer(w0, [ConceptLayer(w1, inputs=x1)])
    assert torch.allclose(fused, w1, rtol=0, atol=1e-10)


def test_orthogonal_input_subspaces_each_reproduced():
    g = torch.Generator().manual_seed(1)
    w0, weights, _ = problem(n_in=12, rows=(1, 1), seed=1)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=F64))
    # concept 1 lives in span(q[:, :5]), concept 2 in span(q[:, 5:9]): orthogonal, together not full rank
    x1 = torch.randn(20, 5, generator=g, dtype=F64) @ q[:, :5].T
    x2 = torch.randn(20, 4, generator=g, dtype=F64) @ q[:, 5:9].T
    fused = fuse_layer(w0, [ConceptLayer(weights[0], inputs=x1), ConceptLayer(weights[1], inputs=x2)])
    assert torch.allclose(x1 @ fused.T, x1 @ weights[0].T, rtol=0, atol=1e-10)
    assert torch.allclose(x2 @ fused.T, x2 @ weights[1].T, rtol=0, atol=1e-10)
    # and W0 is kept on the directions neither concept sees
    unseen = q[:, 9:].T
    assert torch.allclose(unseen @ fused.T, unseen @ w0.T, rtol=0, atol=1e-10)


def test_directions_below_the_activations_precision_keep_w0():
    """A direction whose share of the activations is below their dtype's rounding is noise, not signal: the
    closed form's default cutoff (fusion.activation_rtol of the inputs' dtype) keeps W0 there for float32
    inputs, and fits it for the same values in float64."""
    g = torch.Generator().manual_seed(3)
    w0, (w1,), _ = problem(rows=(1,), seed=3)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=F64))
    scales = torch.ones(12, dtype=F64)
    scales[-1] = 1e-5  # eigenvalue 1e-10 of the largest: above float64's rounding, below float32's
    x = (torch.randn(40, 12, generator=g, dtype=F64) * scales) @ q.T
    weak = q[:, -1:].T
    coarse = fuse_layer(w0, [ConceptLayer(w1, inputs=x.float())])
    fine = fuse_layer(w0, [ConceptLayer(w1, inputs=x)])
    assert torch.allclose(weak @ coarse.T.to(F64), weak @ w0.T, rtol=0, atol=1e-5)
    assert torch.allclose(fine, w1, rtol=0, atol=1e-4)  # rounding amplified by the condition number, 1e10
    assert not torch.allclose(weak @ w1.T, weak @ w0.T, rtol=0, atol=1e-2)  # the two answers differ there


def test_identical_loras_give_their_weight():
    w0, (w1, _), inputs = problem(rows=(8, 9))  # each alone rank-deficient, together full rank
    fused = fuse_layer(w0, [ConceptLayer(w1, inputs=x) for x in inputs])
    assert torch.allclose(fused, w1, rtol=0, atol=1e-10)


def test_gram_streamed_in_chunks_equals_one_shot_and_keeps_no_activations():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 37, 16, generator=g)  # leading shape [batch, tokens]
    one_shot = x.reshape(-1, 16).to(F64).T @ x.reshape(-1, 16).to(F64)
    acc = GramAccumulator(16)
    for chunk in x.reshape(-1, 16).split(10):
        acc.update(chunk)
    assert acc.rows == 3 * 37
    assert torch.allclose(acc.gram, one_shot, rtol=1e-12, atol=1e-12)
    assert torch.allclose(GramAccumulator.of(x).gram, one_shot, rtol=1e-12, atol=1e-12)
    tensors = [v for v in vars(acc).values() if isinstance(v, torch.Tensor)]
    assert [tuple(t.shape) for t in tensors] == [(16, 16)] and acc.kept_rows is None  # 111 rows > 16 features
    assert acc.gram.dtype == F64
    # a streamed Gram is all the closed form needs
    w0, weights, inputs = problem(n_in=16, rows=(40, 40))
    grams = [GramAccumulator(16) for _ in inputs]
    for acc, x in zip(grams, inputs):
        for chunk in x.split(7):
            acc.update(chunk)
    streamed = fuse_layer(w0, [ConceptLayer(w, gram=a) for w, a in zip(weights, grams)])
    direct = fuse_layer(w0, [ConceptLayer(w, inputs=x) for w, x in zip(weights, inputs)])
    assert torch.allclose(streamed, direct, rtol=0, atol=1e-12)


def test_few_rows_are_solved_in_their_space_as_through_the_gram():
    """With fewer rows than features (K/V: 6 a concept) the accumulator keeps them, and the closed form solves
    an N x N problem in place of the in x in one: the same W."""
    w0, weights, inputs = problem(n_in=16, rows=(5, 4))
    accumulators = [GramAccumulator(16).update(x[:3]).update(x[3:]) for x in inputs]
    assert [tuple(a.kept_rows.shape) for a in accumulators] == [(5, 16), (4, 16)]
    grams = [a.gram for a in accumulators]
    rtol = 16 * torch.finfo(F64).eps
    through_rows = closed_form_fusion(w0, weights, grams, rtol=rtol, rows=[a.kept_rows for a in accumulators])
    through_gram = closed_form_fusion(w0, weights, grams, rtol=rtol)
    assert torch.allclose(through_rows, through_gram, rtol=0, atol=1e-10)
    assert torch.allclose(fuse_layer(w0, [ConceptLayer(w, gram=a) for w, a in zip(weights, accumulators)]),
                          through_gram, rtol=0, atol=1e-10)
    assert GramAccumulator(4).update(torch.randn(5, 4)).kept_rows is None  # more rows than features: Gram only


def test_ridge_tends_to_the_pseudo_inverse():
    w0, weights, inputs = problem(rows=(4, 3))
    grams = [GramAccumulator.of(x).gram for x in inputs]
    exact = closed_form_fusion(w0, weights, grams)
    assert torch.allclose(closed_form_fusion(w0, weights, grams, ridge=1e-9), exact, rtol=0, atol=1e-6)
    assert not torch.allclose(closed_form_fusion(w0, weights, grams, ridge=1.0), exact, rtol=0, atol=1e-3)


def test_lbfgs_in_float32_with_mos_defaults_is_close():
    w0, weights, inputs = problem(rows=(30, 30))
    w0, weights, inputs = w0.float(), [w.float() for w in weights], [x.float() for x in inputs]
    fused = lbfgs_fusion(w0, weights, inputs)  # MoS: float32, 500 iterations, history 25
    assert fused.dtype == torch.float32
    exact = fuse_layer(w0, [ConceptLayer(w, inputs=x) for w, x in zip(weights, inputs)])
    assert torch.allclose(fused, exact, rtol=0, atol=1e-4)


def cd_problem(n_in=16, out=8, n_reg=60, m=(3, 2), dtype=torch.float32, seed=3):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(out, n_in, generator=g, dtype=dtype)
    reg = torch.randn(n_reg, n_in, generator=g, dtype=dtype)
    targets = [concept_targets(lora_weight(w0, 2, g), torch.randn(k, n_in, generator=g, dtype=dtype)) for k in m]
    return w0, reg, targets


def test_custom_diffusion_merge_meets_its_constraints():
    w0, reg, targets = cd_problem()
    merged = custom_diffusion_merge(w0, reg, targets)
    assert merged.dtype == torch.float32
    for c, v in targets:
        assert torch.allclose(c @ merged.T, v, rtol=1e-4, atol=1e-4)
    # a streamed Gram of the regularisation features gives the same W
    assert torch.allclose(custom_diffusion_merge(w0, GramAccumulator.of(reg.reshape(4, 15, 16)), targets),
                          merged, rtol=0, atol=1e-6)


def test_custom_diffusion_merge_is_the_constrained_minimum():
    w0, reg, targets = cd_problem(dtype=F64)
    merged = custom_diffusion_merge(w0, reg, targets)
    c = torch.cat([c for c, _ in targets])

    def objective(w):
        return ((reg @ (w - w0).T) ** 2).sum()

    # any other feasible W is merged + N with N C^T = 0 (rows of N orthogonal to C's rows)
    g = torch.Generator().manual_seed(4)
    projector = torch.eye(16, dtype=F64) - torch.linalg.pinv(c) @ c
    for _ in range(5):
        n = 0.1 * torch.randn(8, 16, generator=g, dtype=F64) @ projector
        assert torch.allclose((merged + n) @ c.T, merged @ c.T, rtol=0, atol=1e-10)
        assert objective(merged + n) > objective(merged)


def test_custom_diffusion_merge_keeps_w0_when_targets_are_w0s():
    w0, reg, _ = cd_problem()
    c = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    merged = custom_diffusion_merge(w0, reg, [concept_targets(w0, c)])
    assert torch.allclose(merged, w0, rtol=0, atol=1e-5)


def test_custom_diffusion_merge_drops_duplicate_targets():
    w0, reg, targets = cd_problem()
    merged = custom_diffusion_merge(w0, reg, targets + [targets[0]])  # e.g. two concepts' identical prompt
    assert torch.allclose(merged, custom_diffusion_merge(w0, reg, targets), rtol=0, atol=1e-6)


def test_bad_input_raises_value_error_naming_the_problem():
    w0, weights, inputs = problem()
    good = [ConceptLayer(w, inputs=x) for w, x in zip(weights, inputs)]
    with pytest.raises(ValueError, match="unknown solver 'adam'"):
        fuse_layer(w0, good, solver="adam")
    with pytest.raises(ValueError, match="no concepts"):
        fuse_layer(w0, [])
    with pytest.raises(ValueError, match="2-D weight"):
        fuse_layer(w0[0], good)
    with pytest.raises(ValueError, match=r"concept 1: weight shape \(6, 11\)"):
        fuse_layer(w0, [good[0], ConceptLayer(weights[1][:, :11], inputs=inputs[1])])
    with pytest.raises(ValueError, match=r"concept 0: inputs must be \[\.\.\., 12\]"):
        fuse_layer(w0, [ConceptLayer(weights[0], inputs=inputs[0][:, :5])])
    with pytest.raises(ValueError, match=r"concept 0: inputs must be \[\.\.\., 12\]"):
        fuse_layer(w0, [ConceptLayer(weights[0], inputs=inputs[0][:, :5])], solver="lbfgs")
    with pytest.raises(ValueError, match=r"concept 0: Gram shape \(5, 5\)"):
        fuse_layer(w0, [ConceptLayer(weights[0], gram=torch.eye(5, dtype=F64))])
    with pytest.raises(ValueError, match="needs a gram or inputs"):
        fuse_layer(w0, [ConceptLayer(weights[0])])
    with pytest.raises(ValueError, match="lbfgs solver needs inputs"):
        fuse_layer(w0, [ConceptLayer(weights[0], gram=torch.eye(12, dtype=F64))], solver="lbfgs")
    with pytest.raises(ValueError, match="Gram matrices are zero"):
        fuse_layer(w0, [ConceptLayer(weights[0], gram=torch.zeros(12, 12, dtype=F64))])
    with pytest.raises(ValueError, match=r"activations must be \[\.\.\., 12\]"):
        GramAccumulator(12).update(torch.ones(3, 4))

    w0, reg, targets = cd_problem()
    with pytest.raises(ValueError, match="S = R\\^T R is singular"):
        custom_diffusion_merge(w0, reg[:10], targets)  # 10 caption features in a 16-d space
    c, v = targets[0]
    with pytest.raises(ValueError, match="linearly dependent"):
        custom_diffusion_merge(w0, reg, [(c, v), (2 * c[:1], 2 * v[:1])])
    with pytest.raises(ValueError, match=r"concept 0: targets V must be \[m, out\] = \[3, 8\]"):
        custom_diffusion_merge(w0, reg, [(c, v[:, :5])])
    with pytest.raises(ValueError, match=r"reg_embeddings must be \[\.\.\., 16\]"):
        custom_diffusion_merge(w0, reg[:, :4], targets)
