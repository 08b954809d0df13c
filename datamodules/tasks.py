"""The built-in tasks and adversarial sets (GLUE, AdvGLUE, IMDB, movie rationales, ETHICS), declared as data, and
:func:`get_task`. What a declaration holds, and how a user declares a task, is :mod:`datamodules.task_spec`.

Label ids follow the Hugging Face ``glue`` / ``adv_glue`` loaders; verbalizer words are listed in label-id order.
"""

from __future__ import annotations


from datamodules.task_spec import (  # noqa: F401 (the task vocabulary is importable from here too)
    FAMILIES, LAYOUTS, PaperFormat, SAMPLES_DIR, Source, TaskError, TaskSpec,
)

# ----------------------------------------------------------------------------------------------------
# Built-in declarations
# ----------------------------------------------------------------------------------------------------

GLUE = "nyu-mll/glue"
ADV_GLUE = "AI-Secure/adv_glue"
SENTIMENT = {"masked_lm": ("negative", "positive"), "seq2seq": ("negative", "positive"),
             "causal_lm": ("negative", "positive")}
# Label 0 is entailment in the hub's ids, so the "yes"/"entailment" word comes first.
ENTAILMENT = {"masked_lm": ("yes", "no"), "seq2seq": ("entailment", "contradiction"), "causal_lm": ("yes", "no")}
PARAPHRASE_NOT_FIRST = {"masked_lm": ("false", "true"), "seq2seq": ("false", "true"), "causal_lm": ("false", "true")}


def _hub(path: str, config: str | None, split: str, **kw) -> Source:
    return Source(hub=path, hub_config=config, hub_split=split, **kw)


def _glue(config: str, validation: str = "validation", **kw) -> dict[str, Source]:
    return {"train": _hub(GLUE, config, "train", **kw), "validation": _hub(GLUE, config, validation, **kw)}


def _adv(config: str, json_field: str, **kw) -> Source:
    """An AdvGLUE dev set; ``data.adversarial_files`` can point it at a local ``dev.json``."""
    return Source(hub=ADV_GLUE, hub_config=config, hub_split="validation", json_field=json_field, **kw)


# ---- P1's input formats (layout: paper), from Robust-Neurons src/formatter/*Prompt{Roberta,T5}Formatter.py ----
# RoBERTa: `<s> s </s>` with s cut to max_len (SST2/IMDB/movierationales/ethicsjustice), `<s> s1 </s> s2 </s>`
# cut to max_len+3 keeping the last `</s>` (MNLI/QNLI/QQP/MRPC/ethicsdeontology). T5: `s </s>` cut to max_len
# (SST2/IMDB/movierationales); MNLI/QNLI `"hypothesis: "+s1, " [SEP] sentence: ", "premise: "+s2` with no `</s>`,
# cut to max_len+2; QQP/MRPC `s1 <extra_id_0> s2 </s>` cut to max_len+2 keeping `</s>`; ethicsdeontology
# `s1 s2`, ethicsjustice `s`, both without `</s>`, cut to max_len+2. T5 target_len: 2 for MNLI/QNLI, else 1
# (src/config/*PromptT5.config).


def _p1_single(text: str) -> dict[str, PaperFormat]:
    return {"masked_lm": PaperFormat(("{cls}", "{%s}" % text, "{sep}"), extra_length=2),
            "seq2seq": PaperFormat(("{%s}" % text, "{eos}"))}


def _p1_roberta_pair(first: str, second: str, **kw) -> PaperFormat:
    return PaperFormat(("{cls}", "{%s}" % first, "{sep}", "{%s}" % second, "{sep}"), extra_length=3, **kw)


def _p1_t5_nli(hypothesis: str, premise: str, **kw) -> PaperFormat:
    return PaperFormat(("hypothesis: {%s}" % hypothesis, " [SEP] sentence: ", "premise: {%s}" % premise),
                       extra_length=2, target_length=2, **kw)


