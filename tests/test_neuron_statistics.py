"""Tests for lightning_modules/neuron_statistics.py and records/neuron_selection.py: the streaming accumulators against
brute force loops (fed a whole model at a time through tests/helpers/statistics.py), and the top-n% sizings."""

import numpy as np
import pytest
import torch

from lightning_modules.neuron_statistics import PredictivityAccumulator, ThresholdAccumulator
from tests.helpers.statistics import load_state, merge, update
from records.neuron_selection import (
    mean_over_prompts, mean_predictivity_of, model_wide_top, num_selected, overlap_at, overlap_per_layer,
    per_layer_top_means, sizing_of, top_neurons, top_percent_mask, top_units,
)

L, P, N = 3, 4, 5  # layers, prompt positions, units


def make_data(seed, n_train=37, n_eval=29, num_classes=2):
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n_train, L, P, N, generator=g)  # (n_train, L, P, N)
    labels = torch.randint(0, num_classes, (n_eval,), generator=g)  # (n_eval,)
    labels[:num_classes] = torch.arange(num_classes)  # every class present
    evals = torch.randn(n_eval, L, P, N, generator=g)  # (n_eval, L, P, N)
    y = labels.float() - 0.5 if num_classes == 2 else (labels == 0).float() - 0.5  # (n_eval,) +-0.5
    evals[:, 0, 1, 2] += 3.0 * y  # a unit that predicts the label, so scores are not all ~0.5
    evals[:, 2, 3, 0] -= 2.0 * y  # one that predicts it inversely (acc < 0.5)
    return train, evals, labels


def batches(x, sizes):
    """Split along dim 0 into consecutive chunks of the given sizes (must add up to len(x))."""
    assert sum(sizes) == len(x)
    return list(torch.split(x, sizes))


# --- brute force reference: loops over every example / neuron, numpy float64 ---------------------


def brute_threshold(train):
    total = np.zeros((L, P, N), dtype=np.float64)
    for x in train.numpy():
        total += x.astype(np.float64)
    return (total / len(train)).astype(np.float32)  # (L, P, N)


def brute_accuracy_one_vs_rest(evals, labels, thr, c):
    """acc[l,t,i] = fraction of examples with 1[a > b] == 1[y == c]."""
    acc = np.zeros((L, P, N), dtype=np.float64)
    e, y = evals.float().numpy(), labels.numpy()
    for l in range(L):
        for t in range(P):
            for i in range(N):
                hits = sum(int(e[k, l, t, i] > thr[l, t, i]) == int(y[k] == c) for k in range(len(y)))
                acc[l, t, i] = hits / len(y)
    return acc


def brute_score(pred):
    """(L, N): max over positions of predictivity (L, P, N), with a plain loop."""
    score = np.zeros((L, N))
    for l in range(L):
        for i in range(N):
            score[l, i] = max(pred[l, t, i] for t in range(P))
    return score


def run_accumulators(train, evals, labels, train_sizes, eval_sizes, num_classes=2):
    ta = ThresholdAccumulator(L, P, N)
    for chunk in batches(train, train_sizes):
        update(ta, chunk)
    pa = PredictivityAccumulator(ta.threshold(), num_classes=num_classes)
    for a, y in zip(batches(evals, eval_sizes), batches(labels, eval_sizes)):
        update(pa, a, y)
    return ta, pa


# --- accumulators vs brute force ------------------------------------------------------------------


