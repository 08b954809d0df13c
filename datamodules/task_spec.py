"""What a task is: the declaration (``TaskSpec``), where a split comes from (``Source``), P1's input formats
(``PaperFormat``). The built-in tasks are declared in :mod:`datamodules.tasks`.

Tasks and adversarial sets are declared once as data.

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
        verbalizers: {masked_lm: [negative, positive], seq2seq: [negative, positive], causal_lm: [negative, positive]}
        causal_template: "Review: {review}\nThe review is"   # optional; default from the type, see below
        splits:
          train: {file: data/train.csv, columns: {review: text}}
          validation: {file: data/dev.csv, columns: {review: text}}
        adversarial:
          typos: {file: data/dev_typos.jsonl, columns: {review: text}}
        paper:   # optional: how layout 'paper' (P1's input) formats it, per family (see PaperFormat)
          masked_lm: {segments: ["{cls}", "{review}", "{sep}"], extra_length: 2}
          seq2seq: {segments: ["{review}", "{eos}"]}

Every built-in task of P1 declares P1's formats under ``paper`` (read from Robust-Neurons' formatters, cited
at the declarations in :mod:`datamodules.tasks`); ``layout: paper`` refuses a task without one for the backbone's family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_modules.rules import PAPER_FAMILIES
from records.errors import UserError

FAMILIES = ("masked_lm", "seq2seq", "causal_lm")
# Causal LMs read the label as the next token after the text, so their template ends in a cue: the task's text
# fields (one per line), a space, then the cue of the task's type (``TaskSpec.causal_template`` overrides it).
CAUSAL_CUES = {"sentiment": "Sentiment:", "nli": "Entailment:", "paraphrase": "Same meaning:",
               "ethics": "Acceptable:", "synthetic": "Answer:"}
DEFAULT_CAUSAL_CUE = "Answer:"
LAYOUTS = ("paper", "standard")
# Markers usable as a whole segment of a P1 format: the tokenizer's own special token goes there.
MARKERS = {"{cls}": "cls_token_id", "{sep}": "sep_token_id", "{eos}": "eos_token_id"}
SPLIT_ROLES = ("train", "validation", "test")
SAMPLES_DIR = Path(__file__).parent / "data"
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class TaskError(UserError, ValueError):
    """A user's mistake in declaring or choosing a task; the message names the fix."""


