"""The continuous neuron metrics (lightning_modules/neuron_correlation.py, callbacks/neuron_metrics.py).

References are independent: numpy's two-pass Pearson r (``np.corrcoef``) on every activation kept, scipy's
Spearman ρ, and, for the callback, plain hooks written here with one unpadded example per full forward.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from callbacks.neuron_metrics import CONTINUOUS, agreement_metrics
from callbacks.skill_neurons import SkillNeuronCallback, load_neuron_file
from datamodules.prompt_datamodule import Collator, pad_id_of
from lightning_modules.neuron_correlation import (
    CorrelationAccumulator, average_ranks, margin_targets, spearman_per_layer,
)
from tests.helpers.tiny import MARKER, P, make, validate
from tests.test_neuron_statistics import fake_all_reduce

L, Q, N = 3, 2, 5  # layers, positions, units of the hand-made tensors


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """numpy's two-pass r; 0 where either side is constant (the module's convention)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def brute_correlation(acts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(K, L, P, N) r of every unit (acts (n, L, P, N)) with every target (targets (n, K)): numpy's corrcoef, one
    unit at a time."""
    out = np.zeros((targets.shape[1],) + acts.shape[1:])
    for k in range(targets.shape[1]):
        for index in np.ndindex(*acts.shape[1:]):
            out[(k, *index)] = pearson(acts[(slice(None), *index)], targets[:, k])
    return out


def two_pass_correlation(acts: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(L, P, N) r with one target (n,) by the two-pass formula Σ(x − x̄)(y − ȳ) / sqrt(Σ(x − x̄)² Σ(y − ȳ)²),
    vectorised over the units; 0 where a side is constant."""
    x = acts - acts.mean(axis=0)
    y = (target - target.mean()).reshape(-1, *[1] * (acts.ndim - 1))
    denominator = np.sqrt((x * x).sum(axis=0) * (y * y).sum())
    constant = (np.ptp(acts, axis=0) == 0) | (np.ptp(target) == 0)
    return np.where(constant, 0.0, (x * y).sum(axis=0) / np.where(constant, 1.0, denominator))


def feed(accumulator, acts, targets, batch, keep=None):
    for start in range(0, len(acts), batch):
        part = slice(start, start + batch)
        for layer in range(acts.shape[1]):
            accumulator.update(acts[part, layer], targets[part], layer=layer,
                               keep=None if keep is None else keep[part])


def hand_made(n=41, seed=0):
    generator = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, L, Q, N, generator=generator) * 3 + 100  # a large offset: cancellation would show
    acts[:, 0, :, 0] = 7.0  # a constant unit: r = 0
    acts[:, 1, 1, 2] = -acts[:, 1, 1, 2].abs()  # never positive
    labels = torch.randint(0, 2, (n,), generator=generator)
    acts[:, 2, 0, 3] += 2 * labels  # a unit that tracks the label
    targets = torch.stack([labels.double(), torch.randn(n, generator=generator, dtype=torch.float64)], dim=1)
    return acts, targets


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_correlation_equals_numpy_pearson_at_any_batch_size(batch):
    acts, targets = hand_made()
    accumulator = CorrelationAccumulator(torch.full((L, Q, N), 99.0), 2)
    feed(accumulator, acts, targets, batch)
    want = brute_correlation(acts.double().numpy(), targets.numpy())
    np.testing.assert_allclose(accumulator.correlation().numpy(), want, atol=1e-6)
    assert accumulator.correlation()[0, 0, 0, 0] == 0  # constant unit
    assert accumulator.correlation()[0, 2, 0, 3] > 0.3  # the planted unit
    positive = (acts > 0).double().mean(dim=(0, 2))  # (L, N) over examples and positions
    np.testing.assert_allclose(accumulator.activation_probability().numpy(), positive.numpy(), atol=1e-7)
    assert accumulator.activation_probability()[1, 2] == 0.5  # negative at one of the two positions