def _p1_paraphrase(first: str, second: str) -> dict[str, PaperFormat]:
    return {"masked_lm": _p1_roberta_pair(first, second),
            "seq2seq": PaperFormat(("{%s}" % first, "<extra_id_0>", "{%s}" % second, "{eos}"), extra_length=2)}


ETHICS = "hendrycks/ethics"
# ETHICS's hub "validation" split is the release's test.csv, the set P1 evaluates (3596 deontology / 2704
# justice rows, as src/data/*_test.csv); the hub's "test" split is test_hard.
ETHICS_VERBALIZERS = {"masked_lm": ("unacceptable", "acceptable"), "seq2seq": ("unacceptable", "acceptable"),
                      "causal_lm": ("no", "yes")}  # "unacceptable"/"acceptable" may share a first sub-token


def _ethics(config: str) -> dict[str, Source]:
    return {role: _hub(ETHICS, config, split) for role, split in
            (("train", "train"), ("validation", "validation"), ("test", "test"))}


_MNLI_BINARY = dict(
    label_names=("entailment", "contradiction"),
    label_map={0: "entailment", 2: "contradiction", "entailment": "entailment", "contradiction": "contradiction"},
    drop_labels=(1, "neutral"),
)

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            name="sst2", type="sentiment", text_fields=("sentence",), label_names=("negative", "positive"),
            verbalizers=SENTIMENT, splits=_glue("sst2"), adversarial={"adv_sst2": _adv("adv_sst2", "sst2")},
            paper=_p1_single("sentence"),
        ),
        TaskSpec(
            name="imdb", type="sentiment", text_fields=("text",), label_names=("neg", "pos"),
            verbalizers=SENTIMENT,
            # P1 evaluates IMDB on its test split (there is no validation split on the hub).
            splits={"train": _hub("stanfordnlp/imdb", None, "train"),
                    "validation": _hub("stanfordnlp/imdb", None, "test")},
            paper=_p1_single("text"),
        ),
        TaskSpec(
            name="movie_rationales", type="sentiment", text_fields=("review",), label_names=("NEG", "POS"),
            verbalizers=SENTIMENT,
            splits={"train": _hub("eraser-benchmark/movie_rationales", None, "train"),
                    "validation": _hub("eraser-benchmark/movie_rationales", None, "validation"),
                    "test": _hub("eraser-benchmark/movie_rationales", None, "test")},
            paper=_p1_single("review"),
        ),
        TaskSpec(
            name="qnli", type="nli", text_fields=("question", "sentence"),
            label_names=("entailment", "not_entailment"), verbalizers=ENTAILMENT, splits=_glue("qnli"),
            adversarial={"adv_qnli": _adv("adv_qnli", "qnli")},
            paper={"masked_lm": _p1_roberta_pair("question", "sentence"),
                   "seq2seq": _p1_t5_nli("question", "sentence")},
        ),
        TaskSpec(
            name="mnli", type="nli", text_fields=("premise", "hypothesis"), verbalizers=ENTAILMENT,
            splits=_glue("mnli", validation="validation_matched"),
            adversarial={"adv_mnli": _adv("adv_mnli", "mnli"), "adv_mnli_mm": _adv("adv_mnli_mismatched", "mnli-mm")},
            description="binary MNLI without neutral (as P1)", **_MNLI_BINARY,
            # P1 feeds the hypothesis first and scores three words against binary labels: RoBERTa reads
            # entailment at "neutral" ([no, neutral, yes], PromptRoberta.py), T5 scores [contradiction, neutral,
            # entailment] (PromptT5.py acc()).
            paper={"masked_lm": _p1_roberta_pair("hypothesis", "premise", words=("neutral", "no"), extra_words=("yes",)),
                   "seq2seq": _p1_t5_nli("hypothesis", "premise", extra_words=("neutral",))},
        ),
        TaskSpec(
            name="mnli3", type="nli", text_fields=("premise", "hypothesis"),
            label_names=("entailment", "neutral", "contradiction"),
            verbalizers={"masked_lm": ("yes", "maybe", "no"), "seq2seq": ("entailment", "neutral", "contradiction"),
                         "causal_lm": ("yes", "maybe", "no")},
            splits=_glue("mnli", validation="validation_matched"),
            adversarial={"adv_mnli": _adv("adv_mnli", "mnli"), "adv_mnli_mm": _adv("adv_mnli_mismatched", "mnli-mm")},
            description="three-way MNLI",
        ),
        TaskSpec(
            name="qqp", type="paraphrase", text_fields=("question1", "question2"),
            label_names=("not_duplicate", "duplicate"), verbalizers=PARAPHRASE_NOT_FIRST, splits=_glue("qqp"),
            adversarial={"adv_qqp": _adv("adv_qqp", "qqp")}, paper=_p1_paraphrase("question1", "question2"),
        ),
        TaskSpec(
            name="mrpc", type="paraphrase", text_fields=("sentence1", "sentence2"),
            label_names=("not_equivalent", "equivalent"), verbalizers=PARAPHRASE_NOT_FIRST, splits=_glue("mrpc"),
            paper=_p1_paraphrase("sentence1", "sentence2"),
        ),
        # ETHICS (P1 src/dataset/ethics{deontology,justice}Dataset.py): label = column 0 of the csv (1 acceptable),
        # deontology text = scenario then excuse, justice = scenario; verbalizers unacceptable / acceptable.
        TaskSpec(
            name="ethics_deontology", type="ethics", text_fields=("scenario", "excuse"),
            label_names=("unacceptable", "acceptable"), verbalizers=ETHICS_VERBALIZERS, splits=_ethics("deontology"),
            paper={"masked_lm": _p1_roberta_pair("scenario", "excuse"),
                   "seq2seq": PaperFormat(("{scenario}", "{excuse}"), extra_length=2)},
            description="ETHICS deontology: is the excuse reasonable? (evaluated on the release's test.csv)",
        ),
        TaskSpec(
            name="ethics_justice", type="ethics", text_fields=("scenario",),
            label_names=("unacceptable", "acceptable"), verbalizers=ETHICS_VERBALIZERS, splits=_ethics("justice"),
            paper={"masked_lm": _p1_single("scenario")["masked_lm"],
                   "seq2seq": PaperFormat(("{scenario}",), extra_length=2)},
            description="ETHICS justice: is the claim just? (evaluated on the release's test.csv)",
        ),
        TaskSpec(
            name="rte", type="nli", text_fields=("sentence1", "sentence2"),
            label_names=("entailment", "not_entailment"), verbalizers=ENTAILMENT, splits=_glue("rte"),
            adversarial={"adv_rte": _adv("adv_rte", "rte")},
            # RTE is not one of P1's tasks: its paper format follows P1's NLI formats (hypothesis first for T5).
            paper={"masked_lm": _p1_roberta_pair("sentence1", "sentence2"),
                   "seq2seq": _p1_t5_nli("sentence2", "sentence1")},
        ),
        # ---- shipped samples (no network needed) ----
        TaskSpec(
            name="marker", type="synthetic", text_fields=("sentence",), label_names=("absent", "present"),
            verbalizers={"masked_lm": ("no", "yes"), "seq2seq": ("no", "yes"), "causal_lm": ("no", "yes")},
            splits={"train": Source(file=str(SAMPLES_DIR / "marker" / "train.jsonl")),
                    "validation": Source(file=str(SAMPLES_DIR / "marker" / "validation.jsonl"))},
            adversarial={"marker_typo": Source(file=str(SAMPLES_DIR / "marker" / "adversarial.jsonl"))},
            description="synthetic: does the word 'banana' occur? (adversarial: one typo per sentence)",
            paper=_p1_single("sentence"),
        ),
        TaskSpec(
            name="sst2_sample", type="sentiment", text_fields=("sentence",), label_names=("negative", "positive"),
            verbalizers=SENTIMENT,
            splits={"train": Source(file=str(SAMPLES_DIR / "sst2_sample" / "train.tsv")),
                    "validation": Source(file=str(SAMPLES_DIR / "sst2_sample" / "dev.tsv"))},
            adversarial={"adv_sst2": Source(file=str(SAMPLES_DIR / "sst2_sample" / "adv_dev.json"), json_field="sst2")},
            description="2,000 SST-2 train rows, 200 dev rows and all 148 AdvGLUE SST-2 dev rows, shipped",
            paper=_p1_single("sentence"),
        ),
    ]
}