def test_binary_accumulators_match_brute_force_loops():
    train, evals, labels = make_data(0)
    ta, pa = run_accumulators(train, evals, labels, [1, 10, 7, 19], [1, 16, 12])

    thr = brute_threshold(train)
    np.testing.assert_allclose(ta.threshold().numpy(), thr, rtol=1e-6, atol=1e-7)
    assert ta.threshold().dtype == torch.float32 and ta.threshold().shape == (L, P, N)

    acc = brute_accuracy_one_vs_rest(evals, labels, thr, c=1)  # binary acc == one-vs-rest for class 1
    pred = np.maximum(acc, 1 - acc)
    score = brute_score(pred)
    assert pa.accuracy().shape == (L, P, N) and pa.predictivity().shape == (L, P, N)
    assert pa.score().shape == (L, N)
    np.testing.assert_allclose(pa.accuracy().numpy(), acc, atol=1e-6)
    np.testing.assert_allclose(pa.predictivity().numpy(), pred, atol=1e-6)
    np.testing.assert_allclose(pa.score().numpy(), score, atol=1e-6)
    # the planted label-following units are found: 0.5 would be chance
    assert pa.predictivity()[0, 1, 2] > 0.8 and pa.accuracy()[2, 3, 0] < 0.3
    assert pa.predictivity().min() >= 0.5


def test_results_do_not_depend_on_batching():
    train, evals, labels = make_data(1)
    ta1, pa1 = run_accumulators(train, evals, labels, [37], [29])
    ta2, pa2 = run_accumulators(train, evals, labels, [1] * 37, [1] * 29)
    ta3, pa3 = run_accumulators(train, evals, labels, [5, 1, 30, 1], [3, 1, 25])
    for ta, pa in [(ta2, pa2), (ta3, pa3)]:
        torch.testing.assert_close(ta.threshold(), ta1.threshold(), rtol=1e-7, atol=1e-7)
        assert int(ta.count) == 37
        assert torch.equal(pa.fire_count, pa1.fire_count)
        assert torch.equal(pa.class_count, pa1.class_count)
        assert torch.equal(pa.accuracy(), pa1.accuracy())
        assert torch.equal(pa.score(), pa1.score())


def test_strict_greater_constant_unit_gets_share_of_label_zero():
    train, evals, labels = make_data(2)
    train[:, 1, 2, 3] = 0.0  # dead ReLU unit: activation == threshold everywhere
    evals[:, 1, 2, 3] = 0.0
    train[:, 0, 0, 4] = 0.375  # constant non-zero unit: mean is exactly 0.375 as well
    evals[:, 0, 0, 4] = 0.375
    _, pa = run_accumulators(train, evals, labels, [37], [29])
    share0 = (labels == 0).float().mean().item()
    # never fires (a > b is False), so it is "right" exactly on the y == 0 examples
    assert pa.accuracy()[1, 2, 3].item() == pytest.approx(share0, abs=1e-7)
    assert pa.accuracy()[0, 0, 4].item() == pytest.approx(share0, abs=1e-7)
    assert pa.predictivity()[1, 2, 3].item() == pytest.approx(max(share0, 1 - share0), abs=1e-7)


def test_keep_mask_excludes_rows_exactly():
    train, evals, labels = make_data(3)
    g = torch.Generator().manual_seed(0)
    keep_train = torch.rand(37, generator=g) > 0.3  # (37,)
    keep_eval = torch.rand(29, generator=g) > 0.3  # (29,)
    keep_eval[:2] = True  # both classes stay present
    labels_dropped = labels.clone()
    labels_dropped[~keep_eval] = -100  # dropped rows may carry an ignore label

    ta = ThresholdAccumulator(L, P, N)
    for a, k in zip(batches(train, [10, 27]), batches(keep_train, [10, 27])):
        update(ta, a, keep=k)
    pa = PredictivityAccumulator(ta.threshold())
    for a, y, k in zip(batches(evals, [13, 16]), batches(labels_dropped, [13, 16]), batches(keep_eval, [13, 16])):
        update(pa, a, y, keep=k)

    ta_ref, pa_ref = run_accumulators(
        train[keep_train], evals[keep_eval], labels[keep_eval], [int(keep_train.sum())], [int(keep_eval.sum())]
    )
    assert int(ta.count) == int(keep_train.sum())
    assert torch.equal(ta.threshold(), ta_ref.threshold())
    assert torch.equal(pa.class_count, pa_ref.class_count)
    assert torch.equal(pa.fire_count, pa_ref.fire_count)
    assert torch.equal(pa.accuracy(), pa_ref.accuracy())


