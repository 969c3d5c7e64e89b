#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut (docs/testing.md says how to read the result).
#
#   bash scripts/mutation.sh                       # the default set below
#   bash scripts/mutation.sh 'scratchgpt.optim.*'  # or mutant-name patterns of your own
#
# What is mutated, and which tests run, is in setup.cfg's [mutmut] section. The reference
# NumPy code is what gets mutated, so the tests run with SCRATCHGPT_KERNELS=numpy (with the
# numba kernels on, most of ops/ and AdamW's array path would not run at all).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip show mutmut >/dev/null 2>&1 || python -m pip install -e ".[mutation]"
export SCRATCHGPT_KERNELS=numpy MPLBACKEND=Agg NUMBA_CACHE_DIR="$PWD/.numba_cache"
if [ "$#" -eq 0 ]; then
    set -- 'scratchgpt.optim.*' 'scratchgpt.train.x__step__*' 'scratchgpt.generate.x_sample_next__*' \
           'scratchgpt.checkpoint.*' 'scratchgpt.ops.*' 'scratchgpt.model.*'
fi
mutmut run --max-children "${MUTATION_JOBS:-2}" "$@"
mutmut results
