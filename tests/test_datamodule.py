"""The DataModule: templates, truncation, verbalizers, caching, and every user mistake's message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules import PromptDataModule, TaskError
from datamodules.tasks import TASKS
from lightning_modules.backbones import BackboneError


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def review_task(tmp_path: Path, train_rows=None, val_rows=None, **overrides) -> dict:
    train_rows = train_rows or [{"text": f"good film {i}", "y": i % 2} for i in range(8)]
    val_rows = val_rows or [{"text": f"bad film {i}", "y": i % 2} for i in range(4)]
    task = {
        "name": "reviews", "text_fields": ["review"], "label_names": ["bad", "good"],
        "verbalizers": {"masked_lm": ["negative", "positive"], "seq2seq": ["negative", "positive"]},
        "splits": {
            "train": {"file": write_jsonl(tmp_path / "train.jsonl", train_rows), "columns": {"review": "text", "label": "y"}},
            "validation": {"file": write_jsonl(tmp_path / "dev.jsonl", val_rows), "columns": {"review": "text", "label": "y"}},
        },
    }
    task.update(overrides)
    return task


def setup_dm(**kwargs) -> PromptDataModule:
    dm = PromptDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_masked_lm_examples_start_with_bos_mask_and_keep_labels(tiny_backbones):
    dm = setup_dm(task="marker", backbone="tiny-roberta", prompt_length=4, batch_size=8, max_train_samples=16)
    batch = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    assert (batch["input_ids"][:, 0] == tok.bos_token_id).all()
    assert (batch["input_ids"][:, 1] == tok.mask_token_id).all()
    assert (batch["mask_index"] == 1).all()
    texts = {r["idx"]: r for r in map(json.loads, open(TASKS["marker"].splits["train"].file))}
    for idx, label in zip(batch["idx"].tolist(), batch["labels"].tolist()):
        assert label == texts[idx]["label"]


def test_seq2seq_examples_have_no_mask_and_end_with_eos(tiny_backbones):
    dm = setup_dm(task="marker", backbone="tiny-t5", prompt_length=4, batch_size=4, max_train_samples=8, shuffle=False)
    batch = next(iter(dm.train_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert (batch["mask_index"] == -1).all()
    assert all(batch["input_ids"][i, lengths[i] - 1] == dm.tokenizer.eos_token_id for i in range(4))


def test_text_is_truncated_never_prompt_or_mask_and_fits_positions(tmp_path, tiny_backbones):
    long_rows = [{"text": " ".join(["film"] * 400), "y": i % 2} for i in range(4)]
    task = review_task(tmp_path, train_rows=long_rows, val_rows=long_rows[:2] + [{"text": "x", "y": 0}])
    # tiny-roberta: 258 position embeddings, positions start at 2 -> 256 usable; prompt 200 + mask leaves 55.
    dm = setup_dm(task=task, backbone="tiny-roberta", prompt_length=200, max_text_length=128, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[1] == 256 - 200
    assert (batch["input_ids"][:, 1] == dm.tokenizer.mask_token_id).all()
    assert (batch["input_ids"][:, -1] == dm.tokenizer.eos_token_id).all()
    assert dm.text_budget == 55
    short = setup_dm(task=task, backbone="tiny-roberta", prompt_length=8, max_text_length=20, batch_size=4)
    assert next(iter(short.train_dataloader()))["input_ids"].shape[1] == 20 + 1  # text budget + <mask>


def test_pair_template_truncates_longest_segment_first(tmp_path, tiny_backbones):
    rows = [{"q": " ".join(["film"] * 100), "s": "good day", "y": i % 2} for i in range(4)]
    task = {
        "name": "pairs", "text_fields": ["question", "sentence"], "label_names": ["a", "b"],
        "verbalizers": {"masked_lm": ["no", "yes"]},
        "splits": {role: {"file": write_jsonl(tmp_path / f"{role}.jsonl", rows),
                          "columns": {"question": "q", "sentence": "s", "label": "y"}}
                   for role in ("train", "validation")},
    }
    dm = setup_dm(task=task, backbone="tiny-roberta", prompt_length=4, max_text_length=24)
    ids = dm.datasets["train"][0]["input_ids"]
    assert len(ids) == 24 + 1
    assert dm.tokenizer.decode(ids).endswith("</s></s>good day</s>")  # the short segment survives whole


def test_tokenisation_is_cached_by_datasets(tmp_path, tiny_backbones):
    cache = tmp_path / "cache"
    setup_dm(task="marker", backbone="tiny-roberta", prompt_length=4, cache_dir=str(cache), max_train_samples=32)
    files = sorted((cache / "skill_neurons_tokenised").glob("*.arrow"))
    assert len(files) == 3  # train, validation, adversarial
    stamps = [f.stat().st_mtime_ns for f in files]
    setup_dm(task="marker", backbone="tiny-roberta", prompt_length=4, cache_dir=str(cache), max_train_samples=32)
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_eval_sets_are_clean_then_adversarial_and_loaders_match(tiny_backbones):
    dm = setup_dm(task="marker", backbone="tiny-roberta", prompt_length=4, eval_batch_size=400)
    assert [s.name for s in dm.eval_sets("validate")] == ["validation", "marker_typo"]
    sizes = [len(loader.dataset) for loader in dm.val_dataloader()]
    assert sizes == [400, 400]
    assert dm.split_records["train"]["rows"] == 2000
    assert dm.split_records["train"]["sha256"] != dm.split_records["validation"]["sha256"]


def test_user_task_from_local_files_with_field_mapping(tmp_path, tiny_backbones):
    dm = setup_dm(task=review_task(tmp_path), backbone="tiny-roberta", prompt_length=4)
    assert len(dm.datasets["train"]) == 8 and dm.label_token_ids == [
        dm.tokenizer.convert_tokens_to_ids("Ġnegative"), dm.tokenizer.convert_tokens_to_ids("Ġpositive")]


def test_local_adversarial_file_is_added_as_a_named_set(tmp_path, tiny_backbones):
    adv = write_jsonl(tmp_path / "adv.jsonl", [{"text": "gooood film", "y": 1}, {"text": "bda film", "y": 0}])
    dm = setup_dm(task=review_task(tmp_path), backbone="tiny-roberta", prompt_length=4,
                  extra_adversarial={"typos": {"file": adv, "columns": {"review": "text", "label": "y"}}})
    assert [s.name for s in dm.eval_sets("validate")] == ["validation", "typos"]
    assert len(dm.val_dataloader()[1].dataset) == 2


# ---------------------------------------------------------------- bad input: one clear message each
def test_unknown_task_lists_known_tasks():
    with pytest.raises(TaskError, match=r"unknown task 'sst' — known tasks: sst2, imdb"):
        PromptDataModule(task="sst")


def test_unknown_backbone_names_presets(tiny_backbones):
    dm = PromptDataModule(task="marker", backbone="no-such-org/no-such-model")
    with pytest.raises(BackboneError, match="tiny-roberta"):
        dm.prepare_data()


def test_missing_declared_field_names_columns(tmp_path, tiny_backbones):
    task = review_task(tmp_path)
    task["splits"]["train"]["columns"] = {"review": "body", "label": "y"}
    with pytest.raises(TaskError, match=r"train split .* has no review \(column 'body'\); its columns are \['text', 'y'\]"):
        setup_dm(task=task, backbone="tiny-roberta", prompt_length=4)


def test_label_outside_declared_names(tmp_path, tiny_backbones):
    task = review_task(tmp_path, val_rows=[{"text": "meh", "y": 0}, {"text": "odd", "y": 7}])
    with pytest.raises(TaskError, match=r"validation split .* row 1: .*label 7 is outside the declared labels"):
        setup_dm(task=task, backbone="tiny-roberta", prompt_length=4)


def test_empty_split(tmp_path, tiny_backbones):
    task = review_task(tmp_path)
    (tmp_path / "empty.csv").write_text("text,y\n")
    task["splits"]["validation"] = {"file": str(tmp_path / "empty.csv"), "columns": {"review": "text", "label": "y"}}
    with pytest.raises(TaskError, match="validation split of task 'reviews' .* is empty"):
        setup_dm(task=task, backbone="tiny-roberta", prompt_length=4)


def test_verbalizer_word_not_in_vocabulary(tmp_path, tiny_backbones):
    task = review_task(tmp_path, verbalizers={"masked_lm": ["negative", "supercalifragilistic"]})
    with pytest.raises(TaskError, match="verbalizer word 'supercalifragilistic' .* not in the vocabulary"):
        setup_dm(task=task, backbone="tiny-roberta", prompt_length=4)


def test_t5_label_words_sharing_first_subtoken(tmp_path, tiny_backbones):
    task = review_task(tmp_path, verbalizers={"seq2seq": ["banana", "bananas"]})
    with pytest.raises(TaskError, match="share their first sub-token"):
        setup_dm(task=task, backbone="tiny-t5", prompt_length=4)


def test_prompt_so_long_that_no_text_fits(tiny_backbones):
    dm = PromptDataModule(task="marker", backbone="tiny-roberta", prompt_length=300)
    with pytest.raises(TaskError, match=r"prompt_length=300 leaves no room for text.*--model.prompt_length=252 or less"):
        dm.prepare_data()


def test_hub_dataset_while_offline_names_local_files(tiny_backbones):
    dm = PromptDataModule(task="sst2", backbone="tiny-roberta", prompt_length=4)
    with pytest.raises(TaskError, match=r"HF_HUB_OFFLINE is set.*--data.files="):
        dm.prepare_data()


def test_missing_data_file(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        setup_dm(task="sst2", files={"train": str(tmp_path / "nope.tsv"), "validation": str(tmp_path / "dev.tsv")},
                 adversarial=[], backbone="tiny-roberta", prompt_length=4)


def test_threshold_split_cannot_be_the_evaluation_split(tmp_path):
    task = review_task(tmp_path)
    task["splits"]["validation"] = task["splits"]["train"]
    with pytest.raises(TaskError, match="validation split is the training split"):
        PromptDataModule(task=task)


def test_unknown_adversarial_set():
    with pytest.raises(TaskError, match=r"no adversarial set \['adv_qqp'\]; it has \['adv_sst2'\]"):
        PromptDataModule(task="sst2", adversarial=["adv_qqp"])


def test_every_builtin_task_declares_both_families_and_matching_label_counts():
    for task in TASKS.values():
        for family in ("masked_lm", "seq2seq"):
            assert len(task.words(family)) == len(task.label_names)


def test_paper_drops_the_last_partial_training_batch_as_p1(tmp_path, tiny_backbones):
    # 8 train rows at batch 3: P1 (drop_last, as its checkpoints' steps per epoch show) trains 2 batches of 3.
    task = review_task(tmp_path, paper={"masked_lm": {"segments": ["{cls}", "{review}", "{sep}"], "extra_length": 2}})
    common = dict(task=task, backbone="tiny-roberta", prompt_length=4, batch_size=3, shuffle=False)
    paper, standard = setup_dm(layout="paper", **common), setup_dm(layout="standard", **common)
    assert [len(b["labels"]) for b in paper.train_dataloader()] == [3, 3]
    assert [len(b["labels"]) for b in standard.train_dataloader()] == [3, 3, 2]  # kept outside paper
    for dm in (paper, standard):  # evaluation keeps every row
        assert sum(len(b["labels"]) for b in dm.val_dataloader()[0]) == 4
    # a training set smaller than one batch still trains (P1's sets never were)
    tiny = setup_dm(layout="paper", **{**common, "batch_size": 16})
    assert [len(b["labels"]) for b in tiny.train_dataloader()] == [8]


def test_train_split_validation_trains_on_the_validation_rows(tmp_path, tiny_backbones):
    dm = setup_dm(task=review_task(tmp_path), backbone="tiny-roberta", prompt_length=4, batch_size=2, shuffle=False,
                  train_split="validation")
    trained = [i for b in dm.train_dataloader() for i in b["idx"].tolist()]
    validated = [i for b in dm.val_dataloader()[0] for i in b["idx"].tolist()]
    assert trained == validated and len(trained) == 4
    assert dm.state_for_summary()["train_split"] == "validation"
    assert len(dm.datasets["train"]) == 8  # still loaded: the skill-neuron thresholds come from it
    default = setup_dm(task=review_task(tmp_path), backbone="tiny-roberta", prompt_length=4, batch_size=2)
    assert sum(len(b["labels"]) for b in default.train_dataloader()) == 8