# --- distributed merge -------------------------------------------------------------------------------


def fake_all_reduce(ranks, rank, in_place=True):
    """A reduce_fn for `rank` that sums its tensor with the other ranks' (snapshot taken now, before any
    rank reduces), like torch.distributed.all_reduce (in place) or returning the sum."""
    snapshots = [{k: v.clone() for k, v in acc.state().items()} for acc in ranks]
    own = ranks[rank].state()

    def reduce_fn(tensor):
        key = next(k for k, v in own.items() if v.data_ptr() == tensor.data_ptr())
        total = sum(s[key] for s in snapshots)
        if in_place:
            tensor.copy_(total)
            return None
        return total

    return reduce_fn


def test_all_reduce_of_two_ranks_equals_one_accumulator_over_all_data():
    train, evals, labels = make_data(4)
    ta_all, pa_all = run_accumulators(train, evals, labels, [37], [29])

    # rank 0 gets train[:20], eval[:15]; rank 1 the rest plus a DistributedSampler-style padded row
    train_r = [train[:20], torch.cat([train[20:], train[:1]])]
    keep_train_r = [torch.ones(20, dtype=torch.bool), torch.tensor([True] * 17 + [False])]
    eval_r = [evals[:15], torch.cat([evals[15:], evals[:1]])]
    labels_r = [labels[:15], torch.cat([labels[15:], labels[:1]])]
    keep_eval_r = [torch.ones(15, dtype=torch.bool), torch.tensor([True] * 14 + [False])]

    tas = [ThresholdAccumulator(L, P, N) for _ in range(2)]
    for r in range(2):
        update(tas[r], train_r[r], keep=keep_train_r[r])
    fns = [fake_all_reduce(tas, 0, in_place=True), fake_all_reduce(tas, 1, in_place=False)]
    for r in range(2):
        tas[r].all_reduce(fns[r])
    for r in range(2):
        assert int(tas[r].count) == 37
        torch.testing.assert_close(tas[r].threshold(), ta_all.threshold(), rtol=1e-7, atol=1e-7)

    thr = ta_all.threshold()
    pas = [PredictivityAccumulator(thr) for _ in range(2)]
    for r in range(2):
        update(pas[r], eval_r[r], labels_r[r], keep=keep_eval_r[r])
    fns = [fake_all_reduce(pas, 0, in_place=True), fake_all_reduce(pas, 1, in_place=False)]
    for r in range(2):
        pas[r].all_reduce(fns[r])
    for r in range(2):
        assert torch.equal(pas[r].fire_count, pa_all.fire_count)
        assert torch.equal(pas[r].class_count, pa_all.class_count)
        assert torch.equal(pas[r].score(), pa_all.score())

    # merge() / load_state() give the same as all_reduce
    merged = PredictivityAccumulator(thr)
    half0, half1 = PredictivityAccumulator(thr), PredictivityAccumulator(thr)
    update(half0, eval_r[0], labels_r[0], keep=keep_eval_r[0])
    update(half1, eval_r[1], labels_r[1], keep=keep_eval_r[1])
    merge(load_state(merged, half0.state()), half1)
    assert torch.equal(merged.fire_count, pa_all.fire_count)
    t_merged = merge(ThresholdAccumulator(L, P, N), load_state(tas[0], {"sum": ta_all.sum, "count": ta_all.count}))
    assert torch.equal(t_merged.threshold(), ta_all.threshold())


