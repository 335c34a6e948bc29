"""Config files for ``sisa train``: read a TOML or YAML file of train's flags, and write one.

A config file holds train's flags by their long names, ``batch-size = 64`` or ``batch_size: 64``:
the data flags, the training settings, the executor flags and ``workdir``. Each value goes
through its flag's own argparse ``type`` and ``choices``, and a setting's through
:class:`~sisa.settings.Settings`' validation too, so a file accepts a value exactly when the
command line would; only the check that it is a number, text or a list is the file's own,
since a file (unlike a command line) says which it is. Flags given on the command line win.

Nothing here imports numpy or torch: this module is imported by every ``sisa`` command line.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sisa.cli._common import (
    SETTINGS_FLAGS,
    add_common,
    add_data_args,
    add_executor_args,
    add_settings_args,
)
from sisa.errors import SisaError

FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}
"""A config file's suffix -> its format."""

FLAG_ONLY = {
    "force": "it replaces a workspace, a decision for one run, not a setting to repeat",
    "discard_deletions": "it trains on people deleted earlier, a decision for one run, not a setting to repeat",
    "json": "it is how this run reports, not what it trains",
    "no_wait": "it is how this run waits for the workspace, not what it trains",
    "config": "a config file cannot name another",
    "print_config": "it is what this run does, not what it trains",
    "format": "it is what this run prints, not what it trains",
    "quiet": "it is how this run reports, not what it trains",
    "verbose": "it is how this run reports, not what it trains",
    "log_dir": "it is where this run writes its loss curves, a new folder each run, not what it trains",
}
"""Flags a config file refuses, and why (said in the refusal)."""

RUN_OPTIONS = ("executor", "cpus_per_shard", "gpus_per_shard", "address", "workdir")
"""Config keys that say where and how a training runs, not what it trains (the rest do)."""

_EXPECTED = {int: ((int,), "a whole number, e.g. 8"),
             float: ((int, float), "a number, e.g. 0.001"),
             None: ((str,), 'text in quotes, e.g. "digits"')}
"""An argparse ``type`` -> the values a file may give for it, and how to say so. A type
function of sisa's own (``--image-size``) reads text: a file may give it a number, text or a
list, which is turned into the text the flag would be typed as."""


@dataclass(frozen=True)
class Config:
    """A config file as read: where it is, its format, the sha256 of its bytes, and its values
    by flag (argparse's ``dest``), already parsed and checked like the flags."""

    path: Path
    format: str
    sha256: str
    values: dict[str, Any]

    def provenance(self) -> dict[str, str]:
        """What the workspace records of the file (in its data source): its path and sha256."""
        return {"config_file": str(self.path.resolve()), "config_sha256": self.sha256}


def read_config(name: str) -> Config:
    """Read, parse and check the config file ``name``; :class:`SisaError` names the file, the
    key and what was expected when anything is wrong, before anything is trained."""
    path = Path(name)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SisaError(f"config file {path}: name it .toml, .yaml or .yml, so sisa knows how to read it")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SisaError(f"config file {path} not found; check the path given to --config") from None
    except OSError as exc:
        raise SisaError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    raw = _parse_toml(data, path) if fmt == "toml" else _parse_yaml(data, path)
    return Config(path=path, format=fmt, sha256=hashlib.sha256(data).hexdigest(), values=_checked(raw, path))


def apply_config(args: argparse.Namespace, config: Config) -> None:
    """Fill the flags not given on the command line (still None) from ``config``: flags > file."""
    for dest, value in config.values.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)


@functools.lru_cache(maxsize=1)
def config_actions() -> dict[str, argparse.Action]:
    """``dest`` -> argparse action of every flag a config file may hold: the very flags ``sisa
    train`` registers (data, settings, executor, ``--workdir``), less the :data:`FLAG_ONLY` ones."""
    parser = argparse.ArgumentParser(add_help=False)
    for add in (add_data_args, add_settings_args, add_executor_args, add_common):
        add(parser)
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in FLAG_ONLY}


# -- reading