def test_correlation_does_not_depend_on_the_center_and_dropped_rows_do_not_count():
    acts, targets = hand_made()
    a = CorrelationAccumulator(torch.zeros(L, Q, N), 2)
    feed(a, acts, targets, 5)
    padded_acts = torch.cat([acts, acts[:3] * 50])
    padded_targets = torch.cat([targets, targets[:3] + 9])
    keep = torch.tensor([True] * len(acts) + [False] * 3)
    b = CorrelationAccumulator(acts.mean(dim=0), 2)
    feed(b, padded_acts, padded_targets, 6, keep)
    assert int(b.count) == len(acts)
    torch.testing.assert_close(a.correlation(), b.correlation(), atol=1e-6, rtol=0)
    assert torch.equal(a.positive, b.positive)


def test_two_ranks_merged_by_all_reduce_equal_one_accumulator():
    acts, targets = hand_made(n=30, seed=3)
    center = torch.full((L, Q, N), 100.0)
    whole = CorrelationAccumulator(center, 2)
    feed(whole, acts, targets, 4)
    ranks = [CorrelationAccumulator(center, 2) for _ in range(2)]
    feed(ranks[0], acts[0::2], targets[0::2], 3)
    feed(ranks[1], acts[1::2], targets[1::2], 8)
    functions = [fake_all_reduce(ranks, 0, in_place=True), fake_all_reduce(ranks, 1, in_place=False)]
    for rank, function in zip(ranks, functions):
        rank.all_reduce(function)
    for rank in ranks:
        assert int(rank.count) == 30 and torch.equal(rank.positive, whole.positive)
        torch.testing.assert_close(rank.correlation(), whole.correlation(), atol=1e-9, rtol=0)


def test_margin_is_each_class_logit_minus_the_best_other_scored_word():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 3.0]])
    got = margin_targets(logits, 2).numpy()
    want = [[2.0 - 0.5, -1.0 - 2.0], [0.0 - 3.0, 3.0 - 3.0]]  # the extra third word counts among the others
    np.testing.assert_array_equal(got, want)
    binary = torch.tensor([[0.3, 1.0]])
    np.testing.assert_allclose(margin_targets(binary, 2)[0].numpy(), [-0.7, 0.7], atol=1e-15)


def test_spearman_per_layer_equals_scipy_with_ties_and_constant_layers():
    generator = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (4, 30), generator=generator).float()  # many ties
    b = a + torch.randint(0, 3, (4, 30), generator=generator).float()
    b[3] = 1.0  # constant layer: undefined
    got = spearman_per_layer(a, b)
    for layer in range(3):
        assert got[layer] == pytest.approx(stats.spearmanr(a[layer], b[layer]).statistic, abs=1e-12)
    assert got[3] is None
    np.testing.assert_allclose(average_ranks(a).numpy(), np.stack([stats.rankdata(r) for r in a.numpy()]))


# ---------------------------------------------------------------- the callback against plain hooks
def hooked_modules(model):
    """The FFN units named here, independently of ffn.py: (modules, read the input (True) or the output)."""
    kind = model.backbone.config.model_type
    if kind == "roberta":
        return [layer.intermediate for layer in model.backbone.roberta.encoder.layer], False
    if kind == "t5":
        return [block.layer[-1].DenseReluDense.wo for block in model.backbone.encoder.block], True
    if kind == "gpt2":
        return [block.mlp.c_proj for block in model.backbone.transformer.h], True
    return [layer.mlp.down_proj for layer in model.backbone.model.layers], True


