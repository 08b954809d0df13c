"""Tasks and adversarial sets, declared once as data.

A task says *what* its examples are (text fields, label names, template, verbalizer words per backbone
family) and *where* each split comes from (a hub dataset split or a local file). The DataModule only reads
these declarations; nothing elsewhere branches on a task's name.

Label ids follow the Hugging Face ``glue`` / ``adv_glue`` loaders (e.g. SST-2: 0 negative, 1 positive;
QNLI/RTE: 0 entailment, 1 not_entailment). Verbalizer words are listed in label-id order, so the word
for label ``k`` is ``verbalizers[family][k]``. Binary MNLI drops *neutral* as P1 does; the remaining
labels are renumbered 0 entailment, 1 contradiction.

Users declare their own task as a mapping with the same fields (YAML under ``data.task``), e.g.::

    data:
      task:
        name: my_reviews
        text_fields: [review]
        label_names: [bad, good]
        verbalizers: {masked_lm: [negative, positive], seq2seq: [negative, positive]}
        splits:
          train: {file: data/train.csv, columns: {review: text}}
          validation: {file: data/dev.csv, columns: {review: text}}
        adversarial:
          typos: {file: data/dev_typos.jsonl, columns: {review: text}}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAMILIES = ("masked_lm", "seq2seq")
SPLIT_ROLES = ("train", "validation", "test")
SAMPLES_DIR = Path(__file__).parent / "data"
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class TaskError(ValueError):
    """A user's mistake in declaring or choosing a task; the message names the fix."""


@dataclass(frozen=True)
class Source:
    """Where the rows of one split come from: a hub dataset split or a local file.

    ``columns`` maps the task's text fields (and ``label``) to the source's column names when they differ.
    ``json_field`` selects a key of a JSON file holding several lists (AdvGLUE's ``dev.json``: ``sst2``).
    ``quoting`` applies to csv/tsv: GLUE's TSVs must be read with ``none`` (``csv.QUOTE_NONE``).
    """

    hub: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None
    file: str | None = None
    json_field: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    quoting: str | None = None

    def __post_init__(self):
        if (self.hub is None) == (self.file is None):
            raise TaskError(f"a data source needs exactly one of 'hub' or 'file', got {self.describe()}")
        if self.hub is not None and self.hub_split is None:
            raise TaskError(f"hub source {self.hub!r} needs 'hub_split' (e.g. train, validation)")
        if self.file is not None and Path(self.file).is_dir():
            raise TaskError(f"data file {self.file!r} is a directory — give a file in it ({', '.join(FILE_FORMATS)})")
        if self.file is not None and self.format is None:
            raise TaskError(
                f"cannot tell the format of {self.file!r}: use one of {', '.join(FILE_FORMATS)} as suffix"
            )
        if self.quoting not in (None, "none", "minimal"):
            raise TaskError(f"quoting must be 'none' or 'minimal', got {self.quoting!r}")

    @property
    def format(self) -> str | None:
        return FILE_FORMATS.get(Path(self.file).suffix.lower()) if self.file else None

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    def describe(self) -> str:
        if self.file is not None:
            return f"{self.file}" + (f"[{self.json_field}]" if self.json_field else "")
        return f"hub:{self.hub}" + (f"/{self.hub_config}" if self.hub_config else "") + f":{self.hub_split}"

    def with_file(self, path: str) -> "Source":
        """The same columns, read from a local file instead (for local copies of hub data)."""
        return dataclasses.replace(self, hub=None, hub_config=None, hub_split=None, file=str(path))