# P1's vocabulary ids for roberta-base (PromptRoberta.py), in this project's label-id order, then the extra
# scored ids. `layout: paper` on roberta-base refuses to run if the tokenizer gives other ids. ETHICS label 0
# is left out: P1's code reads id 897 where its own comment says "un" is 879, and which one its prompts were
# trained with cannot be checked offline (README, "Reproducing the paper").
P1_ROBERTA_BASE_IDS: dict[str, tuple[tuple[int | None, ...], tuple[int, ...]]] = {
    **{t: ((33407, 22173), ()) for t in ("sst2", "imdb", "movie_rationales")},
    "qnli": ((10932, 2362), ()),
    "mnli": ((12516, 2362), (10932,)),
    **{t: ((22303, 29225), ()) for t in ("qqp", "mrpc")},
    **{t: ((None, 32047), ()) for t in ("ethics_deontology", "ethics_justice")},
}

# P1's vocabulary ids for T5 (src/models/PromptT5.py acc(): the first-step logits it compares, e.g. negative
# 2841 / positive 1465, contradiction 27252 / entailment 3 (the "▁" that starts "entailment"), neutral 7163),
# in this project's label-id order, then the extra scored ids; checked like P1_ROBERTA_BASE_IDS on any tokenizer
# with T5's vocabulary (t5-small/base/large share it).
P1_T5_IDS: dict[str, tuple[tuple[int | None, ...], tuple[int, ...]]] = {
    **{t: ((2841, 1465), ()) for t in ("sst2", "imdb", "movie_rationales")},
    "qnli": ((3, 27252), ()),
    "mnli": ((3, 27252), (7163,)),
    **{t: ((6136, 1176), ()) for t in ("qqp", "mrpc")},
    **{t: ((29452, 9961), ()) for t in ("ethics_deontology", "ethics_justice")},
}

