"""NeuronSuppression: which units, how they are perturbed, and that rate 0 changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning import Callback

from callbacks.skill_neurons import SkillNeuronCallback, SkillNeuronError, load_neuron_file
from callbacks.suppression import NeuronSuppression, hashed_normal, random_units, stable_seed
from lightning_modules.ffn import hook_ffn, remove_hooks
from records.errors import OptionError
from records.neuron_selection import num_selected, top_percent_mask
from tests.helpers.tiny import P, make, validate


class RecordUnits(Callback):
    """Records the FFN units as the model sees them (its hooks run after the suppression's)."""

    def __init__(self):
        self.seen: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (loader, layer, rows, units)
        self.handles, self.loader, self.rows = [], 0, None

    def on_validation_epoch_start(self, trainer, pl_module):
        self.handles = hook_ffn(pl_module.backbone, self._record)

    def _record(self, layer, units):
        self.seen.append((self.loader, layer, self.rows.clone(), units.detach().clone()))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.loader, self.rows = dataloader_idx, batch["idx"]

    def on_validation_epoch_end(self, trainer, pl_module):
        remove_hooks(self.handles)


@pytest.fixture(scope="module")
def neuron_run(tmp_path_factory, tiny_backbones):
    """A run directory with the skill-neuron files of the (untrained) tiny RoBERTa prompt."""
    root = tmp_path_factory.mktemp("neurons")
    model, dm = make("masked_lm")
    validate(model, dm, root, SkillNeuronCallback())
    return root


def evaluate(tmp_path, neuron_run, batch_size=16, **suppression):
    model, dm = make("masked_lm", eval_batch_size=batch_size)
    recorder = RecordUnits()
    callbacks = [NeuronSuppression(neurons=[str(neuron_run)], **suppression), recorder] if suppression else [recorder]
    trainer = validate(model, dm, tmp_path, callbacks[0], callbacks=callbacks)
    return trainer, recorder, model


def test_rate_zero_reproduces_unperturbed_accuracy_exactly(tmp_path, neuron_run):
    plain, _, _ = evaluate(tmp_path / "a", neuron_run)
    zero, _, _ = evaluate(tmp_path / "b", neuron_run, rate=0)
    for key in ("val/acc", "val/loss", "adv/typos/acc", "adv/typos/loss"):
        assert float(zero.callback_metrics[key]) == float(plain.callback_metrics[key]), key


def test_zero_suppresses_the_top_units_of_every_layer_at_every_position(tmp_path, neuron_run):
    trainer, recorder, model = evaluate(tmp_path, neuron_run, rate=10)
    score = load_neuron_file(neuron_run / "skill_neurons" / "validation.safetensors")[0]["score"]
    mask = top_percent_mask(score, 10)
    assert int(mask[0].sum()) == num_selected(256, 10) == 26
    for _, layer, _, units in recorder.seen:
        assert (units[..., mask[layer]] == 0).all()  # every example, every position (prompt and text)
        assert (units[..., ~mask[layer]] != 0).float().mean() > 0.9
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.backbone.modules())
    plain, _, _ = evaluate(tmp_path / "plain", neuron_run)
    assert float(trainer.callback_metrics["val/loss"]) != float(plain.callback_metrics["val/loss"])


def test_mean_replaces_units_by_their_thresholds(tmp_path, neuron_run):
    _, recorder, _ = evaluate(tmp_path, neuron_run, rate=10, perturbation="mean")
    tensors = load_neuron_file(neuron_run / "skill_neurons" / "validation.safetensors")[0]
    mask, threshold = top_percent_mask(tensors["score"], 10), tensors["threshold"]  # (L, N), (L, P, N)
    for _, layer, _, units in recorder.seen:
        selected = mask[layer]
        torch.testing.assert_close(units[:, :P, selected], threshold[layer][:, selected].expand(len(units), -1, -1))
        text = threshold[layer].mean(dim=0)[selected]  # text positions: the mean over prompt positions
        torch.testing.assert_close(units[:, P:, selected], text.expand(len(units), units.shape[1] - P, -1))