# --- dtypes, multi-class, errors ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_activations_are_accepted_and_upcast(dtype):
    train, evals, labels = make_data(5)
    train_h, evals_h = train.to(dtype), evals.to(dtype)  # (B, L, P, N) half precision
    ta_h, pa_h = run_accumulators(train_h, evals_h, labels, [20, 17], [9, 20])
    # same as feeding the exactly upcast fp32 values
    ta_f, pa_f = run_accumulators(train_h.float(), evals_h.float(), labels, [37], [29])
    assert ta_h.threshold().dtype == torch.float32
    torch.testing.assert_close(ta_h.threshold(), ta_f.threshold(), rtol=1e-7, atol=1e-7)
    assert torch.equal(pa_h.fire_count, pa_f.fire_count)
    thr = brute_threshold(train_h.float())
    acc = brute_accuracy_one_vs_rest(evals_h, labels, thr, c=1)
    np.testing.assert_allclose(pa_h.accuracy().numpy(), acc, atol=1e-6)


def test_multiclass_one_vs_rest_matches_brute_force():
    C = 3
    train, evals, labels = make_data(6, n_eval=31, num_classes=C)
    ta, pa = run_accumulators(train, evals, labels, [1, 36], [1, 10, 20], num_classes=C)
    thr = brute_threshold(train)
    acc = np.stack([brute_accuracy_one_vs_rest(evals, labels, thr, c) for c in range(C)])  # (C, L, P, N)
    pred = np.maximum(acc, 1 - acc)
    score_c = np.stack([brute_score(pred[c]) for c in range(C)])  # (C, L, N)

    assert pa.accuracy().shape == (C, L, P, N) and pa.predictivity().shape == (C, L, P, N)
    np.testing.assert_allclose(pa.accuracy().numpy(), acc, atol=1e-6)
    np.testing.assert_allclose(pa.predictivity().numpy(), pred, atol=1e-6)
    np.testing.assert_allclose(pa.score_per_class().numpy(), score_c, atol=1e-6)
    np.testing.assert_allclose(pa.score().numpy(), score_c.max(axis=0), atol=1e-6)


def test_binary_per_class_views_agree_with_binary_accuracy():
    train, evals, labels = make_data(7)
    _, pa = run_accumulators(train, evals, labels, [37], [29])
    per_class = pa.accuracy_per_class()  # (2, L, P, N)
    torch.testing.assert_close(per_class[1], pa.accuracy())
    torch.testing.assert_close(per_class[0], 1 - pa.accuracy())
    assert torch.equal(pa.score_per_class()[0], pa.score_per_class()[1])


def test_single_class_eval_set_raises_clear_error():
    train, evals, _ = make_data(8)
    ta, _ = run_accumulators(train, evals, torch.zeros(29, dtype=torch.long), [37], [29])
    pa = PredictivityAccumulator(ta.threshold())
    update(pa, evals, torch.ones(29, dtype=torch.long))
    with pytest.raises(ValueError, match="evaluation set has a single class.*Fix: evaluate on a split"):
        pa.accuracy()
    with pytest.raises(ValueError, match="single class"):
        pa.score()


def test_multiclass_with_absent_class_raises():
    train, evals, labels = make_data(9)  # labels only 0/1
    _, pa = run_accumulators(train, evals, labels, [37], [29], num_classes=3)
    with pytest.raises(ValueError, match="lacks some classes"):
        pa.score()


@pytest.mark.parametrize("bad", [2, -1])
def test_labels_out_of_range_raise(bad):
    pa = PredictivityAccumulator(torch.zeros(L, P, N))
    labels = torch.tensor([0, 1, bad])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        update(pa, torch.randn(3, L, P, N), labels)
    # the same label is fine on a dropped row
    update(pa, torch.randn(3, L, P, N), labels, keep=torch.tensor([True, True, False]))
    assert pa.class_count.tolist() == [1, 1]


def test_empty_accumulators_and_wrong_shapes_raise():
    with pytest.raises(ValueError, match="no examples were counted"):
        ThresholdAccumulator(L, P, N).threshold()
    with pytest.raises(ValueError, match="no evaluation examples"):
        PredictivityAccumulator(torch.zeros(L, P, N)).accuracy()
    with pytest.raises(ValueError, match=r"\(B, L, P, N\)"):
        update(ThresholdAccumulator(L, P, N), torch.randn(2, L, P, N + 1))
    with pytest.raises(ValueError, match="labels for a batch"):
        update(PredictivityAccumulator(torch.zeros(L, P, N)), torch.randn(2, L, P, N), torch.tensor([0, 1, 1]))