@dataclass(frozen=True)
class PaperFormat:
    """How P1 (Robust-Neurons ``src/formatter/<Task>Prompt{Roberta,T5}Formatter.py``) turns one example of a
    task into tokens for one backbone family — used by ``layout: paper``.

    ``segments`` are encoded one by one with ``add_special_tokens=False`` and concatenated, exactly as P1
    calls ``tokenizer.encode`` per piece (this matters for SentencePiece, which marks word starts). A segment
    that is only a marker (``{cls}``, ``{sep}``, ``{eos}``) becomes the tokenizer's own special token; any
    other segment is a format string over the task's text fields (values ``.strip()``-ed, as P1 does).
    Truncation is P1's: the tokens are cut at the end to ``max_text_length + extra_length``; when the last
    segment is a marker it is kept (cut one earlier, then the marker). ``words`` overrides the task's
    verbalizer (label-id order) and ``extra_words`` are scored but are no label (P1's MNLI scores three words
    against binary labels). ``target_length`` is P1's ``target_len`` (seq2seq: how many tokens of the label
    word the training loss covers).
    """

    segments: tuple[str, ...]
    extra_length: int = 0
    words: tuple[str, ...] = ()
    extra_words: tuple[str, ...] = ()
    target_length: int = 1

    @classmethod
    def from_value(cls, value: Any) -> "PaperFormat":
        if isinstance(value, PaperFormat):
            return value
        if not isinstance(value, dict) or "segments" not in value:
            raise TaskError(f"a paper format is a mapping with 'segments' (and optionally extra_length, words, "
                            f"extra_words, target_length), got {value!r}")
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TaskError(f"unknown paper format keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})

    @property
    def keeps_last(self) -> bool:
        return self.segments[-1] in MARKERS


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
    paper: dict[str, PaperFormat] = field(default_factory=dict)
    causal_template: str = ""

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
        repeated = sorted({n for n in self.label_names if list(self.label_names).count(n) > 1})
        if repeated:
            raise TaskError(f"task {self.name!r}: label name(s) {repeated} given more than once in label_names "
                            f"{list(self.label_names)} — each class needs its own name (map several raw labels to "
                            "one class with label_map)")
        for family, words in self.verbalizers.items():
            if family not in FAMILIES:
                raise TaskError(f"task {self.name!r}: unknown backbone family {family!r} (use {FAMILIES})")
            if len(words) != len(self.label_names):
                raise TaskError(
                    f"task {self.name!r}: {family} verbalizer {list(words)} must give one word per label "
                    f"{list(self.label_names)}, in the same order"
                )
            blank = [i for i, word in enumerate(words) if not str(word).strip()]
            if blank:
                raise TaskError(f"task {self.name!r}: {family} verbalizer word {words[blank[0]]!r} (for label "
                                f"{self.label_names[blank[0]]!r}) is empty — give a word the backbone knows, e.g. "
                                "'yes' / 'no'")
        for raw, name in self.label_map.items():
            if name not in self.label_names:
                raise TaskError(f"task {self.name!r}: label_map sends {raw!r} to unknown label {name!r}")
        for family, fmt in self.paper.items():
            if family not in PAPER_FAMILIES:
                raise TaskError(f"task {self.name!r}: paper format for family {family!r} — P1's layout exists for "
                                f"{PAPER_FAMILIES} only (a causal LM uses layout 'standard' and causal_template)")
            for segment in fmt.segments:
                for fname in ([] if segment in MARKERS else _format_fields(segment)):
                    if fname not in self.text_fields:
                        raise TaskError(f"task {self.name!r}: paper format uses {{{fname}}}, not in {self.text_fields}")
            if fmt.words and len(fmt.words) != len(self.label_names):
                raise TaskError(f"task {self.name!r}: paper words {list(fmt.words)} must give one word per label "
                                f"{list(self.label_names)}")
        for fname in _format_fields(self.causal_template):
            if fname not in self.text_fields:
                raise TaskError(f"task {self.name!r}: causal_template uses {{{fname}}}, not in {self.text_fields}")
        if self.causal_template and not self.causal_template.rstrip():
            raise TaskError(f"task {self.name!r}: causal_template is blank — give the text and a cue, e.g. "
                            "'{sentence} Sentiment:'")
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

    def causal_lm_template(self) -> str:
        """The text a causal LM reads before predicting the label word: ``causal_template`` if declared, else
        the text fields one per line, a space and the cue of the task's type (``"{sentence} Sentiment:"``)."""
        if self.causal_template:
            return self.causal_template
        return "\n".join("{%s}" % f for f in self.text_fields) + " " + CAUSAL_CUES.get(self.type, DEFAULT_CAUSAL_CUE)

    def paper_format(self, family: str) -> PaperFormat:
        """P1's format of this task for ``family`` (``layout: paper``); raises if the task has none (which
        families may run ``paper`` at all is :func:`lightning_modules.rules.check_layout`)."""
        if family not in self.paper:
            raise TaskError(
                f"task {self.name!r} has no P1 input format for {family} backbones, so layout 'paper' cannot run "
                f"it — use --model.layout=standard, or declare paper.{family}.segments in the task"
            )
        return self.paper[family]

    def scored_words(self, family: str, layout: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(label words in label-id order, extra words that are scored but are no label) for a layout."""
        if layout == "paper":
            fmt = self.paper_format(family)
            return (fmt.words or self.words(family)), fmt.extra_words
        return self.words(family), ()

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
        spec["paper"] = {k: PaperFormat.from_value(v) for k, v in (spec.get("paper") or {}).items()}
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