def _parse_toml(data: bytes, path: Path) -> dict[str, Any]:
    tomllib = _tomllib()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark, as some editors save
    except UnicodeDecodeError as exc:
        raise SisaError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SisaError(f"config file {path} is not valid TOML: {_toml_problem(str(exc), text)}") from None


def _toml_problem(message: str, text: str) -> str:
    """tomllib's message with the line it points at, which names the key: tomllib says only
    "Cannot overwrite a value (at line 2, column 11)" of a key given twice."""
    found = re.search(r"at line (\d+)", message)
    lines = text.splitlines()
    if found is None or not 1 <= int(found.group(1)) <= len(lines):
        return message
    line = lines[int(found.group(1)) - 1].strip()
    twice = "; a key given twice? give it once" if message.startswith("Cannot overwrite") else ""
    return f"{message}: {_short(line)}{twice}"


def _tomllib():
    """The TOML reader: the standard library's from Python 3.11, else tomli (the same code)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise SisaError("reading a TOML config needs Python 3.11 or newer, or the tomli package "
                            "(pip install tomli); or write the config as YAML") from None
    return tomllib


def _parse_yaml(data: bytes, path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.load(data, Loader=_yaml_classes()[0])  # a safe loader: plain values only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" (at line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SisaError(f"config file {path} is not valid YAML: {exc.problem or exc.context}{at}") from None
    except yaml.YAMLError as exc:
        raise SisaError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if loaded is None:  # an empty file, or only comments: nothing set
        return {}
    if not isinstance(loaded, dict):
        raise SisaError(f"config file {path} holds {_kind(loaded)}; expected 'key: value' lines, one per flag")
    return loaded


@functools.lru_cache(maxsize=1)
def _yaml_classes():
    """PyYAML's safe loader and dumper, changed to keep a YAML config honest: a key given twice
    is refused (PyYAML keeps the last silently), and ``1e-3`` is a number (YAML 1.1, which PyYAML
    follows, reads it as text; YAML 1.2 and every user read it as a number). The dumper knows
    the same numbers, so it quotes text that would read back as one, and escapes the line breaks
    that PyYAML would otherwise write plainly inside quotes and read back as spaces."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} given twice; give it once", key_node.start_mark)
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeLoader refuses it itself
                    pass
            return super().construct_mapping(node, deep)

    class Dumper(yaml.SafeDumper):
        def represent_list(self, data):  # image_size: [32, 48] on its line, like the TOML
            return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)

        def represent_text(self, data):
            style = '"' if any(c in data for c in "\x85\u2028\u2029") else None
            return self.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(list, Dumper.represent_list)
    Dumper.add_representer(str, Dumper.represent_text)

    # plain scalars as the flags read them (YAML 1.2's core schema, decimal integers only):
    # ``0123`` is 123 (YAML 1.1: octal 83), ``1:30`` and ``0x10`` are text (1.1: 90 and 16),
    # ``yes`` is text (1.1: true), and ``1e-3`` is a number (1.1: text)
    core = {"tag:yaml.org,2002:bool": r"^(?:true|True|TRUE|false|False|FALSE)$",
            "tag:yaml.org,2002:int": r"^[-+]?[0-9]+$",
            "tag:yaml.org,2002:float": r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"}
    for cls in (Loader, Dumper):
        cls.yaml_implicit_resolvers = {
            first: [(tag, regexp) for tag, regexp in resolvers if tag not in core]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
        for tag, regexp in core.items():
            cls.add_implicit_resolver(tag, re.compile(regexp), list("-+0123456789.tTfF"))
    Loader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node), 10))
    return Loader, Dumper


