"""MMRA's model (``models/mmra.py``) against a per-item, loop-by-loop reference written from the public code's
equations (ICDM-UESTC/MMRA ``model/MicroLens100k/MMRA.py``), on random inputs; fixed seeds, float64."""

import math

import pytest
import torch

from mvrec_dist.models.mmra import MMRA, CrossModalStack

TOL = 1e-10


def _lin(layer, x):
    return x @ layer.weight.T + layer.bias


def _stack_reference(st: CrossModalStack, V, T):
    """One item: V [F, d] frames, T [1, d] title -> (V_f* [d], T_f* [d]), loops over frames."""
    d, F = st.d, V.shape[0]
    ve = [torch.tanh(_lin(st.visual_embedding, V[f])) for f in range(F)]
    te = torch.tanh(_lin(st.textual_embedding, T[0]))
    s = torch.stack([ve[f] @ te / d for f in range(F)])  # [F]
    a_t = torch.exp(s) / torch.exp(s).sum()  # softmax over frames
    # softmax of S^T over its dim 1, which has the single title token: every weight is exp(x)/exp(x) = 1
    a_v = torch.ones(F, dtype=V.dtype)
    v_p = sum(a_v[f] * V[f] for f in range(F))
    v_star = torch.tanh(_lin(st.dual_attention_visual, torch.cat([v_p, -st.alpha * v_p])))
    v_f, t_f = [], torch.tanh(_lin(st.cross_modal_text, torch.cat([T[0], v_star])))
    for f in range(F):
        t_p = a_t[f] * T[0]
        t_star = torch.tanh(_lin(st.dual_attention_text, torch.cat([t_p, -st.alpha * t_p])))
        v_f.append(torch.tanh(_lin(st.cross_modal_visual, torch.cat([V[f], t_star]))))
    logits = torch.stack([_lin(st.pool_visual, v_f[f])[0] / d for f in range(F)])
    w = torch.exp(logits) / torch.exp(logits).sum()
    # the title's pooling is a softmax over one token: weight 1
    return sum(w[f] * v_f[f] for f in range(F)), t_f


def _reference(m: MMRA, frames, text, sims, nb_frames, nb_text, nb_labels, mask):
    out = []
    for b in range(frames.shape[0]):
        V, T = m.frame_projection(frames[b]), m.text_projection(text[b])[None]
        v_s, t_s = _stack_reference(m.item_stack, V, T)
        if not m.use_retrieval:
            out.append(_lin(m.prediction[4], torch.relu(_lin(m.prediction[2], torch.relu(
                _lin(m.prediction[0], torch.cat([t_s, v_s, t_s * v_s])))))))
            continue
        idx = [r for r in range(sims.shape[1]) if mask[b, r]]
        e = torch.stack([math.e ** sims[b, r] for r in idx])
        w = e / e.sum()
        label = sum(w[i] * nb_labels[b, r] for i, r in enumerate(idx))
        agg_t = sum(w[i] * m.text_projection(nb_text[b, r]) for i, r in enumerate(idx))[None]
        agg_v = sum(w[i] * m.frame_projection(nb_frames[b, r]) for i, r in enumerate(idx))
        v_r, t_r = _stack_reference(m.retrieval_stack, agg_v, agg_t)
        lab = torch.relu(m.label_embedding.weight[:, 0] * label + m.label_embedding.bias)
        z = torch.cat([t_s, v_s, t_r, v_r, v_s * v_r, v_s * t_r, t_s * v_r, t_s * t_r, v_s * lab, t_s * lab])
        out.append(_lin(m.prediction[4], torch.relu(_lin(m.prediction[2], torch.relu(_lin(m.prediction[0], z))))))
    return torch.cat(out)


def _inputs(B=3, R=4, F=5, ct=6, cv=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    mask = torch.ones(B, R, dtype=torch.bool)
    mask[1, 2:] = False  # an item with 2 of 4 neighbours
    return r(B, F, cv), r(B, ct), r(B, R).tanh(), r(B, R, F, cv), r(B, R, ct), r(B, R).abs() * 5, mask


@pytest.mark.parametrize("use_retrieval", [True, False])
@pytest.mark.parametrize("dims", [(6, 7, 8), (6, 6, 6)])  # projected widths; MMRA's own case (all equal: no projection)
def test_batched_forward_equals_per_item_reference(use_retrieval, dims):
    ct, cv, d = dims
    torch.manual_seed(0)
    m = MMRA(text_dim=ct, frame_dim=cv, d=d, alpha=0.6, use_retrieval=use_retrieval).double()
    x = _inputs(ct=ct, cv=cv)
    with torch.no_grad():
        got, want = m(*x), _reference(m, *x)
    assert got.shape == (3,)
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)
    if dims[0] == dims[1] == dims[2]:
        assert isinstance(m.text_projection, torch.nn.Identity) and isinstance(m.frame_projection, torch.nn.Identity)


def test_masked_neighbours_do_not_matter():
    torch.manual_seed(1)
    m = MMRA(text_dim=6, frame_dim=7, d=8).double()
    frames, text, sims, nbf, nbt, nbl, mask = _inputs()
    with torch.no_grad():
        a = m(frames, text, sims, nbf, nbt, nbl, mask)
        nbf2, nbt2, nbl2, sims2 = nbf.clone(), nbt.clone(), nbl.clone(), sims.clone()
        nbf2[1, 2:], nbt2[1, 2:], nbl2[1, 2:], sims2[1, 2:] = 9.0, -9.0, 100.0, 5.0
        b = m(frames, text, sims2, nbf2, nbt2, nbl2, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_negated_branch_scales_with_alpha():
    """alpha enters only through the negated branch: alpha = 0 gives a different model output than 0.6."""
    torch.manual_seed(2)
    m = MMRA(text_dim=6, frame_dim=7, d=8, alpha=0.6).double()
    x = _inputs()
    with torch.no_grad():
        a = m(*x)
        for st in (m.item_stack, m.retrieval_stack):
            st.alpha = 0.0
        b = m(*x)
    assert not torch.allclose(a, b)


def test_gradients_reach_every_parameter_but_the_constant_softmaxes():
    """As released, the title's attention pooling is a softmax over one token (always 1) and a softmax ignores
    a shared bias: those layers get no gradient; every other parameter does."""
    torch.manual_seed(3)
    m = MMRA(text_dim=6, frame_dim=7, d=8).double()
    m(*_inputs()).sum().backward()
    dead = {n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() < 1e-12}
    assert dead == {f"{s}.{layer}" for s in ("item_stack", "retrieval_stack")
                    for layer in ("pool_text.weight", "pool_text.bias", "pool_visual.bias")}
