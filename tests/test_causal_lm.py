"""Decoder-only causal LMs (GPT-2, Llama, ...): prompt tuning, where their FFN neurons live, and the skill-neuron
analysis at positions that can depend on the example (the last text position, the mean over the text).

The reference for every number is the independent brute force of ``test_skill_neurons.py``: plain hooks on the
modules named here, one unpadded example per full forward, statistics in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning import Trainer, seed_everything

from callbacks.skill_neurons import SkillNeuronCallback, SkillNeuronError, load_neuron_file
from callbacks.suppression import NeuronSuppression
from datamodules import PromptDataModule
from datamodules.prompt_datamodule import Collator, pad_id_of, verbalizer_token_ids
from datamodules.tasks import TaskError, TaskSpec, get_task
from lightning_modules import CausalLMPromptTuning, MaskedLMPromptTuning
from lightning_modules.backbones import BackboneError, load_backbone
from lightning_modules.ffn import FFNLookupError, ffn_hooks, ffn_shape, ffn_sites
from lightning_modules.rules import LayoutError
from records.errors import OptionError
from records.neuron_selection import top_percent_mask
from tests.helpers.tiny import brute_force_statistics, marker_task, validate
from tests.test_suppression import RecordUnits

P = 4
CAUSAL = ("tiny-gpt2", "tiny-llama")


@pytest.fixture(scope="module")
def causal_backbones(tiny_backbones):
    from lightning_modules.backbones import build_tiny_preset

    return {name: build_tiny_preset(name) for name in CAUSAL}


def causal_task() -> dict:
    task = marker_task()
    task["verbalizers"]["causal_lm"] = ["no", "yes"]
    task.pop("paper")
    return task


def make(backbone: str, padding_side: str = "right", **dm_kwargs):
    seed_everything(0)
    model = CausalLMPromptTuning(backbone=backbone, prompt_length=P).eval()
    kwargs = dict(task=causal_task(), backbone=backbone, prompt_length=P, max_train_samples=48, max_eval_samples=37,
                  eval_batch_size=16, padding_side=padding_side)
    dm = PromptDataModule(**{**kwargs, **dm_kwargs})
    dm.prepare_data()
    dm.setup("fit")
    model.label_token_ids = torch.tensor(dm.label_token_ids)
    return model, dm


def down_projections(model) -> list[torch.nn.Module]:
    """The FFN down-projections, named here independently of ffn.py."""
    if model.backbone.config.model_type == "gpt2":
        return [block.mlp.c_proj for block in model.backbone.transformer.h]
    return [layer.mlp.down_proj for layer in model.backbone.model.layers]


def brute_force(model, dm, role: str, choice: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, L, 1, N) activations at the last position or averaged over the text, one unpadded example per full
    forward (the prompt is positions 0..P-1, the text P..S-1); labels (n,)."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0][0].double().clone()))
             for m in down_projections(model)]
    collate = Collator(pad_id_of(dm.tokenizer))
    acts, labels = [], []
    try:
        with torch.no_grad():
            for row in dm.datasets[role]:
                seen.clear()
                model(collate([row]))
                units = torch.stack(seen)  # (L, S, N)
                assert units.shape[1] == P + len(row["input_ids"])
                read = units[:, -1] if choice == "last" else units[:, P:].mean(dim=1)  # (L, N)
                acts.append(read[:, None].numpy())
                labels.append(row["label"])
    finally:
        for hook in hooks:
            hook.remove()
    return np.stack(acts), np.array(labels)


# ---------------------------------------------------------------- where neurons live
def test_ffn_sites_of_decoder_only_architectures():
    from transformers import (
        GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
        MistralForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM,
    )
    from transformers.pytorch_utils import Conv1D

    small = dict(vocab_size=50)
    heads = dict(num_attention_heads=2, num_key_value_heads=1)
    models = {
        "gpt2": (GPT2LMHeadModel(GPT2Config(**small, n_embd=16, n_layer=2, n_head=2, n_inner=20)),
                 lambda m, i: m.transformer.h[i].mlp.c_proj, (2, 20)),
        "llama": (LlamaForCausalLM(LlamaConfig(**small, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                               **heads)), lambda m, i: m.model.layers[i].mlp.down_proj, (3, 24)),
        "mistral": (MistralForCausalLM(MistralConfig(**small, hidden_size=16, intermediate_size=12,
                                                     num_hidden_layers=2, **heads)),
                    lambda m, i: m.model.layers[i].mlp.down_proj, (2, 12)),
        "qwen2": (Qwen2ForCausalLM(Qwen2Config(**small, hidden_size=16, intermediate_size=28, num_hidden_layers=2,
                                               **heads)), lambda m, i: m.model.layers[i].mlp.down_proj, (2, 28)),
        "gpt_neox": (GPTNeoXForCausalLM(GPTNeoXConfig(**small, hidden_size=16, intermediate_size=36,
                                                      num_hidden_layers=2, num_attention_heads=2)),
                     lambda m, i: m.gpt_neox.layers[i].mlp.dense_4h_to_h, (2, 36)),
        "opt": (OPTForCausalLM(OPTConfig(**small, hidden_size=16, ffn_dim=44, num_hidden_layers=2,
                                         num_attention_heads=2, word_embed_proj_dim=16)),
                lambda m, i: m.model.decoder.layers[i].fc2, (2, 44)),
    }
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    for name, (backbone, expected_module, shape) in models.items():
        backbone.eval()
        assert ffn_shape(backbone) == shape, name
        sites = ffn_sites(backbone)
        assert all(s.where == "input" and s.module is expected_module(backbone, s.layer) for s in sites), name
        # the units are the down-projection's input (B, S, N): replacing them by 0 leaves only its bias
        seen = []
        with ffn_hooks(backbone, lambda layer, units: seen.append(units.shape)):
            backbone(ids)
        assert seen == [(1, 5, shape[1])] * shape[0], name
        plain = backbone(ids).logits
        with ffn_hooks(backbone, lambda layer, units: torch.zeros_like(units)):
            zeroed = backbone(ids).logits
        assert not torch.allclose(plain, zeroed), name
        with pytest.raises(FFNLookupError, match="decoder-only: its one stack"):
            ffn_sites(backbone, "decoder")
    assert isinstance(ffn_sites(models["gpt2"][0])[0].module, Conv1D)  # GPT-2's MLP is Conv1D, not nn.Linear


# ---------------------------------------------------------------- the skill-neuron statistics
@pytest.mark.parametrize("choice", ["last", "text_mean"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("backbone", CAUSAL)
def test_statistics_equal_brute_force_at_batch_sizes_1_and_7_with_either_padding(causal_backbones, backbone,
                                                                                 padding_side, choice):
    model, dm = make(backbone, padding_side)
    train_acts, _ = brute_force(model, dm, "train", choice)
    expected = {role: brute_force_statistics(train_acts, *brute_force(model, dm, role, choice))
                for role in ("validation", "adv/typos")}
    # batches of 7 are padded on the side asked for (the texts differ in length)
    mask = next(iter(dm.analysis_loader("validation", list(range(7)), 7)))["attention_mask"]
    assert (mask == 0).any()
    padded_first = (mask[:, 0] == 0).any()
    assert bool(padded_first) == (padding_side == "left") and bool((mask[:, -1] == 0).any()) == (padding_side == "right")
    for batch_size in (1, 7):
        got = SkillNeuronCallback(batch_size=batch_size, positions=choice).passes(model, dm, list(expected))
        for role, want in expected.items():
            assert got[role]["threshold"].shape == (2, 1, 256)
            np.testing.assert_allclose(got[role]["threshold"].numpy(), want["threshold"], rtol=1e-5, atol=1e-6)
            for key in ("accuracy", "predictivity", "score"):
                np.testing.assert_allclose(got[role][key].numpy(), want[key], atol=1e-6,
                                           err_msg=f"{backbone} {padding_side} {choice} {role} {key} {batch_size}")


def test_prompt_positions_do_not_depend_on_the_example_so_the_prompt_choice_is_refused(tmp_path, causal_backbones):
    model, dm = make("tiny-gpt2")
    prompt_units = []
    with ffn_hooks(model.backbone, lambda layer, units: prompt_units.append(units[:, :P].clone())), torch.no_grad():
        model(Collator(pad_id_of(dm.tokenizer))([dm.datasets["validation"][i] for i in range(5)]))
    for units in prompt_units:  # (B, P, N): the same for every example
        torch.testing.assert_close(units, units[:1].expand_as(units), rtol=0, atol=1e-6)
    with pytest.raises(OptionError, match=r"positions='prompt'.*causal_lm.*prompt before the text.*"
                                               r"predictivity is constant.*positions=last"):
        validate(model, dm, tmp_path, SkillNeuronCallback())
    with pytest.raises(ValueError, match="choose one of \\['last', 'text_mean'\\]"):
        model.analysed_positions("encoder", "prompt")
    with pytest.raises(SkillNeuronError, match="decoder-only"):
        validate(model, dm, tmp_path, SkillNeuronCallback(part="decoder", positions="last"))


def test_neuron_files_record_what_was_analysed(tmp_path, causal_backbones):
    model, dm = make("tiny-llama", padding_side="left")
    validate(model, dm, tmp_path, SkillNeuronCallback(positions="text_mean"))
    tensors, meta = load_neuron_file(tmp_path / "skill_neurons" / "validation.safetensors")
    assert tensors["threshold"].shape == (2, 1, 256) and tensors["score"].shape == (2, 256)
    assert meta["family"] == "causal_lm" and meta["analysed_positions"] == "text_mean"
    assert meta["absolute_positions"] is None and meta["positions"].startswith("text_mean: the mean over each")
    assert meta["layout"] == "standard"


# ---------------------------------------------------------------- prompt tuning
# Steps of the learning test at lr 0.01, seed 0, one validation at the end. Measured on one thread, final val/acc
# over seeds 0-7: tiny-gpt2 after 800 steps 0.9875 (seed 0), 0.95-1.0 (all); tiny-llama after 400 steps 1.0 (all).
LEARNING_STEPS = {"tiny-gpt2": 800, "tiny-llama": 400}


@pytest.fixture
def one_thread():
    """Train on one CPU thread, then restore the count: on a loaded machine two threads wait on each other and a
    run takes 3-8 times longer (tiny-llama, 800 steps: 20 s on one thread, 50-170 s on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", CAUSAL)
def test_prompt_alone_learns_marker_task_and_backbone_is_bit_identical(tmp_path, causal_backbones, one_thread,
                                                                        backbone):
    steps = LEARNING_STEPS[backbone]
    seed_everything(0)
    model = CausalLMPromptTuning(backbone=backbone, prompt_length=8, learning_rate=1e-2)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    dm = PromptDataModule(task="marker", backbone=backbone, prompt_length=8, batch_size=32, eval_batch_size=200)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
                      max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None,
                      enable_checkpointing=False)
    trainer.fit(model, dm)
    assert trainer.global_step == steps
    accuracy = float(trainer.callback_metrics["val/acc"])  # the prompt after the last step, on all 400 rows
    assert accuracy >= 0.90, accuracy
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


