"""Search run-config values (augmentation ratios, learning rate, epochs, LoRA rank, layers) with
Ray Tune, maximising the edit score on validation edits; then run the best on the reported edits.

    python jobs/sweep.py --config configs/sweep-smoke.yaml [dotted.key=value ...]

Writes into output.dir: trials.md / trials.json (every trial: values, status, probe and validation
scores, time), best.yaml (a run config: `python jobs/mass_edit.py --config <dir>/best.yaml`),
best-run/ (that config on the reported edits, with its report) and tune/ (Tune's experiment).
Submitting the same command again resumes an interrupted sweep from tune/.
Exit 0 on success; on bad input exit 2 with the error on stderr; exit 3 when the sweep was
interrupted (Ctrl-C, a stopped job) before every trial ended: run the same command to resume.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ftedit.config import ConfigError  # noqa: E402
from ftedit.logs import show_progress  # noqa: E402
from ftedit.pipeline import InputError  # noqa: E402
from ftedit.requests import RequestError  # noqa: E402
from ftedit.tune import SweepInterrupted, load_sweep, run_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a run config with a sweep section")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. sweep.num_samples=4")
    args = parser.parse_args(argv)
    show_progress()
    try:
        base, cfg, sweep = load_sweep(args.config, args.overrides)
        result = run_sweep(base, cfg, sweep)
    except (ConfigError, RequestError, InputError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SweepInterrupted as stopped:
        print(f"interrupted: {stopped}", file=sys.stderr)
        return 3
    best = result["best"]
    line = f"best trial {best['trial_id']}: probe {sweep.metric} {best['probe']:.1f}"
    if "best_run" in result:
        line += f"; on the reported edits {result['best_run']['after']['edit_score']:.1f}"
    print(f"{line}; config in {Path(cfg.output.dir) / 'best.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
