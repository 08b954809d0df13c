"""Label ids and verbalizer order agree on real rows of GLUE / AdvGLUE (skipped unless
$SKILL_NEURONS_REAL_DATA names a folder holding those files, see ``tests.helpers.real_data``)."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import real_data
from datamodules.sources import prepare_split
from datamodules.tasks import Source, get_task


def rows(task: str, source: Source, role: str = "validation"):
    ds, record = prepare_split(get_task(task), source, role)
    return ds, record


def word(task: str, family: str, label: int) -> str:
    return get_task(task).words(family)[label]


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@pytest.mark.slow  # reads and tokenises a whole GLUE split
def test_sst2_first_train_row_is_negative_and_reads_negative():
    ds, record = rows("sst2", Source(file=str(real_data("glue_sst2", "train.tsv"))), "train")
    assert ds[0]["sentence"].strip() == "hide new secretions from the parental units"
    assert ds[0]["label"] == 0
    assert word("sst2", "masked_lm", 0) == "negative" and word("sst2", "seq2seq", 1) == "positive"
    assert record["rows"] == 67349
    assert record["label_counts"] == {"negative": 29780, "positive": 37569}


def test_sst2_dev_counts_match_glue():
    _, record = rows("sst2", Source(file=str(real_data("glue_sst2", "dev.tsv"))))
    assert record["label_counts"] == {"negative": 428, "positive": 444}


def test_qnli_string_labels_map_to_hub_ids_and_entailment_words():
    ds, record = rows("qnli", Source(file=str(real_data("glue_qnli", "dev.tsv"))))
    assert record["rows"] == 5463
    assert record["label_counts"] == {"entailment": 2702, "not_entailment": 2761}
    assert ds[0]["question"] == "What came into force after the new constitution was herald?"
    assert ds[0]["label"] == 0  # 'entailment' in the TSV, hub id 0
    assert word("qnli", "masked_lm", 0) == "yes" and word("qnli", "seq2seq", 0) == "entailment"
    assert word("qnli", "masked_lm", 1) == "no" and word("qnli", "seq2seq", 1) == "contradiction"


@pytest.mark.slow  # reads and tokenises a whole GLUE split
def test_mnli_binary_drops_neutral_and_keeps_entailment_first():
    ds, record = rows("mnli", Source(file=str(real_data("glue_mnli", "dev_matched.jsonl"))))
    assert record["label_counts"] == {"entailment": 3479, "contradiction": 3213}
    assert record["dropped"] == 3123
    first = ds[0]  # row 0 of the file is neutral, so the first kept row is row 1 (contradiction)
    assert first["idx"] == 1 and first["label"] == 1
    assert word("mnli", "seq2seq", first["label"]) == "contradiction"
    _, three = rows("mnli3", Source(file=str(real_data("glue_mnli", "dev_matched.jsonl"))))
    assert three["label_counts"] == {"entailment": 3479, "neutral": 3123, "contradiction": 3213}


@pytest.mark.parametrize(
    "task, field, counts",
    [
        ("sst2", "sst2", {"negative": 72, "positive": 76}),
        ("qnli", "qnli", {"entailment": 74, "not_entailment": 74}),
        ("mnli", "mnli", {"entailment": 32, "contradiction": 50}),  # 121 without the 39 neutral = 82
        ("mnli3", "mnli-mm", {"entailment": 60, "neutral": 45, "contradiction": 57}),
        ("qqp", "qqp", {"not_duplicate": 46, "duplicate": 32}),
        ("rte", "rte", {"entailment": 35, "not_entailment": 46}),
    ],
)
def test_advglue_dev_json_label_counts(task, field, counts):
    dev = real_data("advglue", "dev.json")
    _, record = rows(task, Source(file=str(dev), json_field=field))
    assert record["label_counts"] == counts


@pytest.mark.parametrize(
    "task, adv_field, clean_file",
    [("sst2", "sst2", ("glue_sst2", "dev.tsv")),
     ("qnli", "qnli", ("glue_qnli", "dev.tsv")),
     ("mnli", "mnli", ("glue_mnli", "dev_matched.jsonl"))],
)
def test_advglue_and_glue_give_the_same_label_id_to_the_same_example(task, adv_field, clean_file):
    """AdvGLUE's annotated dev keeps each item's clean original: both loaders must agree on its label id."""
    ann = json.loads(real_data("advglue", "dev_ann.json").read_text())[adv_field]
    adv, _ = rows(task, Source(file=str(real_data("advglue", "dev.json")), json_field=adv_field))
    clean, _ = rows(task, Source(file=str(real_data(*clean_file))))
    fields = get_task(task).text_fields
    clean_label = {"|".join(norm(row[f]) for f in fields): row["label"] for row in clean}
    adv_label = dict(zip(adv["idx"], adv["label"]))
    checked = 0
    for item in ann:
        key = "|".join(norm(item.get(f"original_{f}", item[f])) for f in fields)
        if item["idx"] in adv_label and key in clean_label:
            assert adv_label[item["idx"]] == clean_label[key], item
            checked += 1
    assert checked >= 60