@pytest.mark.parametrize("backbone", CAUSAL)
def test_right_and_left_padding_give_the_same_label_logits(causal_backbones, backbone):
    model, dm = make(backbone)
    rows = [dm.datasets["validation"][i] for i in range(7)]
    assert len({len(r["input_ids"]) for r in rows}) > 1
    pad = pad_id_of(dm.tokenizer)
    with torch.no_grad():
        one = torch.cat([model(Collator(pad)([r])) for r in rows])  # (7, C), no padding at all
        right, left = model(Collator(pad, "right")(rows)), model(Collator(pad, "left")(rows))
    torch.testing.assert_close(right, one, rtol=0, atol=1e-5)
    torch.testing.assert_close(left, one, rtol=0, atol=1e-5)


def test_checkpoint_holds_the_prompt_only(tmp_path, causal_backbones):
    seed_everything(0)
    model = CausalLMPromptTuning(backbone="tiny-gpt2", prompt_length=P)
    dm = PromptDataModule(task="marker", backbone="tiny-gpt2", prompt_length=P, batch_size=8, max_train_samples=16,
                          max_eval_samples=16)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path), max_steps=2, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "prompt.ckpt")
    ckpt = torch.load(tmp_path / "prompt.ckpt", weights_only=True)
    assert list(ckpt["state_dict"]) == ["prompt.weight"] and ckpt["skill_neurons"]["family"] == "causal_lm"
    restored = CausalLMPromptTuning.load_from_checkpoint(tmp_path / "prompt.ckpt")
    assert torch.equal(restored.prompt.weight, model.prompt.weight)