def test_accumulator_state_size_does_not_grow_with_updates():
    def tensor_bytes(obj):
        return sum(v.numel() * v.element_size() for v in vars(obj).values() if isinstance(v, torch.Tensor))

    ta = ThresholdAccumulator(L, P, N)
    pa = PredictivityAccumulator(torch.zeros(L, P, N), num_classes=2)
    update(ta, torch.randn(4, L, P, N))
    update(pa, torch.randn(4, L, P, N), torch.tensor([0, 1, 0, 1]))
    sizes = (tensor_bytes(ta), tensor_bytes(pa))
    assert sizes == ((L * P * N) * 8 + 8, (L * P * N) * 4 + 2 * L * P * N * 8 + 2 * 8)
    for _ in range(50):
        update(ta, torch.randn(16, L, P, N))
        update(pa, torch.randn(16, L, P, N), torch.randint(0, 2, (16,)))
    assert (tensor_bytes(ta), tensor_bytes(pa)) == sizes
    assert int(ta.count) == 4 + 50 * 16 and int(pa.class_count.sum()) == 4 + 50 * 16


# --- selections and comparisons ------------------------------------------------------------------------


def test_num_selected_is_ceil_of_percent_with_at_least_one_unit():
    assert [num_selected(3072, p) for p in (0, 1, 3, 5, 15, 100)] == [0, 31, 93, 154, 461, 3072]
    assert num_selected(100, 15) == 15  # no float noise: 15% of 100 is 15
    assert num_selected(5, 1) == 1  # 0.05 units -> at least one
    with pytest.raises(ValueError):
        num_selected(10, 101)


def test_both_sizings_on_the_edge_cases():
    assert [num_selected(3072, p, "ceil") for p in (1, 3, 15)] == [31, 93, 461]
    assert [num_selected(3072, p, "p1") for p in (1, 3, 15)] == [30, 92, 460]  # P1's int(3072/100·n)
    assert num_selected(100, 15, "ceil") == num_selected(100, 15, "p1") == 15
    assert num_selected(5, 1, "ceil") == 1 and num_selected(5, 1, "p1") == 0  # floor gives no unit
    assert num_selected(50, 1, "p1") == 0 and num_selected(50, 2, "p1") == 1 and num_selected(50, 0, "p1") == 0
    assert num_selected(3072 * 12, 5, "p1") == int(3072 * 12 / 100 * 5) == 1843  # model-wide count
    assert num_selected(3072, 100, "p1") == num_selected(3072, 100, "ceil") == 3072
    for sizing in ("ceil", "p1"):
        with pytest.raises(ValueError):
            num_selected(10, 101, sizing)
    with pytest.raises(ValueError, match="sizing"):
        num_selected(10, 5, "floor")
    assert (sizing_of("paper"), sizing_of("standard"), sizing_of(None)) == ("p1", "ceil", "ceil")


def test_p1_sizing_selects_the_same_ranking_cut_shorter():
    g = torch.Generator().manual_seed(3)
    score = torch.rand(3, 250, generator=g)  # (L, N): 250 · 3 / 100 = 7.5 units
    ours, p1 = top_percent_mask(score, 3), top_percent_mask(score, 3, "p1")
    assert ours.sum(dim=1).tolist() == [8, 8, 8] and p1.sum(dim=1).tolist() == [7, 7, 7]
    assert torch.equal(p1 & ours, p1)  # P1's set is ours less the last unit of each layer
    assert torch.equal(top_units(score, 3, "p1"), top_units(score, 3)[:, :7])
    assert model_wide_top(score, 3, "p1").tolist() == torch.argsort(-score.reshape(-1), stable=True)[:22].tolist()
    assert len(model_wide_top(score, 3)) == 23
    assert top_percent_mask(score, 0.3, "p1").sum() == 0 and per_layer_top_means(score, 0.3, "p1") == []
    with pytest.raises(ValueError, match="no unit"):
        overlap_at(score, score, 0.3, "p1")
    assert overlap_at(score, score.flip(1), 3, "p1") == overlap_per_layer(score, score.flip(1), 3, "p1").mean().item()


