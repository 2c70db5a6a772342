"""HRNN-meta network and losses on a tiny hand-built feature space (no warehouse needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrnn_core.config import ModelConfig
from hrnn_core.model.features import FeatureSpace, FieldGroup, time_delta_bucket
from hrnn_core.model.losses import dense_softmax_loss, first_column, reward_weights, sampled_softmax_loss
from hrnn_core.model.network import HRNNMeta, StepInputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ITEMS, B, T = 30, 4, 6
CFG = ModelConfig(hidden_size=16, field_dim=8, input_size=16, num_layers=2, dropout=0.0)

def _space() -> FeatureSpace:
    users = FieldGroup(["segment"], [["s0", "s1", "s2"]], ["age"], [40.0], [10.0], [1], True, 5.0)
    items = FieldGroup(["genres"], [["g0", "g1", "g2", "g3"]], ["price"], [20.0], [5.0], [2], True, 5.0)
    context = FieldGroup(["device"], [["mobile", "desktop"]], [], [], [], [1], False, 5.0)
    return FeatureSpace(item_ids=[f"i{j}" for j in range(N_ITEMS)], event_types=["buy", "view"], value_mean=3.0,
                        value_std=1.0, users=users, items=items, context=context, time_delta_buckets=16,
                        time_delta_log_base=2.0, snapshot_id="test")


def _model(cfg: ModelConfig = CFG, seed: int = 0) -> HRNNMeta:
    torch.manual_seed(seed)
    fs = _space()
    g = torch.Generator().manual_seed(1)
    item_cat = torch.randint(1, fs.items.n_tokens, (N_ITEMS, 2), generator=g).int()
    item_cat[::3, 1] = 0  # some items have one genre only
    item_num = torch.stack([torch.randn(N_ITEMS, generator=g), torch.ones(N_ITEMS)], dim=1)
    return HRNNMeta(cfg, fs, item_cat, item_num)


def _inputs(b: int = B, t: int = T, seed: int = 0) -> StepInputs:
    g = torch.Generator().manual_seed(seed)
    prev_item = torch.randint(0, N_ITEMS + 1, (b, t), generator=g)
    return StepInputs(
        prev_item=prev_item, prev_type=torch.randint(0, 3, (b, t), generator=g),
        prev_value=torch.stack([torch.randn(b, t, generator=g), torch.ones(b, t)], dim=-1),
        time_bucket=torch.randint(0, 16, (b, t), generator=g), context=torch.randint(0, 3, (b, t, 1), generator=g),
        user_cat=torch.randint(0, 4, (b, t, 1), generator=g).int(),
        user_num=torch.stack([torch.randn(b, t, generator=g), torch.ones(b, t)], dim=-1),
        reset=torch.zeros(b, dtype=torch.bool),
    )


def test_shapes_and_decoder_outputs() -> None:
    model, x = _model(), _inputs()
    out, hidden = model(x)
    assert out.shape == (B, T, CFG.hidden_size) and hidden.shape == (CFG.num_layers, B, CFG.hidden_size)
    h = out.reshape(-1, CFG.hidden_size)
    assert model.scores(h).shape == (B * T, N_ITEMS)
    items = torch.tensor([3, 3, 7])
    assert model.scores(h, items, 0.4).shape == (B * T, 3)
    torch.testing.assert_close(model.scores(h, items, 0.4), model.scores(h, None, 0.4)[:, items])


def test_eq2_mixes_id_and_metadata_scores_linearly() -> None:
    model = _model()
    h = torch.randn(5, CFG.hidden_size)
    s0, s1 = model.scores(h, None, 0.0), model.scores(h, None, 1.0)
    torch.testing.assert_close(model.scores(h, None, 0.3), 0.7 * s0 + 0.3 * s1)
    lam = torch.rand(N_ITEMS)  # per-item lambdas (cold items at 1)
    torch.testing.assert_close(model.scores(h, None, lam), (1 - lam) * s0 + lam * s1)


def test_lambda_one_never_touches_id_embeddings() -> None:
    model = _model()
    with torch.no_grad():
        model.item_w.weight.fill_(float("nan"))
        model.item_b.weight.fill_(float("nan"))
    calls = []
    model.item_w.register_forward_hook(lambda *a: calls.append(1))
    h = torch.randn(3, CFG.hidden_size, requires_grad=True)
    scores = model.scores(h, None, 1.0)
    scores_c = model.scores(h, torch.tensor([1, 2]), 1.0)
    assert torch.isfinite(scores).all() and torch.isfinite(scores_c).all()
    (scores.sum() + scores_c.sum()).backward()
    assert model.item_w.weight.grad is None and model.item_b.weight.grad is None
    assert model.meta_out.bags.weight.grad is not None
    assert not calls
    assert torch.isnan(model.scores(h, None, 0.5)).all()  # any lambda < 1 does use them


def test_reset_restarts_and_hidden_carries_across_windows() -> None:
    model = _model().eval()
    x = _inputs()
    out, hidden = model(x)
    # truncated BPTT: two windows with the hidden state carried give the same states
    out_a, h_a = model(_slice(x, 0, 2))
    out_b, h_b = model(_slice(x, 2, T), h_a)
    torch.testing.assert_close(torch.cat([out_a, out_b], dim=1), out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h_b, hidden, atol=1e-6, rtol=1e-5)
    # a row that starts a new owner ignores the carried state: it equals starting fresh
    x_b = _slice(x, 2, T)
    x_b.reset = torch.tensor([True] + [False] * (B - 1))
    out_r, _ = model(x_b, h_a)
    torch.testing.assert_close(out_r[0], model(_slice(x, 2, T))[0][0])
    torch.testing.assert_close(out_r[1:], out_b[1:])
    # one step at a time (the service's one-event update) equals the fused window
    h, steps = None, []
    for k in range(T):
        o, h = model(_slice(x, k, k + 1), h)
        steps.append(o)
    torch.testing.assert_close(torch.cat(steps, dim=1), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, hidden, atol=1e-5, rtol=1e-5)


def _slice(x: StepInputs, lo: int, hi: int) -> StepInputs:
    return StepInputs(**{k: (v[:, lo:hi] if v is not None and v.dim() > 1 else v) for k, v in vars(x).items()})


@pytest.mark.parametrize("layers", [1, 2])
def test_packed_rows_equal_each_row_alone(layers: int) -> None:
    """Rows shorter than the window (``lengths``) give the states and last hidden state of the row run alone:
    padding is never computed, whatever it holds."""
    model = _model(ModelConfig(**{**vars(CFG), "num_layers": layers})).eval()
    x = _inputs()
    x.lengths = torch.tensor([T, 3, 1, 5][:B] + [T] * max(0, B - 4))
    out, hidden = model(x)
    for r, n in enumerate(x.lengths.tolist()):
        alone = StepInputs(**{k: (v[r:r + 1, :n] if k != "reset" else v[r:r + 1]) for k, v in vars(x).items() if k != "lengths"})
        o, h = model(alone)
        torch.testing.assert_close(out[r, :n], o[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(hidden[:, r], h[:, 0], atol=1e-6, rtol=1e-5)
        assert (out[r, n:] == (model.user_out(x.user_cat[r, n:, model.user_id_col]) if model.user_out else 0)).all()


def test_inputs_matter_and_ablations_build() -> None:
    model = _model().eval()
    x = _inputs()
    out, _ = model(x)
    x2 = _inputs()
    x2.time_bucket = (x2.time_bucket + 5) % 16
    assert not torch.allclose(model(x2)[0], out)
    off = ModelConfig(hidden_size=16, field_dim=8, input_size=16, use_time_delta=False, use_feedback=False,
                      use_user_features=False, use_context=False, use_item_meta=False)
    bare = _model(off).eval()
    assert set(bare.fields) == {"item"} and bare.meta_out is None
    out_b, _ = bare(x)
    x2 = _inputs()
    x2.time_bucket = (x2.time_bucket + 5) % 16
    torch.testing.assert_close(bare(x2)[0], out_b)  # the time delta is not an input any more
    assert bare.scores(out_b.reshape(-1, 16), None, 1.0).shape == (B * T, N_ITEMS)  # no metadata: ids


def test_time_delta_bucket() -> None:
    got = time_delta_bucket(np.array([np.nan, 0, 1, 3, 60, 3600, 1e12, -5]), 16, 2.0)
    assert got.tolist() == [0, 1, 2, 3, 6, 12, 15, 1]


def test_sampled_loss_equals_dense_with_uniform_q_and_all_items_drawn() -> None:
    model = _model()
    h = torch.randn(12, CFG.hidden_size)
    target = torch.tensor([0, 5, 5, 7, 29, 0, 3, 3, 3, 11, 12, 5])  # repeated positives on purpose
    weight = torch.rand(12)
    dense = dense_softmax_loss(h, *model.item_vectors(None, 0.3), target, weight)
    neg = torch.randperm(N_ITEMS)  # every item once, in a random order
    cand = torch.cat([target, neg])
    log_q = torch.full((len(cand),), -float(np.log(N_ITEMS)))  # uniform q
    sampled = sampled_softmax_loss(h, *model.item_vectors(cand, 0.3), cand, log_q, weight)
    torch.testing.assert_close(sampled.ce, dense.ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sampled.loss, dense.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("autocast,with_base", [(False, True), (False, False), (True, True)])
def test_dense_loss_equals_the_composed_softmax_with_base_and_mask(autocast: bool, with_base: bool) -> None:
    """The fused dense loss gives the per-row cross-entropy and the gradients of h, w and b that autograd
    gives for ``log_softmax(h w^T + b + beta * base, masked)``; under bf16 autocast the product runs in
    bf16 (looser tolerance) and the softmax in float32."""
    g = torch.Generator().manual_seed(0)
    n, c, hs = 40, 23, 8
    h = torch.randn(n, hs, generator=g, requires_grad=True)
    w = torch.randn(c, hs, generator=g, requires_grad=True)
    b = torch.randn(c, generator=g, requires_grad=True)
    target, weight = torch.randint(0, c, (n,), generator=g), torch.rand(n, generator=g)
    base = torch.randn(n, c, generator=g) if with_base else torch.zeros(n, c)
    rows, items = torch.randint(0, n, (60,), generator=g), torch.randint(0, c, (60,), generator=g)
    keep = items != target[rows]  # as the trainer: never a row's own target
    rows, items = rows[keep], items[keep]

    logits = (h @ w.T + b + 0.5 * base).index_put((rows, items), torch.tensor(float("-inf")))
    ref_ce = -torch.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    ((weight * ref_ce).sum() / n).backward()
    ref_grads = [t.grad.clone() for t in (h, w, b)]
    for t in (h, w, b):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = dense_softmax_loss(h, w, b, target, weight, base.clone() if with_base else None, 0.5, (rows, items))
    out.loss.backward()
    tol = {"atol": 0.1, "rtol": 0.05} if autocast else {"atol": 1e-5, "rtol": 1e-5}
    assert out.ce.dtype == torch.float32
    torch.testing.assert_close(out.ce, ref_ce.detach(), **tol)
    for got, want in zip((h.grad, w.grad, b.grad), ref_grads):
        torch.testing.assert_close(got, want, **tol)
    assert not autocast or not torch.equal(out.ce, ref_ce.detach())  # the bf16 branch ran


def test_sampled_loss_masks_duplicates_and_applies_log_q() -> None:
    scores = torch.tensor([[2.0, 0.5, 1.0, 1.0], [0.1, 3.0, 0.2, 0.3]])
    eye, zero = torch.eye(4), torch.zeros(4)  # h = the scores, w = identity: h w^T + b = the scores
    cand = torch.tensor([4, 6, 6, 9])  # row 0 positive 4, row 1 positive 6; column 2 repeats item 6
    log_q = torch.log(torch.tensor([0.1, 0.2, 0.2, 0.3]))
    out = sampled_softmax_loss(scores, eye, zero, cand, log_q)
    z = scores - log_q
    # row 0: items 4 (diag), 6 (first copy, col 1), 9; row 1: item 6 (diag) and 4, 9 (col 2: a hit)
    ref0 = torch.logsumexp(z[0, [0, 1, 3]], 0) - z[0, 0]
    ref1 = torch.logsumexp(z[1, [1, 0, 3]], 0) - z[1, 1]
    torch.testing.assert_close(out.ce, torch.stack([ref0, ref1]))
    assert first_column(cand).tolist() == [0, 1, 1, 3]
    # impressions: extra per-row negatives, padding (-1) and the positive itself ignored
    extra = torch.tensor([[0.7, 5.0, 9.0], [1.5, 0.0, 0.0]])
    extra_items = torch.tensor([[12, -1, 4], [13, -1, -1]])
    out_i = sampled_softmax_loss(scores, eye, zero, cand, log_q, extra_scores=extra, extra_items=extra_items)
    ref0 = torch.logsumexp(torch.cat([z[0, [0, 1, 3]], torch.tensor([0.7])]), 0) - z[0, 0]
    ref1 = torch.logsumexp(torch.cat([z[1, [1, 0, 3]], torch.tensor([1.5])]), 0) - z[1, 1]
    torch.testing.assert_close(out_i.ce, torch.stack([ref0, ref1]))


@pytest.mark.parametrize("with_extra", [False, True])
def test_sampled_loss_gradients_equal_the_composed_masked_softmax(with_extra: bool) -> None:
    """Values and gradients (h, w, b and the explicit negatives' scores) equal autograd's through the masked,
    log-q corrected softmax written out, with repeated positives, negatives that repeat a positive and
    accidental hits in the batch."""
    g = torch.Generator().manual_seed(1)
    n, s, hs, k = 12, 20, 6, 3
    pos = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8])  # repeated positives: accidental hits
    cand = torch.cat([pos, torch.randint(0, 15, (s,), generator=g)])  # negatives repeat positives too
    h = torch.randn(n, hs, generator=g, requires_grad=True)
    w = torch.randn(len(cand), hs, generator=g, requires_grad=True)
    b = torch.randn(len(cand), generator=g, requires_grad=True)
    ex = torch.randn(n, k, generator=g, requires_grad=True)
    ex_items = torch.randint(-1, 15, (n, k), generator=g)
    log_q, weight = -torch.rand(len(cand), generator=g) * 5, torch.rand(n, generator=g)

    z = h @ w.T + b - log_q
    first = torch.tensor([int((cand == c).nonzero()[0]) for c in cand])
    keep = (first == torch.arange(len(cand)))[None, :] & (cand[None, :] != pos[:, None])
    keep[torch.arange(n), torch.arange(n)] = True
    z = z.masked_fill(~keep, float("-inf"))
    if with_extra:
        z = torch.cat([z, ex.masked_fill((ex_items < 0) | (ex_items == pos[:, None]), float("-inf"))], dim=1)
    ref = torch.logsumexp(z, dim=1) - z[torch.arange(n), torch.arange(n)]
    ((weight * ref).sum() / n).backward()
    want = [None if t.grad is None else t.grad.clone() for t in (h, w, b, ex)]
    for t in (h, w, b, ex):
        t.grad = None
    out = sampled_softmax_loss(h, w, b, cand, log_q, weight, ex if with_extra else None, ex_items if with_extra else None)
    out.loss.backward()
    torch.testing.assert_close(out.ce, ref.detach())
    for got, exp in zip((h.grad, w.grad, b.grad), want[:3]):
        torch.testing.assert_close(got, exp)
    if with_extra:
        torch.testing.assert_close(ex.grad, want[3])
        assert bool((ex.grad != 0).any())


def test_reward_weights() -> None:
    types = torch.tensor([0, 1, 2, 2])
    values = torch.tensor([0.0, 1.0, -1.0, -5.0])
    type_w = torch.tensor([1.0, 3.0, 0.5])
    torch.testing.assert_close(reward_weights(types, values, type_w, 0.0), torch.tensor([1.0, 3.0, 0.5, 0.5]))
    torch.testing.assert_close(reward_weights(types, values, type_w, 0.5), torch.tensor([1.0, 4.5, 0.25, 0.0]))
    ce = torch.tensor([1.0, 2.0, 3.0, 4.0])
    zero_h = torch.zeros(4, 1)
    assert float(dense_softmax_loss(zero_h, torch.zeros(3, 1), torch.zeros(3), torch.zeros(4, dtype=torch.long)).loss) \
        == pytest.approx(np.log(3))
    w = torch.tensor([1.0, 0.0, 2.0, 0.0])
    res = dense_softmax_loss(zero_h, torch.zeros(2, 1), torch.log(torch.tensor([0.5, 0.5])), torch.zeros(4, dtype=torch.long), w)
    assert float(res.loss) == pytest.approx(float((w * np.log(2)).sum() / 4))
    assert ce.shape == res.ce.shape


@pytest.mark.parametrize("output", ["dense", "sampled"])
def test_overfits_one_batch(output: str) -> None:
    model = _model(ModelConfig(hidden_size=32, field_dim=8, input_size=32, dropout=0.0))
    x = _inputs(seed=3)
    target = torch.randint(0, N_ITEMS, (B * T,), generator=torch.Generator().manual_seed(4))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    log_q = torch.full((B * T + N_ITEMS,), -float(np.log(N_ITEMS)))
    for _ in range(150):
        out, _ = model(x)
        h = out.reshape(-1, 32)
        if output == "dense":
            loss = dense_softmax_loss(h, *model.item_vectors(None, 0.0), target).loss
        else:
            cand = torch.cat([target, torch.arange(N_ITEMS)])
            loss = sampled_softmax_loss(h, *model.item_vectors(cand, 0.0), cand, log_q).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1, float(loss.detach())
    out, _ = model(x)
    assert (model.scores(out.reshape(-1, 32)).argmax(1) == target).float().mean() == 1.0


def test_numeric_item_fields_get_quantile_buckets() -> None:
    """Item numeric fields: [value, present] then a one-hot quantile bucket (the metadata side of eq. 2 is
    linear, so the bucket is what carries a non-monotone effect); missing values have no bucket; a feature
    space saved before the buckets loads with none."""
    import pyarrow as pa  # noqa: PLC0415

    years = [1950.0, 1990.0, 1995.0, 1996.0, 1997.0, 1998.0, None]
    num = pa.array([[("year", y)] if y is not None else [] for y in years], pa.map_(pa.string(), pa.float64()))
    group = FieldGroup.fit(None, num, ModelConfig(), multi_valued=True, bins=4)
    assert group.num_edges == [[1991.25, 1995.5, 1996.75]] and group.num_width == 2 + 4  # quartiles
    enc = group.encode_num(num, len(years)).numpy()
    np.testing.assert_array_equal(enc[:, 1], [1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(enc[:, 2:].argmax(1)[:6], [0, 0, 1, 2, 3, 3])
    np.testing.assert_array_equal(enc[:, 2:].sum(1), [1, 1, 1, 1, 1, 1, 0])
    assert FieldGroup.from_dict(group.to_dict()) == group
    assert group.with_field("_user_id", ["u1"]).num_edges == group.num_edges  # an added field keeps the buckets
    old = {k: v for k, v in group.to_dict().items() if k != "num_edges"}  # a checkpoint from before the buckets
    assert FieldGroup.from_dict(old).num_width == 2 and FieldGroup.from_dict(old).encode_num(num, 7).shape == (7, 2)
    assert FieldGroup.fit(None, num, ModelConfig(), multi_valued=True).num_width == 2  # users, context: no buckets


def test_has_metadata_reads_only_the_present_flags_with_buckets() -> None:
    """With bucket columns after the [value, present] pairs, an item is 'with metadata' by its present flags."""
    fs = _space()
    fs.items.num_edges = [[15.0, 25.0]]
    item_cat = torch.zeros(N_ITEMS, 2, dtype=torch.int32)
    item_num = torch.zeros(N_ITEMS, fs.items.num_width)
    item_num[:5, 1] = 1.0  # items 0-4 have a price
    item_num[:5, 2] = 1.0
    model = HRNNMeta(CFG, fs, item_cat, item_num)
    assert model.meta_out.numeric.in_features == 5
    np.testing.assert_array_equal(model.has_metadata().numpy(), np.arange(N_ITEMS) < 5)