# ---------------------------------------------------------------- suppression
@pytest.fixture(scope="module")
def causal_neuron_run(tmp_path_factory, causal_backbones):
    root = tmp_path_factory.mktemp("causal-neurons")
    model, dm = make("tiny-gpt2")
    validate(model, dm, root, SkillNeuronCallback(positions="last"))
    return root


def evaluate(tmp_path, neuron_run, **suppression):
    model, dm = make("tiny-gpt2", eval_batch_size=7)
    recorder = RecordUnits()
    callbacks = [NeuronSuppression(neurons=[str(neuron_run)], **suppression), recorder] if suppression else [recorder]
    return validate(model, dm, tmp_path, callbacks[0], callbacks=callbacks), recorder


def test_suppression_rate_zero_is_exact_and_zero_and_mean_reach_every_position(tmp_path, causal_neuron_run):
    plain, _ = evaluate(tmp_path / "plain", causal_neuron_run)
    zero, _ = evaluate(tmp_path / "zero", causal_neuron_run, rate=0)
    for key in ("val/acc", "val/loss", "adv/typos/acc", "adv/typos/loss"):
        assert float(zero.callback_metrics[key]) == float(plain.callback_metrics[key]), key
    tensors = load_neuron_file(causal_neuron_run / "skill_neurons" / "validation.safetensors")[0]
    mask = top_percent_mask(tensors["score"], 10)
    suppressed, recorder = evaluate(tmp_path / "ten", causal_neuron_run, rate=10)
    assert float(suppressed.callback_metrics["val/loss"]) != float(plain.callback_metrics["val/loss"])
    for _, layer, _, units in recorder.seen:
        assert (units[..., mask[layer]] == 0).all()
    _, recorder = evaluate(tmp_path / "mean", causal_neuron_run, rate=10, perturbation="mean")
    for _, layer, _, units in recorder.seen:  # one analysed row (the last position): its threshold everywhere
        want = tensors["threshold"][layer][0, mask[layer]]
        torch.testing.assert_close(units[:, :, mask[layer]], want.expand(units.shape[0], units.shape[1], -1))


