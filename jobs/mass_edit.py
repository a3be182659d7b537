"""Edit many facts into a causal LM by fine-tuning, on Ray Train + DeepSpeed.

    python jobs/mass_edit.py --config configs/quickstart.yaml [section.key=value ...]
    python jobs/mass_edit.py --config configs/gptj-counterfact-10k.yaml --dry-run   # plan only
    ray job submit --working-dir . -- python jobs/mass_edit.py --config configs/quickstart.yaml

Exit 0 on success; on bad input (config, requests file) exit 2 with the error on stderr.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ftedit.config import ConfigError, load_config  # noqa: E402
from ftedit.logs import show_progress  # noqa: E402
from ftedit.pipeline import InputError, plan_run, run_mass_edit  # noqa: E402
from ftedit.requests import RequestError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config; defaults are used for keys it leaves out")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=1e-4")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, augment and tokenize, print the counts as JSON; no training, nothing written")
    args = parser.parse_args(argv)
    show_progress()
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print(json.dumps(plan_run(cfg), indent=2))
            return 0
        summary = run_mass_edit(cfg)
    except (ConfigError, RequestError, InputError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    after = summary["after"]
    print(f"edit score {summary['before']['edit_score']:.1f} -> {after['edit_score']:.1f}; results in {cfg.output.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
