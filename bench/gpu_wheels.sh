#!/usr/bin/env bash
# Run HERE (the machine with PyPI), in the repository root, before bench/gpu_check.sh: downloads the wheels
# the GPU image lacks or has in other versions (transformers 5.24, trl 1.16 and datasets for the TRL baseline,
# peft 0.21, accelerate 1.15, huggingface_hub 2.4, tokenizers 0.23.3) into .whl/ (~21 MB, git-ignored through
# .git/info/exclude). The device call then names .whl in `carry`.
set -euo pipefail
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  transformers==5.24.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 huggingface_hub==2.4.0 \
  peft==0.21.2 tokenizers==0.23.3 accelerate==1.15.0
ls -la .whl
