#!/usr/bin/env bash
# Build a separate venv holding e2e_sae 2.1.1 (Braun et al.'s reference implementation, PyPI) for
# benchmarks/vs_e2e_sae.py. It cannot share saelab's venv: it needs transformer-lens 2 and numpy 1.
#
#   bash benchmarks/e2e_sae_env.sh            # -> benchmarks/.venv-e2e_sae (git-ignored)
#
# Workarounds a fresh install of PyPI's e2e_sae 2.1.1 needs:
#   - it asks for an unpinned transformer-lens, which now resolves to 4.x, where HookedTransformer
#     is gone: pin transformer-lens<3;
#   - pyarrow<20, the last releases built for the numpy 1.26 that transformer-lens 2 brings;
#   - it lists torchvision (unused by the modules timed here), whose PyPI wheel pulls a CUDA torch
#     and fails to import beside the CPU one: installed --no-deps, with its runtime deps listed;
#   - the wheel (and the sdist) lack e2e_sae/scripts/train_tlens, which e2e_sae.loader imports at
#     import time for one config class: a shim module defines that name.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${E2E_SAE_VENV:-$here/.venv-e2e_sae}
py=${PY:-python3}
torch_spec=${TORCH:-torch==2.13.0}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import e2e_sae" 2>/dev/null; then
    echo "$venv: e2e_sae already importable"; exit 0
fi
"$py" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q "$torch_spec"
$pip install -q --no-deps "e2e_sae==2.1.1"
$pip install -q "transformer-lens<3" "pyarrow<20" einops pydantic wandb fire tqdm pyyaml \
    jaxtyping python-dotenv zstandard datasets "$torch_spec"
site=$("$venv/bin/python" -c \
       "import importlib.util as u; print(u.find_spec('e2e_sae').submodule_search_locations[0])")
if [ ! -f "$site/scripts/train_tlens/run_train_tlens.py" ]; then
    # A shim, not their code: the name is only used to load tlens models trained by their own
    # script, which the benchmark does not do.
    mkdir -p "$site/scripts/train_tlens"
    touch "$site/scripts/__init__.py" "$site/scripts/train_tlens/__init__.py"
    cat > "$site/scripts/train_tlens/run_train_tlens.py" <<'PY'
"""Shim: e2e_sae.loader imports this name at import time; the PyPI 2.1.1 wheel omits the module."""
from pydantic import BaseModel, ConfigDict


class HookedTransformerPreConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
PY
fi
"$venv/bin/python" -c "from e2e_sae import SAETransformer; import numpy; \
from importlib.metadata import version as v; \
print('e2e_sae', v('e2e_sae'), 'transformer-lens', v('transformer-lens'), 'numpy', numpy.__version__)"