def test_mean_fills_thresholds_at_the_positions_the_analysis_read(tmp_path, tiny_backbones):
    """Neuron files analysed at the <mask> alone (standard layout: absolute position P+1): its threshold goes
    there, and the same value (the mean over the one analysed position) everywhere else."""
    root = tmp_path / "mask-run"
    model, dm = make("masked_lm")
    validate(model, dm, root, SkillNeuronCallback(positions="mask"))
    tensors, meta = load_neuron_file(root / "skill_neurons" / "validation.safetensors")
    assert meta["absolute_positions"] == [P + 1] and tensors["threshold"].shape[1] == 1
    _, recorder, _ = evaluate(tmp_path / "eval", root, rate=10, perturbation="mean")
    mask, threshold = top_percent_mask(tensors["score"], 10), tensors["threshold"]
    for _, layer, _, units in recorder.seen:
        selected = mask[layer]
        want = threshold[layer][0, selected]
        torch.testing.assert_close(units[:, P + 1, selected], want.expand(len(units), -1))
        torch.testing.assert_close(units[:, :P, selected], want.expand(len(units), P, -1))


def test_gaussian_noise_is_one_draw_per_example_and_unit_whatever_the_batching(tmp_path, neuron_run):
    _, plain, _ = evaluate(tmp_path / "plain", neuron_run, batch_size=7)
    _, noisy7, _ = evaluate(tmp_path / "a", neuron_run, batch_size=7, rate=10, perturbation="gaussian", std=0.1)
    _, noisy16, _ = evaluate(tmp_path / "b", neuron_run, batch_size=16, rate=10, perturbation="gaussian", std=0.1)

    def per_example(recorder):
        out = {}
        for loader, layer, rows, units in recorder.seen:
            for row, unit in zip(rows.tolist(), units):
                out[(loader, layer, row)] = unit[: units.shape[1]]  # (S, N) without padding differences below
        return out

    clean, a, b = per_example(plain), per_example(noisy7), per_example(noisy16)
    key = next(iter(clean))
    delta = a[key][:P] - clean[key][:P]  # (P, N)
    moved = delta.abs().amax(dim=0) > 0
    assert int(moved.sum()) == 26  # only the selected units
    torch.testing.assert_close(delta[:, moved], delta[:1, moved].expand(P, -1), atol=1e-6, rtol=0)  # broadcast
    for k in clean:  # the same noise whatever the batch size
        torch.testing.assert_close(a[k][:P] - clean[k][:P], b[k][:P] - clean[k][:P], atol=1e-5, rtol=0)
    draws = hashed_normal(0, 0, torch.arange(20000), 1, torch.arange(5))
    assert abs(float(draws.mean())) < 0.02 and abs(float(draws.std()) - 1) < 0.02
    assert torch.equal(draws[:3], hashed_normal(0, 0, torch.arange(3), 1, torch.arange(5)))
    assert not torch.equal(draws[:3], hashed_normal(1, 0, torch.arange(3), 1, torch.arange(5)))


def test_random_control_has_the_same_count_per_layer_fixed_per_task_and_backbone(tmp_path, neuron_run):
    _, recorder, _ = evaluate(tmp_path, neuron_run, rate=10, selection="random", seed=5)
    zeroed = {layer: (units == 0).all(dim=0).all(dim=0) for _, layer, _, units in recorder.seen}
    seed = stable_seed("random-control", "marker_words", "tiny-roberta", 5)
    expected = random_units(2, 256, 10, seed)
    for layer, mask in zeroed.items():
        assert torch.equal(mask & expected[layer], expected[layer])
    assert int(expected.sum(dim=1)[0]) == int(expected.sum(dim=1)[1]) == 26
    skill = top_percent_mask(load_neuron_file(neuron_run / "skill_neurons" / "validation.safetensors")[0]["score"], 10)
    assert not torch.equal(expected, skill)
    assert torch.equal(random_units(2, 256, 5, seed) & expected, random_units(2, 256, 5, seed))  # nested
    assert not torch.equal(random_units(2, 256, 10, stable_seed("random-control", "sst2", "tiny-roberta", 5)),
                           expected)


