#!/usr/bin/env bash
# verl for a GPU machine without network access: on a machine with it, download verl 0.9.1 and the packages it
# needs beyond SGLang, Ray and torch (all Python 3.12 wheels), and pack them as one archive plus the script that
# unpacks it there.
#   bash benchmarks/peers/bundle_verl.sh [BUNDLE_DIR]                 (default: peer_bundles/verl)
# On the GPU machine, from the project root, with SGLang and Ray installed:
#   source BUNDLE_DIR/install_verl.sh && python benchmarks/peers/head_to_head.py --systems async_rl verl ...
# verl is installed without its version pins (it pins transformers < 5.11 and SGLang 0.5.12; the machine's own
# are kept) and with hydra-core 1.3.8 and omegaconf 2.3.0, which only verl's runs see (hydra 1.3 refuses a newer
# omegaconf).
set -euo pipefail
BUNDLE=${1:-peer_bundles/verl}
VERL=(verl==0.9.1 transferqueue==0.1.11 tensordict==0.10.0 pyvers==0.1.0 datasets==5.2.0 multiprocess==0.70.19
      torchdata==0.11.0 codetiming==1.4.0 cachetools==8.0.3)
HYDRA=(hydra-core==1.3.8 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
download() {  # download DIR SPEC...: binary wheels for CPython 3.12, or a wheel built here where none exists
  local dir=$1; shift
  for spec in "$@"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$dir" "$spec" 2>/dev/null || python3 -m pip wheel -q --no-deps -w "$dir" "$spec"
  done
}
download "$work/verl_wheels" "${VERL[@]}"
download "$work/hydra_wheels" "${HYDRA[@]}"
mkdir -p "$BUNDLE"
for name in verl hydra; do
  site=$work/${name}_site
  mkdir -p "$site"
  for wheel in "$work/${name}_wheels"/*.whl; do python3 -m zipfile -e "$wheel" "$site"; done
  rm -rf "$site"/tests "$site"/scripts "$site"/recipe "$site"/tutorial  # top-level extras some wheels carry
  tar -C "$site" -cJf "$BUNDLE/$name.tar.xz" .
done
cat > "$BUNDLE/install_verl.sh" <<'INSTALL'
# Source it: unpacks verl and hydra beside this file into /tmp (once); VERL_PYTHONPATH names them for verl's runs
# (benchmarks/peers/verl_run.py puts it first on verl's PYTHONPATH, and nowhere else).
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for _name in verl hydra; do
  if [ ! -f /tmp/peer_$_name/.unpacked ]; then
    mkdir -p /tmp/peer_$_name && tar -C /tmp/peer_$_name -xJf "$_here/$_name.tar.xz" && touch /tmp/peer_$_name/.unpacked \
      || { echo "install_verl: cannot unpack $_here/$_name.tar.xz"; return 1; }
  fi
done
export VERL_PYTHONPATH=/tmp/peer_hydra:/tmp/peer_verl
PYTHONPATH=$VERL_PYTHONPATH${PYTHONPATH:+:$PYTHONPATH} python3 -c "import verl, hydra, omegaconf; print('verl', verl.__version__, '| hydra', hydra.__version__, '| omegaconf', omegaconf.__version__)"
INSTALL
du -sh "$BUNDLE"/*
