"""``etl-engine completion bash|zsh|tcsh``: a static completion script (shtab).

The script is generated from the same argparse parser that ``--help`` prints, so every
command, option and choice completes, and the plugin commands of installed tools too.
Positional files and folders complete as paths. Being static, completing costs the
shell nothing: no Python starts on <TAB>.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

# Arguments that name local paths: (dest, kind).
_PATHS = {"file": "file", "dir": "directory", "out": "directory", "html": "file",
          "env_file": "file"}


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _actions(sub)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    kinds = {"file": shtab.FILE, "directory": shtab.DIRECTORY}
    for action in _actions(parser):
        kind = _PATHS.get(action.dest)
        if kind is not None:
            action.complete = kinds[kind]  # type: ignore[attr-defined]
    text: str = shtab.complete(parser, shell=shell)
    return text if text.endswith("\n") else text + "\n"