# ---------------------------------------------------------------- tasks, templates, verbalizers
def test_label_token_is_the_first_sub_token_after_the_template_with_its_leading_space(causal_backbones):
    for backbone, shown in (("tiny-gpt2", ["Ġno", "Ġyes"]), ("tiny-llama", ["▁no", "▁yes"])):
        _, dm = make(backbone)
        tok = dm.tokenizer
        assert tok.convert_ids_to_tokens(dm.label_token_ids) == shown
        for row in list(dm.datasets["validation"])[:5]:  # the word as it follows each example's text
            text = tok.decode(row["input_ids"], skip_special_tokens=True)
            for word, label_id in zip(("no", "yes"), dm.label_token_ids):
                after = tok(text + " " + word, add_special_tokens=False)["input_ids"]
                assert after[len(tok(text, add_special_tokens=False)["input_ids"])] == label_id


def test_default_template_per_task_type_and_its_override():
    assert get_task("sst2").causal_lm_template() == "{sentence} Sentiment:"
    assert get_task("qnli").causal_lm_template() == "{question}\n{sentence} Entailment:"
    assert get_task("marker").causal_lm_template() == "{sentence} Answer:"
    own = {**causal_task(), "causal_template": "Text: {sentence}\nHas a banana:"}
    assert TaskSpec.from_dict(own).causal_lm_template() == "Text: {sentence}\nHas a banana:"
    with pytest.raises(TaskError, match=r"causal_template uses \{review\}"):
        TaskSpec.from_dict({**causal_task(), "causal_template": "{review} Answer:"})


