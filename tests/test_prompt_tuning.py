"""The prompt-tuning modules: the prompt alone learns, the backbone never changes, checkpoints are tiny."""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer, seed_everything

from datamodules import PromptDataModule
from lightning_modules import MaskedLMPromptTuning, Seq2SeqPromptTuning, SoftPrompt
from lightning_modules.backbones import BackboneError, load_backbone

FAMILIES = [(MaskedLMPromptTuning, "tiny-roberta"), (Seq2SeqPromptTuning, "tiny-t5")]


def trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    return Trainer(**{**defaults, **kwargs})


@pytest.mark.slow
@pytest.mark.parametrize("cls, backbone", FAMILIES)
def test_prompt_alone_learns_marker_task_and_backbone_is_bit_identical(tmp_path, tiny_backbones, cls, backbone):
    seed_everything(0)
    model = cls(backbone=backbone, prompt_length=8, learning_rate=1e-2)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    prompt_before = model.prompt.weight.detach().clone()
    dm = PromptDataModule(task="marker", backbone=backbone, prompt_length=8, batch_size=32, eval_batch_size=200)
    t = trainer(tmp_path, max_steps=300, enable_checkpointing=False)
    t.fit(model, dm)
    assert t.callback_metrics["val/acc"] >= 0.90
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(prompt_before, model.prompt.weight)
    # The adversarial set (marker misspelled) is evaluated too and is clearly harder.
    assert t.callback_metrics["adv/marker_typo/acc"] < t.callback_metrics["val/acc"] - 0.05


def test_only_prompt_is_optimised_and_backbone_has_no_grad(tiny_backbones):
    model = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=4)
    optimizer = model.configure_optimizers()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(params) == 1 and params[0] is model.prompt.weight
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.defaults["weight_decay"] == 0.0
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_backbone_dropout_is_off_in_train_mode_unless_asked(tiny_backbones):
    model = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=4).train()
    assert not model.backbone.training and model.prompt.training
    model = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=4, backbone_dropout=True).train()
    assert model.backbone.training


@pytest.mark.parametrize("cls, backbone", FAMILIES)
def test_checkpoint_holds_prompt_and_optimizer_only_and_loads_weights_only(tmp_path, tiny_backbones, cls, backbone):
    seed_everything(0)
    model = cls(backbone=backbone, prompt_length=8, learning_rate=1e-2)
    dm = PromptDataModule(task="marker", backbone=backbone, prompt_length=8, batch_size=32, max_train_samples=64,
                          max_eval_samples=64)
    t = trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    t.fit(model, dm)
    path = tmp_path / "prompt.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert list(ckpt["state_dict"]) == ["prompt.weight"]
    state = ckpt["optimizer_states"][0]["state"]
    assert len(state) == 1 and state[0]["exp_avg"].shape == (8, model.prompt.weight.shape[1])
    assert ckpt["hyper_parameters"]["backbone"] == backbone
    restored = cls.load_from_checkpoint(path)
    assert torch.equal(restored.prompt.weight, model.prompt.weight)
    wrong = cls(backbone=backbone, prompt_length=5)
    with pytest.raises(ValueError, match=r"checkpoint prompt has shape \(8, 64\) but this model's is \(5, 64\)"):
        wrong.on_load_checkpoint(ckpt)


@pytest.mark.slow
def test_roberta_base_shaped_checkpoint_is_megabytes_not_hundreds(tmp_path, tiny_backbones):
    model = MaskedLMPromptTuning(backbone="random-roberta-base", prompt_length=100)
    assert model.backbone.config.num_hidden_layers == 12 and model.backbone.config.intermediate_size == 3072
    dm = PromptDataModule(task="marker", backbone="random-roberta-base", prompt_length=100, batch_size=2,
                          max_train_samples=2, max_eval_samples=2, adversarial=[])
    t = trainer(tmp_path, max_steps=1, enable_checkpointing=False, limit_val_batches=0)
    t.fit(model, dm)
    t.save_checkpoint(tmp_path / "big.ckpt")
    size = (tmp_path / "big.ckpt").stat().st_size
    assert size < 2_000_000  # 100 x 768 prompt + two Adam moments ~ 0.9 MB; the backbone would be ~500 MB


def test_bf16_mixed_precision_step_runs(tmp_path, tiny_backbones):
    model = Seq2SeqPromptTuning(backbone="tiny-t5", prompt_length=4)
    dm = PromptDataModule(task="marker", backbone="tiny-t5", prompt_length=4, batch_size=8, max_train_samples=16,
                          max_eval_samples=16)
    t = trainer(tmp_path, fast_dev_run=2, precision="bf16-mixed")
    t.fit(model, dm)
    assert torch.isfinite(t.callback_metrics["train/loss_step"])  # the step's loss and the epoch's mean
    assert torch.isfinite(t.callback_metrics["train/loss_epoch"])
    assert model.prompt.weight.dtype == torch.float32


def test_soft_prompt_initialisations(tiny_backbones):
    torch.manual_seed(0)
    embeddings = torch.randn(50, 6)
    prompt = SoftPrompt(5, 6)
    prompt.initialise("text", embeddings, token_ids=[3, 7])
    assert torch.equal(prompt.weight, embeddings[[3, 7, 3, 7, 3]])
    prompt.initialise("vocab", embeddings, exclude_ids=list(range(49)))
    assert torch.equal(prompt.weight, embeddings[[49] * 5])
    prompt.initialise("random", embeddings)
    assert abs(prompt.weight.std().item() - embeddings.std().item()) < 0.6
    assert prompt(3).shape == (3, 5, 6)
    with pytest.raises(ValueError, match="unknown prompt_init 'zeros'"):
        prompt.initialise("zeros", embeddings)


def test_wrong_family_class_names_the_right_one(tiny_backbones):
    with pytest.raises(BackboneError, match="use --model=lightning_modules.Seq2SeqPromptTuning"):
        MaskedLMPromptTuning(backbone="tiny-t5")


def test_presets_load_through_from_pretrained_from_their_saved_directory(tiny_backbones):
    from transformers import AutoModelForMaskedLM

    direct = AutoModelForMaskedLM.from_pretrained(str(tiny_backbones["tiny-roberta"]))
    loaded = load_backbone(str(tiny_backbones["tiny-roberta"]))  # a local path works like a hub name
    assert loaded.family == "masked_lm"
    assert torch.equal(direct.roberta.embeddings.word_embeddings.weight,
                       loaded.model.roberta.embeddings.word_embeddings.weight)
    assert direct.config.initializer_range == 0.3


def test_hub_backbone_while_offline_names_local_path_alternative():
    with pytest.raises(BackboneError, match=r"HF_HUB_OFFLINE is set .*--model.backbone=/path/to/roberta-base"):
        load_backbone("roberta-base")


@pytest.mark.slow
def test_random_full_size_shapes(tiny_backbones):
    t5 = load_backbone("random-t5-base")
    assert t5.family == "seq2seq" and t5.config.num_layers == 12 and t5.config.d_ff == 3072
    assert t5.config.vocab_size == 32128