@dataclass(frozen=True)
class TaskSpec:
    """One task: its fields, labels, template, verbalizers, splits and adversarial counterparts.

    ``template`` holds one format string per segment (one for single sentences, two for pairs) over the
    text fields. ``label_map`` maps raw labels (ints or strings as found in the sources) to label names;
    raw labels listed in ``drop_labels`` are removed (binary MNLI drops neutral); any other raw label is an
    error. Without ``label_map``, ints index ``label_names`` and strings must be label names.
    """

    name: str
    type: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    verbalizers: dict[str, tuple[str, ...]]
    splits: dict[str, Source]
    template: tuple[str, ...] = ()
    adversarial: dict[str, Source] = field(default_factory=dict)
    label_map: dict[Any, str] = field(default_factory=dict)
    drop_labels: tuple[Any, ...] = ()
    description: str = ""

    def __post_init__(self):
        if not self.template:
            object.__setattr__(self, "template", tuple("{%s}" % f for f in self.text_fields))
        if not 1 <= len(self.template) <= 2:
            raise TaskError(f"task {self.name!r}: template needs one or two segments, got {self.template}")
        for segment in self.template:
            for fname in _format_fields(segment):
                if fname not in self.text_fields:
                    raise TaskError(f"task {self.name!r}: template uses {{{fname}}}, not in {self.text_fields}")
        if len(self.label_names) < 2:
            raise TaskError(f"task {self.name!r} needs at least two label names, got {self.label_names}")
        for family, words in self.verbalizers.items():
            if family not in FAMILIES:
                raise TaskError(f"task {self.name!r}: unknown backbone family {family!r} (use {FAMILIES})")
            if len(words) != len(self.label_names):
                raise TaskError(
                    f"task {self.name!r}: {family} verbalizer {list(words)} must give one word per label "
                    f"{list(self.label_names)}, in the same order"
                )
        for raw, name in self.label_map.items():
            if name not in self.label_names:
                raise TaskError(f"task {self.name!r}: label_map sends {raw!r} to unknown label {name!r}")
        if "train" not in self.splits or "validation" not in self.splits:
            raise TaskError(f"task {self.name!r} needs 'train' and 'validation' splits, got {list(self.splits)}")
        for role in self.splits:
            if role not in SPLIT_ROLES:
                raise TaskError(f"task {self.name!r}: unknown split {role!r} (use {SPLIT_ROLES})")

    def label_id(self, raw: Any) -> int | None:
        """The label id of a raw label, ``None`` if it is to be dropped; raises for anything else."""
        if raw in self.drop_labels:
            return None
        if raw in self.label_map:
            return self.label_names.index(self.label_map[raw])
        if isinstance(raw, str) and raw in self.label_names:
            return self.label_names.index(raw)
        if isinstance(raw, int) and not isinstance(raw, bool) and not self.label_map and 0 <= raw < len(self.label_names):
            return raw
        known = list(self.label_map) or [*range(len(self.label_names)), *self.label_names]
        raise TaskError(
            f"task {self.name!r}: label {raw!r} is outside the declared labels {known}"
            + (f" (dropped: {list(self.drop_labels)})" if self.drop_labels else "")
            + " — fix the file or declare the label in label_names / label_map / drop_labels"
        )

    def words(self, family: str) -> tuple[str, ...]:
        if family not in self.verbalizers:
            raise TaskError(
                f"task {self.name!r} declares no verbalizer for {family} backbones; add verbalizers.{family}"
            )
        return self.verbalizers[family]

    @classmethod
    def from_dict(cls, spec: dict) -> "TaskSpec":
        """Build a task from a plain mapping (a YAML ``data.task``), with clear errors for missing keys."""
        spec = dict(spec)
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(spec) - allowed
        if unknown:
            raise TaskError(f"unknown task keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        required = ("name", "text_fields", "label_names", "verbalizers", "splits")
        missing = [k for k in required if k not in spec]
        if missing:
            raise TaskError(f"task declaration misses {missing} (required: {list(required)})")
        spec.setdefault("type", "custom")
        spec["text_fields"] = tuple(spec["text_fields"])
        spec["label_names"] = tuple(spec["label_names"])
        spec["template"] = tuple(spec.get("template", ()))
        spec["drop_labels"] = tuple(spec.get("drop_labels", ()))
        spec["verbalizers"] = {k: tuple(v) for k, v in spec["verbalizers"].items()}
        spec["splits"] = {k: as_source(v) for k, v in spec["splits"].items()}
        spec["adversarial"] = {k: as_source(v) for k, v in (spec.get("adversarial") or {}).items()}
        spec["label_map"] = dict(spec.get("label_map") or {})
        return cls(**spec)


def as_source(value: Any) -> Source:
    """A :class:`Source` from a path or a mapping (``{file: ..., columns: {...}}``)."""
    if isinstance(value, Source):
        return value
    if isinstance(value, str):
        return Source(file=value)
    if not isinstance(value, dict):
        raise TaskError(f"a data source is a file path or a mapping with 'file' or 'hub', got {value!r}")
    try:
        return Source(**value)
    except TypeError as err:
        raise TaskError(f"bad data source {value!r}: {err}") from None


def _format_fields(segment: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(segment) if name]


# ----------------------------------------------------------------------------------------------------
# Built-in declarations
# ----------------------------------------------------------------------------------------------------

GLUE = "nyu-mll/glue"
ADV_GLUE = "AI-Secure/adv_glue"
SENTIMENT = {"masked_lm": ("negative", "positive"), "seq2seq": ("negative", "positive")}
# Label 0 is entailment in the hub's ids, so the "yes"/"entailment" word comes first.
ENTAILMENT = {"masked_lm": ("yes", "no"), "seq2seq": ("entailment", "contradiction")}
PARAPHRASE_NOT_FIRST = {"masked_lm": ("false", "true"), "seq2seq": ("false", "true")}


def _hub(path: str, config: str | None, split: str, **kw) -> Source:
    return Source(hub=path, hub_config=config, hub_split=split, **kw)


def _glue(config: str, validation: str = "validation", **kw) -> dict[str, Source]:
    return {"train": _hub(GLUE, config, "train", **kw), "validation": _hub(GLUE, config, validation, **kw)}


def _adv(config: str, json_field: str, **kw) -> Source:
    """An AdvGLUE dev set; ``data.adversarial_files`` can point it at a local ``dev.json``."""
    return Source(hub=ADV_GLUE, hub_config=config, hub_split="validation", json_field=json_field, **kw)


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
        ),
        TaskSpec(
            name="imdb", type="sentiment", text_fields=("text",), label_names=("neg", "pos"),
            verbalizers=SENTIMENT,
            # P1 evaluates IMDB on its test split (there is no validation split on the hub).
            splits={"train": _hub("stanfordnlp/imdb", None, "train"),
                    "validation": _hub("stanfordnlp/imdb", None, "test")},
        ),
        TaskSpec(
            name="movie_rationales", type="sentiment", text_fields=("review",), label_names=("NEG", "POS"),
            verbalizers=SENTIMENT,
            splits={"train": _hub("eraser-benchmark/movie_rationales", None, "train"),
                    "validation": _hub("eraser-benchmark/movie_rationales", None, "validation"),
                    "test": _hub("eraser-benchmark/movie_rationales", None, "test")},
        ),
        TaskSpec(
            name="qnli", type="nli", text_fields=("question", "sentence"),
            label_names=("entailment", "not_entailment"), verbalizers=ENTAILMENT, splits=_glue("qnli"),
            adversarial={"adv_qnli": _adv("adv_qnli", "qnli")},
        ),
        TaskSpec(
            name="mnli", type="nli", text_fields=("premise", "hypothesis"), verbalizers=ENTAILMENT,
            splits=_glue("mnli", validation="validation_matched"),
            adversarial={"adv_mnli": _adv("adv_mnli", "mnli"), "adv_mnli_mm": _adv("adv_mnli_mismatched", "mnli-mm")},
            description="binary MNLI without neutral (as P1)", **_MNLI_BINARY,
        ),
        TaskSpec(
            name="mnli3", type="nli", text_fields=("premise", "hypothesis"),
            label_names=("entailment", "neutral", "contradiction"),
            verbalizers={"masked_lm": ("yes", "maybe", "no"), "seq2seq": ("entailment", "neutral", "contradiction")},
            splits=_glue("mnli", validation="validation_matched"),
            adversarial={"adv_mnli": _adv("adv_mnli", "mnli"), "adv_mnli_mm": _adv("adv_mnli_mismatched", "mnli-mm")},
            description="three-way MNLI",
        ),
        TaskSpec(
            name="qqp", type="paraphrase", text_fields=("question1", "question2"),
            label_names=("not_duplicate", "duplicate"), verbalizers=PARAPHRASE_NOT_FIRST, splits=_glue("qqp"),
            adversarial={"adv_qqp": _adv("adv_qqp", "qqp")},
        ),
        TaskSpec(
            name="mrpc", type="paraphrase", text_fields=("sentence1", "sentence2"),
            label_names=("not_equivalent", "equivalent"), verbalizers=PARAPHRASE_NOT_FIRST, splits=_glue("mrpc"),
        ),
        TaskSpec(
            name="rte", type="nli", text_fields=("sentence1", "sentence2"),
            label_names=("entailment", "not_entailment"), verbalizers=ENTAILMENT, splits=_glue("rte"),
            adversarial={"adv_rte": _adv("adv_rte", "rte")},
        ),
        # ---- shipped samples (no network needed) ----
        TaskSpec(
            name="marker", type="synthetic", text_fields=("sentence",), label_names=("absent", "present"),
            verbalizers={"masked_lm": ("no", "yes"), "seq2seq": ("no", "yes")},
            splits={"train": Source(file=str(SAMPLES_DIR / "marker" / "train.jsonl")),
                    "validation": Source(file=str(SAMPLES_DIR / "marker" / "validation.jsonl"))},
            adversarial={"marker_typo": Source(file=str(SAMPLES_DIR / "marker" / "adversarial.jsonl"))},
            description="synthetic: does the word 'banana' occur? (adversarial: one typo per sentence)",
        ),
        TaskSpec(
            name="sst2_sample", type="sentiment", text_fields=("sentence",), label_names=("negative", "positive"),
            verbalizers=SENTIMENT,
            splits={"train": Source(file=str(SAMPLES_DIR / "sst2_sample" / "train.tsv")),
                    "validation": Source(file=str(SAMPLES_DIR / "sst2_sample" / "dev.tsv"))},
            adversarial={"adv_sst2": Source(file=str(SAMPLES_DIR / "sst2_sample" / "adv_dev.json"), json_field="sst2")},
            description="2,000 SST-2 train rows, 200 dev rows and all 148 AdvGLUE SST-2 dev rows, shipped",
        ),
    ]
}


def get_task(task: str | dict | TaskSpec) -> TaskSpec:
    """A built-in task by name, or a user's declaration (mapping) turned into a :class:`TaskSpec`."""
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, dict):
        return TaskSpec.from_dict(task)
    if task not in TASKS:
        raise TaskError(
            f"unknown task {task!r} — known tasks: {', '.join(TASKS)} "
            "(or declare your own task as a mapping under data.task, see datamodules/tasks.py)"
        )
    return TASKS[task]
