#!/usr/bin/env bash
# Assemble what benchmarks/gpu_check.sh needs on a GPU host that has PyTorch, transformers' own
# dependencies and CUDA but no package index and no model data (the `device` machines here:
# Python 3.12, torch 2.11, no Ray, no DeepSpeed), in two folders git ignores:
#
#   .whl/      wheels for Python 3.12 / x86-64 Linux of what that host lacks or has at another
#              version than ours; Ray's wheel is repacked without its Java jar, dashboard web
#              client, RLlib and Serve (79 MB -> 42 MB; none of them runs in ftedit), so the
#              wheels and the checkout fit in one 64 MiB transfer
#   .devdata/  the CounterFact files from ../shared/data and SmolLM2's tokenizer, xz-compressed
#
#     bash benchmarks/gpu_carry.sh      # from the repo root, on a machine with PyPI access
#
# Then, on the GPU host, with both folders beside the checkout:  bash benchmarks/gpu_check.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-python3}
rm -rf .whl .devdata
mkdir -p .whl .devdata
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# Our pins (pyproject.toml), DeepSpeed's and Ray's dependencies the host lacks; pydantic-core is
# pinned by pydantic, transformers 5.23 checks regex at import.
"$PYTHON" -m pip download -q --no-deps "${platform[@]}" -d .whl \
  ray==2.60.0 transformers==5.23.0 peft==0.21.2 pydantic==2.13.4 pydantic-core==2.46.4 \
  typing-inspection==0.4.2 typing-extensions annotated-types regex hjson jsonschema \
  jsonschema-specifications referencing rpds-py tensorboardX
# DeepSpeed publishes a source archive only: build its pure-Python wheel (no compiled ops).
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8

"$PYTHON" - <<'EOF'
"""Repack Ray's wheel without the parts ftedit never loads, and drop them from its RECORD."""
import glob, zipfile
from pathlib import Path

DROP = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/serve/")
wheel = Path(glob.glob(".whl/ray-*.whl")[0])
stripped = wheel.with_suffix(".tmp")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
    for item in src.infolist():
        if item.filename.startswith(DROP):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = ("\n".join(line for line in lines if not line.startswith(DROP)) + "\n").encode()
        dst.writestr(item, data)
stripped.replace(wheel)
print(f"{wheel}: {wheel.stat().st_size / 1e6:.1f} MB")
EOF

for f in counterfact-edit counterfact-train; do
  xz -9 -c "../shared/data/counterfact/$f.json" >".devdata/$f.json.xz"
done
tokenizer=$("$PYTHON" -c "from ftedit.assets import resolve_model_path; print(resolve_model_path('smollm2-135m', '~/.cache/ftedit'))")
xz -9 -c "$tokenizer/tokenizer.json" >.devdata/tokenizer.json.xz
cp "$tokenizer/tokenizer_config.json" "$tokenizer/chat_template.jinja" .devdata/
du -cb .whl/* .devdata/* | tail -1 | awk '{printf "to carry: %.1f MB (the checkout travels beside it; the limit is 67.1 MB)\n", $1 / 1e6}'