def brute_force(model, dm, role: str, positions: str):
    """Per example, one unpadded example per full forward: analysed units (n, L, P', N), text mean (n, L, N),
    labels (n,) and the scored words' logits (n, C')."""
    modules, reads_input = hooked_modules(model)
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0][0].double().clone())) if reads_input else
             m.register_forward_hook(lambda m, a, out: seen.append(out[0].double().clone())) for m in modules]
    collate = Collator(pad_id_of(dm.tokenizer))
    acts, text, labels, logits = [], [], [], []
    try:
        with torch.no_grad():
            for row in dm.datasets[role]:
                seen.clear()
                z = model(collate([row]))[0]  # (C',)
                units = torch.stack(seen)  # (L, S, N)
                assert units.shape[1] == P + len(row["input_ids"])
                acts.append((units[:, -1:] if positions == "last" else units[:, :P]).numpy())
                text.append(units[:, P:].mean(dim=1).numpy())
                labels.append(row["label"])
                logits.append(z.double().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return np.stack(acts), np.stack(text), np.array(labels), np.stack(logits)


def reference(model, dm, role: str, positions: str, positive: int) -> dict[str, np.ndarray]:
    acts, text, labels, logits = brute_force(model, dm, role, positions)
    label = (labels == positive).astype(np.float64)  # (n,)
    others = np.array([[max(np.delete(z, c)) for c in range(2)] for z in logits])  # (n, 2) best other scored word
    margin = logits[:, positive] - others[:, positive]
    return {"label_correlation": two_pass_correlation(acts, label),
            "margin_correlation": two_pass_correlation(acts, margin),
            "text_label_correlation": two_pass_correlation(text, label),
            "text_margin_correlation": two_pass_correlation(text, margin),
            "activation_probability": (acts > 0).mean(axis=(0, 2))}


def causal_make(backbone: str, padding_side: str = "right", **dm_kwargs):
    from tests.test_causal_lm import make as make_causal

    return make_causal(backbone, padding_side, **dm_kwargs)


CASES = {"roberta-paper": lambda: make("masked_lm", "paper", max_train_samples=16),
         "t5": lambda: make("seq2seq", max_train_samples=16),
         "gpt2-left": lambda: causal_make("tiny-gpt2", "left", max_train_samples=16)}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_continuous_metrics_equal_plain_hooks_one_example_at_a_time(tiny_backbones, case, request):
    """float32 at batch size 1 (the same arithmetic as the reference); in float64 at batch sizes 7 and 64, where
    padding in a batch changes only the rounding (~1e-16), so a padded position that leaked into the analysed
    units or the text mean would show."""
    if case.startswith("gpt2"):
        request.getfixturevalue("causal_backbones")
    model, dm = CASES[case]()
    positions = "last" if model.family == "causal_lm" else "prompt"
    for dtype, batch_sizes in ((torch.float32, (1,)), (torch.float64, (7, 64))):
        model.to(dtype)
        want = {role: reference(model, dm, role, positions, dm.accuracy_label) for role in ("validation", "adv/typos")}
        for batch_size in batch_sizes:
            got = SkillNeuronCallback(batch_size=batch_size, positions=positions, correlations=True).passes(
                model, dm, list(want))
            for role, expected in want.items():
                for key, value in expected.items():
                    assert got[role][key].shape == value.shape, key
                    np.testing.assert_allclose(got[role][key].numpy(), value, atol=1e-6,
                                               err_msg=f"{case} {dtype} {role} {key} batch {batch_size}")
                score = np.abs(expected["label_correlation"]).max(axis=1)  # binary: |r| of class 0 = |r| of class 1
                np.testing.assert_allclose(got[role]["label_correlation_score"].numpy(), score, atol=1e-6)
                assert np.abs(expected["label_correlation"]).max() > 0.1  # not a vacuous comparison of zeros


@pytest.fixture(scope="module")
def causal_backbones(tiny_backbones):
    from lightning_modules.backbones import build_tiny_preset

    return {name: build_tiny_preset(name) for name in ("tiny-gpt2",)}


def test_neuron_files_and_summary_carry_the_metrics_and_their_agreement(tmp_path, tiny_backbones):
    model, dm = make("masked_lm")
    trainer = validate(model, dm, tmp_path, SkillNeuronCallback(correlations=True))
    tensors, meta = load_neuron_file(tmp_path / "skill_neurons" / "validation.safetensors")
    for key in ("label_correlation", "margin_correlation", "text_label_correlation", "text_margin_correlation",
                "activation_probability", "label_correlation_score", "text_margin_correlation_score"):
        assert key in tensors, key
    layers, units = tensors["score"].shape
    assert tensors["label_correlation"].shape == tensors["predictivity"].shape
    assert tensors["text_label_correlation"].shape == (layers, units)
    scalars, per_layer = agreement_metrics(tensors)
    for name, rhos in per_layer.items():
        want = [stats.spearmanr(tensors["score"][l], tensors[f"{name}_score"][l]).statistic for l in range(layers)]
        np.testing.assert_allclose([np.nan if r is None else r for r in rhos], want, atol=1e-9)
        key = f"skill_neurons/validation/agreement_{name}"
        assert float(trainer.callback_metrics[key]) == pytest.approx(np.nanmean(want), abs=1e-6)
    assert "skill_neurons/typos/best_margin_correlation" in trainer.callback_metrics


def test_three_classes_give_one_vs_rest_correlations_with_each_class_margin(tmp_path, tiny_backbones):
    """Class c: r with 1[label == c] and with m_c = z_c − max of the other two words' logits; in float64, batch 7."""
    columns = {"sentence": "sentence", "label": "label"}
    splits = {}
    for name in ("train", "validation"):
        rows = [json.loads(line) for line in (MARKER / f"{name}.jsonl").read_text().splitlines()]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({**r, "label": r["idx"] % 3}) + "\n" for r in rows))
        splits[name] = {"file": str(path), "columns": columns}
    task = {"name": "three", "text_fields": ["sentence"], "label_names": ["a", "b", "c"],
            "verbalizers": {"masked_lm": ["no", "yes", "house"]}, "splits": splits}
    model, dm = make("masked_lm", task=task, max_train_samples=16)
    model.double()
    got = SkillNeuronCallback(batch_size=7, correlations=True).passes(model, dm, ["validation"])["validation"]
    acts, text, labels, logits = brute_force(model, dm, "validation", "prompt")
    assert got["label_correlation"].shape == (3, *acts.shape[1:])
    assert got["text_margin_correlation"].shape == (3, *text.shape[1:])
    scores = {name: [] for name in ("label_correlation", "margin_correlation")}
    for c in range(3):
        label = (labels == c).astype(np.float64)
        margin = logits[:, c] - np.delete(logits, c, axis=1).max(axis=1)
        for name, target in (("label_correlation", label), ("margin_correlation", margin)):
            want = two_pass_correlation(acts, target)
            np.testing.assert_allclose(got[name][c].numpy(), want, atol=1e-6, err_msg=f"{name} class {c}")
            np.testing.assert_allclose(got[f"text_{name}"][c].numpy(), two_pass_correlation(text, target), atol=1e-6)
            scores[name].append(np.abs(want).max(axis=1))  # (L, N) max over positions
    for name, per_class in scores.items():
        np.testing.assert_allclose(got[f"{name}_score"].numpy(), np.max(per_class, axis=0), atol=1e-6)


def test_summary_keys_of_the_metrics_parse_as_skill_neuron_metrics():
    """W&B runs are read back through records.eval_set.parse_neuron_metric: every key must be skill_neurons/<set>/<m>."""
    from records.eval_set import EvalSet, parse_neuron_metric

    score = torch.rand(2, 6)
    result = {"score": score, **{f"{name}_score": torch.rand(2, 6) for name in CONTINUOUS}}
    scalars, _ = agreement_metrics(result)
    assert len(scalars) == 2 * len(CONTINUOUS)
    for name in scalars:
        key = EvalSet.of("adv/typos").neuron_metric(name)
        assert parse_neuron_metric(key).name == name, key