def test_adversarial_sets_use_clean_neurons_unless_asked_for_their_own(tmp_path, neuron_run):
    model, dm = make("masked_lm")
    clean = NeuronSuppression(rate=10, neurons=[str(neuron_run)])
    own = NeuronSuppression(rate=10, neurons=[str(neuron_run)], adversarial_neurons="own")
    for callback in (clean, own):
        validate(model, dm, tmp_path / callback.adversarial_neurons, callback)
    assert torch.equal(clean.masks[0], clean.masks[1])
    adv_score = load_neuron_file(neuron_run / "skill_neurons" / "typos.safetensors")[0]["score"]
    assert torch.equal(own.masks[1], top_percent_mask(adv_score, 10)) and not torch.equal(own.masks[0], own.masks[1])


def test_eval_set_suppresses_that_sets_neurons_on_clean_data_too(tmp_path, neuron_run):
    """P1's clean curve (src/utils.py::init_mask, --adv_nonAdv True: Adv…_mean.npy on clean data): eval_set names
    whose skill neurons, and adversarial_neurons=clean applies them on every loader, the clean one included."""
    _, recorder, _ = evaluate(tmp_path, neuron_run, rate=10, eval_set="typos")
    adv_score = load_neuron_file(neuron_run / "skill_neurons" / "typos.safetensors")[0]["score"]
    expected = top_percent_mask(adv_score, 10)
    clean = top_percent_mask(load_neuron_file(neuron_run / "skill_neurons" / "validation.safetensors")[0]["score"], 10)
    assert not torch.equal(expected, clean)
    for loader in (0, 1):  # validation, typos
        zeroed = {layer: (units == 0).all(dim=0).all(dim=0) for seen_loader, layer, _, units in recorder.seen
                  if seen_loader == loader}
        assert zeroed and all(torch.equal(mask & expected[layer], expected[layer]) for layer, mask in zeroed.items())
        assert not all(torch.equal(mask & clean[layer], clean[layer]) for layer, mask in zeroed.items())


def test_skill_neuron_analysis_stands_aside_while_neurons_are_suppressed(tmp_path, neuron_run):
    model, dm = make("masked_lm")
    analysis = SkillNeuronCallback()
    validate(model, dm, tmp_path, analysis, callbacks=[NeuronSuppression(rate=5, neurons=[str(neuron_run)]), analysis])
    assert analysis.metrics == {} and not (tmp_path / "skill_neurons").exists()


# ---------------------------------------------------------------- bad input
def test_bad_settings_name_the_fix(tmp_path, neuron_run):
    with pytest.raises(OptionError, match=r"rate=120: give a percentage"):
        NeuronSuppression(rate=120)
    with pytest.raises(OptionError, match="selection='best': use one of skill, random"):
        NeuronSuppression(rate=5, selection="best")
    with pytest.raises(OptionError, match="perturbation='drop': use one of zero, gaussian, mean"):
        NeuronSuppression(rate=5, perturbation="drop")
    model, dm = make("masked_lm")
    with pytest.raises(SkillNeuronError, match="the run has no skill-neuron analysis"):
        validate(model, dm, tmp_path / "a", NeuronSuppression(rate=5, neurons=[str(tmp_path / "nope")]))
    from callbacks.skill_neurons import save_neuron_file

    save_neuron_file(tmp_path / "wide.safetensors", {"score": torch.rand(3, 10)}, {"backbone": "x", "part": "encoder"})
    with pytest.raises(SkillNeuronError, match=r"have \(3, 10\) \(layers, units\) but the model's encoder has \(2, 256\)"):
        validate(model, dm, tmp_path / "b", NeuronSuppression(rate=5, neurons=[str(tmp_path / "wide.safetensors")]))
    from lightning import Trainer

    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      callbacks=[NeuronSuppression(rate=5, neurons=[str(neuron_run)])])
    with pytest.raises(SkillNeuronError, match="suppression perturbs evaluation only"):
        trainer.fit(model, dm)


