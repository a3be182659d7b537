"""Command lines of the benchmark scripts: `key=value` config overrides anywhere on the line.

argparse hands a list option (`--sizes 10 100`) every token up to the next option, so
`--sizes 300 train.precision=fp32` would give the override to `--sizes` and fail. The
benchmarks take overrides the way the jobs do: a token holding "=" that is not an option is a
config override wherever it stands, except among the values of an option whose values are
themselves overrides (the ladder's `--full`). Everything after `--` is an override too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence


def split_overrides(argv: Sequence[str], override_options: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(the tokens for argparse, the config overrides), in their order on the command line."""
    override_options = set(override_options)
    rest: list[str] = []
    overrides: list[str] = []
    option = None  # the option whose values the next tokens are
    for i, token in enumerate(argv):
        if token == "--":
            overrides += argv[i + 1:]
            break
        if token.startswith("-"):
            option = token.split("=", 1)[0]
            rest.append(token)
        elif "=" in token and option not in override_options:
            overrides.append(token)
        else:
            rest.append(token)
    return rest, overrides


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
               override_options: Iterable[str] = ()) -> argparse.Namespace:
    """`parser.parse_args` with the overrides split out first; they land in `args.overrides`
    (the parser's positional of that name, kept for --help)."""
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv), override_options)
    args = parser.parse_args(rest)
    args.overrides = [*getattr(args, "overrides", []), *overrides]
    return args
