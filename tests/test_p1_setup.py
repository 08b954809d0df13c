"""``layout: paper`` follows P1's setup: the vocabulary-id guard recognises roberta-base's and T5's vocabularies by
content (not by name), and per-unit accuracy is stored in P1's label order (P1's ``src/dataset/*Dataset.py``
labels and ``src/find.py`` ``compute_accuracy``, ported here without our code)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from datamodules import PromptDataModule
from datamodules.p1_vocabulary import ROBERTA_VOCABULARY, T5_VOCABULARY, check_p1_ids, has_vocabulary
from datamodules.prompt_datamodule import verbalizer_token_ids
from datamodules.tasks import TASKS, TaskError, accuracy_label
from lightning_modules.neuron_statistics import PredictivityAccumulator
from tests.helpers.statistics import update

# Label-word tokens of the real vocabularies (P1's PromptRoberta.py / PromptT5.py ids, and roberta-base's
# leading-space ids of "negative" / "positive").
ROBERTA_WORDS = {"negative": 33407, "positive": 22173, "Ġnegative": 2430, "Ġpositive": 1313, "no": 2362,
                 "neutral": 12516, "yes": 10932}
T5_WORDS = {"▁negative": 2841, "▁positive": 1465, "▁contradiction": 27252, "▁neutral": 7163,
            "en": 35, "tail": 5756, "ment": 297,  # "entailment" -> [3, 35, 5756, 297] (P1's PromptT5.py comment)
            "negative": 4000, "positive": 4001}


def vocabulary_tokenizer(vocabulary: tuple[int, dict[str, int]], words: dict[str, int], pre_tokenizer,
                         name: str, **specials) -> PreTrainedTokenizerFast:
    """A greedy-longest-match tokenizer with exactly ``size`` entries holding the fixed tokens and ``words`` at
    their ids (the rest filler): what the guard sees of a real roberta-base / T5 tokenizer, built offline."""
    size, fixed = vocabulary
    vocab = {**fixed, **words}
    taken = set(vocab.values())
    vocab.update({f"filler{i}": i for i in range(size) if i not in taken})
    assert len(vocab) == size
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix=""))
    tokenizer.pre_tokenizer = pre_tokenizer
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", **specials)
    fast.name_or_path = name
    return fast


def roberta_like(add_prefix_space: bool) -> PreTrainedTokenizerFast:
    return vocabulary_tokenizer(ROBERTA_VOCABULARY, ROBERTA_WORDS,
                                pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False),
                                "/models/my-roberta-copy", pad_token="<pad>", mask_token="<mask>")


def t5_like(prepend: str) -> PreTrainedTokenizerFast:
    return vocabulary_tokenizer(T5_VOCABULARY, T5_WORDS, pre_tokenizers.Metaspace(prepend_scheme=prepend),
                                "google-t5/t5-base-local", pad_token="<pad>", eos_token="</s>")


def test_a_renamed_roberta_base_is_checked_and_refused_with_leading_space_ids():
    sst2, mnli = TASKS["sst2"], TASKS["mnli"]
    good = roberta_like(add_prefix_space=False)
    assert has_vocabulary(good, ROBERTA_VOCABULARY) and not has_vocabulary(good, T5_VOCABULARY)
    ids = verbalizer_token_ids(good, "masked_lm", sst2, "paper")
    assert ids == [33407, 22173]
    check_p1_ids("my-roberta-copy", good, sst2, "masked_lm", "paper", ids)  # P1's ids: passes
    check_p1_ids("my-roberta-copy", good, mnli, "masked_lm", "paper",
                 verbalizer_token_ids(good, "masked_lm", mnli, "paper"))  # [neutral, no] + yes, as P1

    spaced = roberta_like(add_prefix_space=True)  # same vocabulary, other name, " negative" ids
    ids = verbalizer_token_ids(spaced, "masked_lm", sst2, "paper")
    assert ids == [2430, 1313]
    with pytest.raises(TaskError, match=r"roberta-base's vocabulary must read P1's vocabulary ids \[33407, 22173\]"
                                        r".*gives \[2430, 1313\].*leading space"):
        check_p1_ids("FacebookAI/roberta-large", spaced, sst2, "masked_lm", "paper", ids)
    check_p1_ids("my-roberta-copy", spaced, sst2, "masked_lm", "standard", ids)  # only paper is guarded
    check_p1_ids("my-roberta-copy", spaced, TASKS["rte"], "masked_lm", "paper", ids)  # not a P1 task


def test_a_t5_tokenizer_whose_label_ids_differ_from_p1s_is_refused():
    sst2, qnli, mnli = TASKS["sst2"], TASKS["qnli"], TASKS["mnli"]
    good = t5_like("always")  # SentencePiece: "negative" -> "▁negative"
    assert has_vocabulary(good, T5_VOCABULARY) and not has_vocabulary(good, ROBERTA_VOCABULARY)
    ids = verbalizer_token_ids(good, "seq2seq", sst2, "paper")
    assert ids == [2841, 1465]
    check_p1_ids("t5-base-local", good, sst2, "seq2seq", "paper", ids)
    qnli_ids = verbalizer_token_ids(good, "seq2seq", qnli, "paper")
    assert qnli_ids == [3, 27252]  # "entailment" starts with "▁" (3) in t5-base, as P1's comment says
    check_p1_ids("t5-base-local", good, qnli, "seq2seq", "paper", qnli_ids)
    check_p1_ids("t5-base-local", good, mnli, "seq2seq", "paper", verbalizer_token_ids(good, "seq2seq", mnli, "paper"))

    other = t5_like("never")  # same vocabulary, words read without "▁"
    ids = verbalizer_token_ids(other, "seq2seq", sst2, "paper")
    assert ids == [4000, 4001]
    with pytest.raises(TaskError, match=r"t5-base's vocabulary must read P1's vocabulary ids \[2841, 1465\]"):
        check_p1_ids("some-local-t5", other, sst2, "seq2seq", "paper", ids)
    check_p1_ids("some-local-t5", other, sst2, "seq2seq", "standard", ids)


def test_the_guard_leaves_the_tiny_test_tokenizers_alone(tiny_backbones):
    for backbone, family in (("tiny-roberta", "masked_lm"), ("tiny-t5", "seq2seq")):
        dm = PromptDataModule(task="sst2", backbone=backbone, prompt_length=4, layout="paper")
        assert not has_vocabulary(dm.tokenizer, ROBERTA_VOCABULARY)
        assert not has_vocabulary(dm.tokenizer, T5_VOCABULARY)
        check_p1_ids(backbone, dm.tokenizer, TASKS["sst2"], family, "paper", [5, 6])  # other ids: not checked
        assert len(dm.label_token_ids) == 2  # the property runs the guard and passes


def p1_compute_accuracy(acts: torch.Tensor, threshold: torch.Tensor, p1_labels: list[int]) -> torch.Tensor:
    """find.py compute_accuracy summed over the batch, divided by the examples: (a > b) == label."""
    correct = torch.zeros(threshold.shape, dtype=torch.float64)
    for activation, label in zip(acts, p1_labels):
        correct += ((activation > threshold) == bool(label)).to(torch.float64)
    return correct / len(p1_labels)


@pytest.mark.parametrize("task", ["sst2", "qnli", "mnli", "qqp", "ethics_justice"])
def test_paper_stores_accuracy_in_p1s_label_order(task):
    # P1's label of each of our label ids: QNLI (_map={0:1,1:0}) and MNLI (_dict={2:0, 0:1}) name entailment 1,
    # our id 0; the others keep the hub's ids.
    p1_label_of = {"qnli": {0: 1, 1: 0}, "mnli": {0: 1, 1: 0}}.get(task, {0: 0, 1: 1})
    generator = torch.Generator().manual_seed(0)
    acts = torch.randn(40, 2, 3, 5, generator=generator)  # (examples, L, P, N)
    threshold = torch.randn(2, 3, 5, generator=generator) * 0.3
    labels = torch.randint(0, 2, (40,), generator=generator)
    counts = PredictivityAccumulator(threshold, 2)
    update(counts, acts, labels)
    p1 = p1_compute_accuracy(acts, threshold, [p1_label_of[int(y)] for y in labels])
    stored = counts.accuracy(accuracy_label(task, "paper"))
    assert torch.allclose(stored.double(), p1, atol=1e-7)
    ours = counts.accuracy(accuracy_label(task, "standard"))
    assert torch.equal(ours, counts.accuracy())  # standard keeps (a > b) == (y == 1)
    if task in ("qnli", "mnli"):
        assert torch.allclose(stored.double(), 1 - ours.double(), atol=1e-6) and not torch.equal(stored, ours)
    else:
        assert torch.equal(stored, ours)
    assert torch.allclose(counts.predictivity(), torch.maximum(stored, 1 - stored), atol=1e-6)  # unchanged


def test_accuracy_label_is_recorded_and_rejects_non_classes(tiny_backbones):
    assert [accuracy_label(t, "paper") for t in ("sst2", "qnli", "mnli", "qqp", "rte")] == [1, 0, 0, 1, 1]
    assert {accuracy_label(t, "standard") for t in TASKS} == {1}
    dm = PromptDataModule(task="qnli", backbone="tiny-roberta", prompt_length=4, layout="paper")
    assert dm.accuracy_label == 0 and dm.state_for_summary()["accuracy_label"] == "entailment"
    assert PromptDataModule(task="qnli", backbone="tiny-roberta", prompt_length=4).accuracy_label == 1
    counts = PredictivityAccumulator(torch.zeros(1, 1, 1), 2)
    with pytest.raises(ValueError, match="positive must be a class id"):
        counts.accuracy(2)
