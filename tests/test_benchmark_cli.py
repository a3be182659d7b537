"""benchmarks/cli.py: key=value overrides anywhere on a benchmark's command line."""

import argparse
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO))
from benchmarks.cli import parse_args, split_overrides  # noqa: E402


def test_overrides_after_a_list_option_are_not_its_values():
    rest, overrides = split_overrides(
        ["--base", "b.yaml", "--sizes", "300", "train.precision=fp32", "--methods", "FT", "FT+M", "x.y=1"])
    assert rest == ["--base", "b.yaml", "--sizes", "300", "--methods", "FT", "FT+M"]
    assert overrides == ["train.precision=fp32", "x.y=1"]


def test_an_option_whose_values_are_overrides_keeps_them_and_a_double_dash_ends_options():
    rest, overrides = split_overrides(["a.b=1", "--full", "train.lr=1e-5", "--", "--odd=2"],
                                      override_options=["--full"])
    assert rest == ["--full", "train.lr=1e-5"]
    assert overrides == ["a.b=1", "--odd=2"]


def test_parse_args_fills_the_overrides_positional_and_keeps_typed_lists():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("overrides", nargs="*")
    args = parse_args(parser, ["--sizes", "10", "100", "seed=3", "eval.batch_size=8"])
    assert args.sizes == [10, 100]
    assert args.overrides == ["seed=3", "eval.batch_size=8"]