# The label id P1 encodes as 1, where it is not ours: P1's src/dataset/{QNLI,AdvQNLI}Dataset.py map the hub's
# label 0 (entailment) to 1 (`_map={0:1,1:0}`) and {MNLI,AdvMNLI}Dataset.py map entailment (0) to 1 and
# contradiction (2) to 0 (`_dict = {2:0, 0:1}`); find.py compute_accuracy counts `(a > b) == label`. Every other
# P1 task keeps the hub's labels (ETHICS: column 0 of the csv, 1 = acceptable), as ours do.
P1_LABEL_ONE = {"qnli": 0, "mnli": 0}


def accuracy_label(task: str, layout: str) -> int:
    """The label id whose one-vs-rest accuracy a binary task stores as ``accuracy``: 1 (``(a > b) == (y == 1)``),
    or under ``layout: paper`` P1's label 1, so the stored array equals P1's ``neuron_accuracy`` dumps
    (QNLI, MNLI: 1 − ours). Predictivity, max(acc, 1 − acc), is the same either way."""
    return P1_LABEL_ONE.get(task, 1) if layout == "paper" else 1


def get_task(task: str | dict | TaskSpec) -> TaskSpec:
    """A built-in task by name, or a user's declaration (mapping) turned into a :class:`TaskSpec`."""
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, dict):
        return TaskSpec.from_dict(task)
    if task not in TASKS:
        raise TaskError(
            f"unknown task {task!r} — known tasks: {', '.join(TASKS)} "
            "(or declare your own task as a mapping under data.task, see datamodules/task_spec.py)"
        )
    return TASKS[task]
