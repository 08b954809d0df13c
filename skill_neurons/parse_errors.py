"""A command-line mistake as one line: jsonargparse's error (typo, wrong type, bad value, missing ``--config``
file) without its ~90 lines of usage, with a "did you mean" for a misspelt option and a pointer to ``--help``.

Plain functions of the parser's message and option names (no Lightning); the parser class that prints them is
:class:`skill_neurons.lightning_cli.OneLineParser`.
"""

from __future__ import annotations

import difflib
import re

from records.configuration import ABBREVIATIONS

# jsonargparse's ways of naming the option a message is about.
_UNRECOGNIZED = re.compile(r"Unrecognized arguments:\s*(.+)", re.DOTALL | re.IGNORECASE)
_NESTED = re.compile(r"NestedArg\(key='([^']+)', val='([^']*)'\)")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":\s*\n?\s*(.+)')


def did_you_mean(option: str, known: list[str]) -> str:
    """`` — did you mean --model.learning_rate?`` for a near miss among ``known`` options, else ``""``."""
    name = option.split("=", 1)[0]
    short = {f"--{key.rpartition('.')[0]}.{abbreviation}": f"--{key}" for key, abbreviation in ABBREVIATIONS.items()
             if abbreviation and "." in key}  # the short names of run labels: --model.lr, --data.bs
    if name in short:
        return f" — did you mean {short[name]}?"
    prefix, _, last = name.rpartition(".")
    # a misspelt last part among the options of the same group (--model.learnig_rate), else a misspelt group
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == prefix and not k.endswith(".help")}
    close = [siblings[m] for m in difflib.get_close_matches(last, list(siblings), n=1, cutoff=0.75)]
    close = close or difflib.get_close_matches(name, [k for k in known if not k.endswith(".help")], n=1, cutoff=0.9)
    return f" — did you mean {close[0]}?" if close else ""


def one_line(message: str, known: list[str]) -> str:
    """jsonargparse's (often nested, many-line) ``message`` as one line that names the option and, for a typo
    of a known option, the likely one."""
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        options = unrecognized.group(1).split()
        hint = did_you_mean(options[0], known) if options else ""
        return f"unrecognized option {' '.join(options)}{hint}"
    outer = re.match(r'Parser key "([^"]+)":', message)
    nested = _NESTED.search(message)
    if outer and nested:  # an option of a class given by class_path (--model.<name>)
        key, value = f"{outer.group(1)}.{nested.group(1)}", nested.group(2)
        inner = [m for m in _PARSER_KEY.finditer(message) if m.group(1) == nested.group(1)]
        if inner:
            return f"--{key}={value}: {inner[-1].group(2).strip()}"
        option = f"--{key}"
        return f"unrecognized option {option}={value}{did_you_mean(option, known)}"
    keys = list(_PARSER_KEY.finditer(message))
    if keys:
        key, reason = keys[-1].group(1), keys[-1].group(2).strip()
        given = re.search(r"^\s*Given value: (.+)$", message, re.MULTILINE)
        reason = (yaml_problem(given.group(1)) if given else None) or reason
        if key == "config" or outer is None:
            return f"--{key}: {reason}"
        return f"--{outer.group(1)}: {reason}"
    return " ".join(message.split())


def yaml_problem(value: str) -> str | None:
    """Why jsonargparse's YAML loader refused ``value`` (a duplicate key), or None: jsonargparse keeps the text
    as a string and reports only that it is not a mapping."""
    import yaml
    from jsonargparse._loaders_dumpers import get_yaml_default_loader

    try:
        yaml.load(value, Loader=get_yaml_default_loader())
    except yaml.YAMLError as err:
        return getattr(err, "problem", None) or str(err).splitlines()[0]
    return None


def refuse_duplicate_keys() -> None:
    """Make jsonargparse's YAML loader (config files and values on the command line) refuse a mapping that gives
    one key twice — ``--data.extra_adversarial='{a: x.tsv, a: y.tsv}'`` — instead of keeping the last value
    silently (process-wide, like jsonargparse's other parsing settings)."""
    import yaml
    from jsonargparse._loaders_dumpers import get_yaml_default_loader

    loader = get_yaml_default_loader()
    if getattr(loader, "refuses_duplicate_keys", False):
        return

    def mapping(constructor, node):
        seen: set = set()
        for key_node, _ in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} — give each key once (the last would silently win)",
                    key_node.start_mark)
            seen.add(key)
        return constructor.construct_mapping(node, deep=True)

    loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    loader.refuses_duplicate_keys = True