def test_template_override_reaches_the_tokens_and_truncation_keeps_the_cue(causal_backbones):
    own = {**causal_task(), "causal_template": "{sentence} Banana:"}
    _, dm = make("tiny-gpt2", task=own, max_text_length=6)
    tok = dm.tokenizer
    cue = tok(" Banana:", add_special_tokens=False)["input_ids"]
    for row in dm.datasets["validation"]:
        assert len(row["input_ids"]) <= 6 and row["input_ids"][-len(cue):] == cue
    _, llama = make("tiny-llama", max_text_length=8)
    for row in llama.datasets["validation"]:  # cut from the left, <s> kept
        assert len(row["input_ids"]) <= 8 and row["input_ids"][0] == llama.tokenizer.bos_token_id
        assert llama.tokenizer.decode(row["input_ids"], skip_special_tokens=True).endswith("Answer:")


# ---------------------------------------------------------------- bad input
def test_a_causal_lm_without_a_pad_token_pads_with_its_end_of_sequence_id(causal_backbones):
    for backbone in CAUSAL:
        _, dm = make(backbone)
        assert dm.tokenizer.pad_token_id is None  # as GPT-2 and Llama: no pad token
        batch = next(iter(dm.analysis_loader("validation", list(range(7)), 7)))
        assert (batch["input_ids"][batch["attention_mask"] == 0] == dm.tokenizer.eos_token_id).all()
        assert dm.tokenizer.pad_token_id is None  # the tokenizer is not changed


def test_verbalizer_words_whose_first_sub_tokens_collide_are_refused(causal_backbones):
    tokenizer = load_backbone("tiny-gpt2").tokenizer
    words = ["banana", "bananaz"]
    task = TaskSpec.from_dict({**causal_task(), "verbalizers": {"causal_lm": words}})
    firsts = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
    assert firsts[0] == firsts[1]  # the case this test is about
    with pytest.raises(TaskError, match=r"share their first sub-token.*next-token logits cannot tell them apart"):
        verbalizer_token_ids(tokenizer, "causal_lm", task)
    with pytest.raises(TaskError, match="declares no verbalizer for causal_lm backbones; add verbalizers.causal_lm"):
        verbalizer_token_ids(tokenizer, "causal_lm", TaskSpec.from_dict(marker_task()))


def test_layout_paper_family_classes_and_left_padding_are_checked(causal_backbones):
    with pytest.raises(LayoutError, match="P1 has no causal LM.*--model.layout=standard"):
        CausalLMPromptTuning(backbone="tiny-gpt2", layout="paper")
    with pytest.raises(BackboneError, match="use --model=lightning_modules.CausalLMPromptTuning"):
        MaskedLMPromptTuning(backbone="tiny-llama")
    with pytest.raises(LayoutError, match="layout 'paper' is P1's input .* use --model.layout=standard"):
        PromptDataModule(task="marker", backbone="tiny-gpt2", layout="paper").prepare_data()
    with pytest.raises(TaskError, match="P1's layout exists for .*masked_lm.*seq2seq.* only"):
        TaskSpec.from_dict({**causal_task(), "paper": {"causal_lm": {"segments": ["{sentence}"]}}})
    with pytest.raises(TaskError, match="padding_side=left is for causal LMs only.*use data.padding_side=right"):
        PromptDataModule(task="marker", backbone="tiny-roberta", padding_side="left").prepare_data()