def _checked(raw: dict[Any, Any], path: Path) -> dict[str, Any]:
    """The file's keys as flags (``batch-size`` and ``batch_size`` are ``batch_size``), each
    value parsed like its flag; unknown keys, flag-only keys and a key given twice refused."""
    actions = config_actions()
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise SisaError(f"config file {path}: key {key!r} is not a name; keys are train's flags, e.g. shards")
        dest = key.replace("-", "_")
        if dest in spelled:
            raise SisaError(f"config file {path}: {dest} given twice (as {spelled[dest]!r} and {key!r}); "
                            f"give it once")
        spelled[dest] = key
        if dest in FLAG_ONLY:
            raise SisaError(f"config file {path}: {key} is a command-line flag only ({FLAG_ONLY[dest]}); "
                            f"give --{dest.replace('_', '-')} on the command line instead")
        if isinstance(value, dict):
            raise SisaError(f"config file {path}: {key} is a table or section; a config file is flat, one "
                            f"key = value per flag of train (e.g. shards = 8), without sections")
        if dest not in actions:
            raise SisaError(f"config file {path}: unknown key {key!r}; a config file takes train's flags: "
                            f"{', '.join(actions)}")
        values[dest] = _parsed(value, actions[dest], f"config file {path}: {key}")
    return values


def _parsed(value: Any, action: argparse.Action, where: str) -> Any:
    """``value`` from a file as its flag parses it: the flag's own type and choices, and for a
    setting, Settings' validation (which the settings get again when training)."""
    from sisa.settings import Settings

    kinds, expected = _EXPECTED.get(action.type, ((int, str, list), f"{action.metavar}: a number, text or a list"))
    flag = action.option_strings[0]
    if isinstance(value, bool) or not isinstance(value, kinds) or \
            (isinstance(value, list) and not all(_is_int(v) for v in value)):
        kind = "a list of more than whole numbers" if isinstance(value, list) and list in kinds else _kind(value)
        raise SisaError(f"{where} = {_shown(value)} is {kind}; expected {expected} (as {flag} takes)")
    if action.type is not None:
        try:
            value = action.type(_as_flag_text(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise SisaError(f"{where} = {_shown(value)}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        raise SisaError(f"{where} = {_shown(value)}; expected one of: {', '.join(map(str, action.choices))}")
    if action.dest in SETTINGS_FLAGS:
        try:
            Settings(**{action.dest: value})
        except SisaError as exc:
            raise SisaError(f"{where} = {_shown(value)}: {exc}") from None
    return value


def _as_flag_text(value: Any) -> str:
    """A file's value as it would be typed after its flag: ``[32, 48]`` -> ``32x48``."""
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table (config files are flat: one key = value per flag)"
    if value is None:
        return "empty"
    return f"a {type(value).__name__}"


def _shown(value: Any) -> str:
    """``value`` for a message, bounded before it is built (nested YAML aliases could make a
    full repr gigabytes long)."""
    import reprlib

    shown = reprlib.Repr()
    shown.maxlevel, shown.maxlist, shown.maxdict, shown.maxstring, shown.maxother = 3, 6, 6, 60, 60
    return _short(shown.repr(value))


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


# -- writing

def dump_config(values: dict[str, Any], fmt: str, *, header: str = "") -> str:
    """``values`` as a config file in ``fmt`` (``toml`` or ``yaml``) that reads back to the
    same values; None values are left out (a key left out is a default). ``header``: comment
    lines to start with.

    >>> print(dump_config({"data": "csv:a b.csv", "lr": 0.001, "image_size": [32, 48]}, "toml"), end="")
    data = "csv:a b.csv"
    lr = 0.001
    image_size = [32, 48]
    """
    values = {k: v for k, v in values.items() if v is not None}
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    if fmt == "toml":
        return comments + "".join(f"{_toml_key(k)} = {toml_value(v)}\n" for k, v in values.items())
    import yaml

    return comments + yaml.dump(values, Dumper=_yaml_classes()[1], sort_keys=False, allow_unicode=True,
                                default_flow_style=False, width=2**31 - 1)


def toml_value(value: Any) -> str:
    """One TOML value: text, a whole number, a float that reads back exactly, true or false, or
    a list of those. sisa writes TOML itself: the standard library only reads it.

    >>> toml_value('say "hi"\\n'), toml_value(1e-05), toml_value(True), toml_value([3, 4])
    ('"say \\\\"hi\\\\"\\\\n"', '1e-05', 'true', '[3, 4]')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"sisa writes no TOML for {type(value).__name__} values")


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        code = ord(char)
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:  # from a command line or path that was not UTF-8
            raise SisaError(f"{text[:40]!r} is not valid Unicode text, which TOML needs; rename it, or use YAML")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)