def test_the_reports_numpy_selection_is_the_callbacks():
    from skill_neurons.report import analyses

    g = torch.Generator().manual_seed(4)
    clean, adversarial = torch.rand(4, 250, generator=g), torch.rand(4, 250, generator=g)  # (L, N)
    for sizing in ("ceil", "p1"):
        for n in (1, 3, 5, 14):
            top = analyses.per_layer_top(clean.numpy(), n, sizing)  # (L, k) best first
            mask = top_percent_mask(clean, n, sizing)
            assert all(sorted(row.tolist()) == mask[l].nonzero().squeeze(1).tolist() for l, row in enumerate(top))
            per_layer = analyses.overlap_per_layer(clean.numpy(), adversarial.numpy(), n, sizing)
            assert float(np.mean(per_layer)) == pytest.approx(overlap_at(clean, adversarial, n, sizing), abs=1e-15)
            assert analyses.model_wide_top(clean.numpy(), n, sizing).tolist() == model_wide_top(clean, n, sizing).tolist()
    assert analyses.overlap_per_layer(clean.numpy(), adversarial.numpy(), 0.3, "p1") is None


def test_top_percent_mask_counts_per_layer_and_breaks_ties_by_lower_index():
    g = torch.Generator().manual_seed(0)
    score = torch.rand(3, 200, generator=g)  # (L, N)
    for percent, k in [(1, 2), (3, 6), (15, 30), (0.1, 1), (0, 0), (100, 200)]:
        mask = top_percent_mask(score, percent)  # (L, N)
        assert mask.dtype == torch.bool and mask.shape == (3, 200)
        assert mask.sum(dim=1).tolist() == [k, k, k]
        if 0 < k < 200:  # the selected units are the k largest of their layer
            for l in range(3):
                assert score[l][mask[l]].min() > score[l][~mask[l]].max()
    ties = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1], [0.7, 0.7, 0.7, 0.7, 0.7]])  # (2, 5)
    assert top_percent_mask(ties, 40).tolist() == [
        [True, True, False, False, False],
        [True, True, False, False, False],
    ]


def test_overlap_of_score_with_itself_is_one_and_of_disjoint_tops_is_zero():
    g = torch.Generator().manual_seed(1)
    score = torch.rand(4, 100, generator=g)  # (L, N)
    for percent in (1, 5, 15, 50):
        assert overlap_at(score, score, percent) == 1.0
        assert overlap_at(score, -score, percent) == 0.0
    # layer 0 shares 1 of 2 top units, layer 1 shares both -> mean 0.75
    a = torch.tensor([[4.0, 3.0, 0.0, 0.0], [4.0, 3.0, 0.0, 0.0]])
    b = torch.tensor([[4.0, 0.0, 3.0, 0.0], [3.0, 4.0, 0.0, 0.0]])
    assert overlap_at(a, b, 50) == 0.75


def test_mean_predictivity_of_selected_units():
    score = torch.tensor([[0.5, 0.9, 0.7], [0.6, 0.8, 1.0]])  # (L, N)
    mask = torch.tensor([[False, True, True], [True, False, False]])
    assert mean_predictivity_of(mask, score) == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    adv = torch.tensor([[0.5, 0.55, 0.6], [0.5, 0.9, 0.95]])
    assert mean_predictivity_of(top_percent_mask(score, 34), adv) == pytest.approx((0.55 + 0.6 + 0.9 + 0.95) / 4)