def seed_mean_prompts(root, task="marker_words", seeds=(33, 34, 35)):
    """Finished fit runs of one task (and one of another task) with neuron files of the tiny RoBERTa's shape."""
    import json

    import numpy as np

    from callbacks.skill_neurons import save_neuron_file

    scores = {}
    for seed, run_task in [(s, task) for s in seeds] + [(99, "other_task")]:
        run = root / f"fit-{run_task}-{seed}"
        rng = np.random.default_rng(seed)
        per_set = {name: rng.random((2, 256)).astype(np.float32) for name in ("validation", "typos")}
        for name, score in per_set.items():
            save_neuron_file(run / "skill_neurons" / f"{name}.safetensors", {"score": torch.from_numpy(score)},
                             {"backbone": "tiny-roberta", "part": "encoder", "task": run_task})
        (run / "summary.json").write_text(json.dumps({
            "run_id": run.name, "stage": "fit", "status": "finished",
            "settings": {"task": run_task, "backbone": "tiny-roberta", "prompt_length": P, "seed": seed}}))
        if run_task == task:
            scores[seed] = per_set
    return scores


def test_seed_mean_source_suppresses_the_top_units_of_the_mean_over_the_tasks_fit_runs(tmp_path, tiny_backbones):
    from types import SimpleNamespace

    import numpy as np

    scores = seed_mean_prompts(tmp_path)
    model, dm = make("masked_lm")
    checkpoint = tmp_path / "fit-marker_words-34" / "checkpoints" / "best.ckpt"
    trainer = SimpleNamespace(ckpt_path=str(checkpoint), datamodule=dm)
    for adversarial in ("clean", "own"):
        callback = NeuronSuppression(rate=10, neuron_source="seed_mean", adversarial_neurons=adversarial)
        callback.setup(trainer, model, "validate")
        assert callback.record["neuron_source"] == "seed_mean"
        assert sorted(Path(p).name for p in callback.record["neurons_from"]) == [
            "fit-marker_words-33", "fit-marker_words-34", "fit-marker_words-35"]
        for loader, name in enumerate(("validation", "typos")):
            source = "validation" if adversarial == "clean" else name
            mean = np.mean([scores[s][source].astype(np.float64) for s in (33, 34, 35)], axis=0)  # P1 *_mean.npy
            expected = np.zeros((2, 256), dtype=bool)
            for layer in range(2):
                expected[layer, np.argsort(-mean[layer], kind="stable")[:26]] = True  # ceil(10% of 256) per layer
            assert np.array_equal(callback.masks[loader].numpy(), expected), (adversarial, name)
    own = NeuronSuppression(rate=10)
    own.setup(trainer, model, "validate")
    assert own.record["neuron_source"] == "own" and own.record["neurons_from"] == [str(checkpoint.parent.parent)]
    # the CLI passes the checkpoint's run as `neurons`: seed_mean then averages the runs beside it
    given = NeuronSuppression(rate=10, neuron_source="seed_mean", neurons=[str(checkpoint.parent.parent)])
    given.setup(SimpleNamespace(ckpt_path=None, datamodule=dm), model, "validate")
    assert len(given.record["neurons_from"]) == 3 and torch.equal(given.masks[0], callback.masks[0])
    alone = tmp_path / "alone"
    seed_mean_prompts(alone, task="unrelated")
    lonely = SimpleNamespace(ckpt_path=str(alone / "x" / "checkpoints" / "best.ckpt"), datamodule=dm)
    with pytest.raises(SkillNeuronError, match="neuron_source=seed_mean: no finished fit run"):
        NeuronSuppression(rate=10, neuron_source="seed_mean").setup(lonely, model, "validate")


@pytest.mark.parametrize("units", [3072, 1536])
def test_suppression_of_a_paper_model_sizes_each_layer_as_p1_at_every_rate(units):
    """P1's ``init_mask``: ``int(number_neurons/100*topn)`` units per layer — the skill and the random selection
    of a ``paper`` model, at roberta-base's/t5-base's 3072 FFN units and at 1536, for rates 1–15%."""
    from callbacks.suppression import random_units
    from records.neuron_selection import sizing_of, top_percent_mask

    score = torch.rand(12, units, generator=torch.Generator().manual_seed(units))
    sizing = sizing_of("paper")
    for rate in range(1, 16):
        expected = int(units / 100 * rate)
        assert top_percent_mask(score, rate, sizing).sum(dim=1).tolist() == [expected] * 12, rate
        assert random_units(12, units, rate, seed=rate, sizing=sizing).sum(dim=1).tolist() == [expected] * 12, rate
    assert top_percent_mask(score, 1, sizing_of("standard")).sum(dim=1).tolist() == [-(-units // 100)] * 12