def test_top_neurons_lists_layer_unit_best_position_and_score():
    pred = torch.full((2, 3, 4), 0.5)  # (L, P, N)
    pred[1, 2, 3] = 0.95
    pred[0, 1, 0] = 0.9
    pred[0, 2, 0] = 0.9  # tie over positions -> first one (1)
    pred[1, 0, 1] = 0.8
    score = pred.amax(dim=1)  # (L, N)
    top = top_neurons(score, pred, 3)
    assert [(l, u, t) for l, u, t, _ in top] == [(1, 3, 2), (0, 0, 1), (1, 1, 0)]
    assert [s for *_, s in top] == pytest.approx([0.95, 0.9, 0.8])
    assert len(top_neurons(score, pred, 100)) == 8


def test_end_to_end_planted_neuron_is_top_and_seed_mean_keeps_shape():
    train, evals, labels = make_data(10)
    _, pa = run_accumulators(train, evals, labels, [37], [29])
    layer, unit, pos, s = top_neurons(pa.score(), pa.predictivity(), 1)[0]
    assert (layer, unit, pos) == (0, 2, 1) and s > 0.75
    assert top_percent_mask(pa.score(), 20)[0, 2]
    scores = [pa.score(), torch.zeros(L, N)]
    torch.testing.assert_close(mean_over_prompts(scores), pa.score() / 2)


# --- class-balanced predictivity ------------------------------------------------------------------


def accumulate(train, evals, labels, num_classes=2):
    thresholds = ThresholdAccumulator(L, P, N)
    update(thresholds, train)
    counts = PredictivityAccumulator(thresholds.threshold(), num_classes)
    update(counts, evals, labels)
    return thresholds.threshold(), counts


def test_balanced_predictivity_of_a_constant_unit_is_exactly_half_on_an_imbalanced_set():
    train, evals, _ = make_data(5, n_eval=82)
    labels = torch.tensor([1] * 50 + [0] * 32)  # AdvGLUE binary MNLI's 50 vs 32
    evals[:, 1, 2, 3] = -1e6  # never above its threshold
    evals[:, 0, 0, 4] = 1e6  # always above
    _, counts = accumulate(train, evals, labels)
    balanced, raw = counts.balanced_predictivity_per_class()[1], counts.predictivity()
    assert float(balanced[1, 2, 3]) == 0.5 and float(balanced[0, 0, 4]) == 0.5
    assert float(raw[1, 2, 3]) == pytest.approx(50 / 82) and counts.majority_baseline() == 50 / 82


def test_balanced_predictivity_equals_raw_on_a_balanced_set():
    train, evals, _ = make_data(6, n_eval=40)
    labels = torch.tensor([0, 1] * 20)
    _, counts = accumulate(train, evals, labels)
    assert torch.equal(counts.balanced_predictivity_per_class(), counts.predictivity_per_class())
    assert torch.equal(counts.balanced_score(), counts.score())


@pytest.mark.parametrize("num_classes", [2, 3])
def test_balanced_predictivity_matches_brute_force_mean_of_per_class_agreement(num_classes):
    train, evals, labels = make_data(7, n_eval=61, num_classes=num_classes)
    threshold, counts = accumulate(train, evals, labels, num_classes)
    fire = (evals > threshold).numpy()  # (n, L, P, N)
    y = labels.numpy()
    expected = np.zeros((num_classes, L, P, N))
    for c in range(num_classes):
        for l in range(L):
            for t in range(P):
                for i in range(N):
                    member = y == c
                    on_class = np.mean(fire[member, l, t, i])  # agreement with "is class c" on its examples
                    on_rest = np.mean(~fire[~member, l, t, i])  # agreement on the other examples
                    accuracy = (on_class + on_rest) / 2
                    expected[c, l, t, i] = max(accuracy, 1 - accuracy)
    np.testing.assert_allclose(counts.balanced_predictivity_per_class().numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(counts.balanced_score().numpy(), expected.max(axis=2).max(axis=0), atol=1e-6)
