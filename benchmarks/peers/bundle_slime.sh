#!/usr/bin/env bash
# slime for a GPU machine without network access: slime's source, the Megatron-LM commit its Docker image builds
# with (ARG MEGATRON_COMMIT in slime's docker/Dockerfile) with slime's Megatron patches applied, and the two
# packages slime imports beyond SGLang, Ray, torch and Transformer Engine (sglang-router, wandb), as one archive
# plus the script that unpacks it there.
#   git clone https://github.com/THUDM/slime; git clone https://github.com/NVIDIA/Megatron-LM
#   bash benchmarks/peers/bundle_slime.sh slime/.git Megatron-LM/.git [BUNDLE_DIR]     (default: peer_bundles/slime)
# On the GPU machine, from the project root, with SGLang, Ray and Transformer Engine installed:
#   source BUNDLE_DIR/install_slime.sh && cd $SLIME_DIR && PYTHONPATH=$SLIME_PYTHONPATH:$PYTHONPATH python3 train.py ...
# (its own train.py, not its scripts/run-*.sh, which kill every python and ray process on the machine).
# slime's patched Megatron-LM goes first on slime's PYTHONPATH only (SLIME_PYTHONPATH): it supplies megatron.core
# as well as megatron.training, so an installed megatron-core wheel never stands in for the patched one. slime's
# own SGLang patches are not applied: they target the SGLang of slime's image, not the one installed beside us.
set -euo pipefail
SLIME_GIT=${1:?the slime git directory}
MEGATRON_GIT=${2:?the Megatron-LM git directory}
BUNDLE=${3:-peer_bundles/slime}
SLIME_REF=${SLIME_REF:-HEAD}
slime_commit=$(git --git-dir="$SLIME_GIT" rev-parse "$SLIME_REF^{commit}")
megatron_commit=$(git --git-dir="$SLIME_GIT" show "$slime_commit:docker/Dockerfile" | sed -n 's/^ARG MEGATRON_COMMIT=//p' | head -1)
[ -n "$megatron_commit" ] || { echo "bundle_slime: slime $slime_commit pins no MEGATRON_COMMIT in docker/Dockerfile"; exit 1; }
git --git-dir="$MEGATRON_GIT" cat-file -e "$megatron_commit^{commit}" 2>/dev/null \
  || { echo "bundle_slime: Megatron-LM $megatron_commit (pinned by slime $slime_commit) is not in $MEGATRON_GIT"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/site/slime" "$work/site/Megatron-LM" "$work/site/lib"
git --git-dir="$SLIME_GIT" archive "$slime_commit" -- . ':(exclude)docs' ':(exclude)imgs' | tar -x -C "$work/site/slime"
git --git-dir="$MEGATRON_GIT" archive "$megatron_commit" -- megatron LICENSE | tar -x -C "$work/site/Megatron-LM"
for name in megatron.patch megatron-sglang-aligned.patch; do
  patch_file=$work/site/slime/docker/patch/latest/$name
  [ -f "$patch_file" ] || continue
  # outside any git work tree, so that `git apply` patches the plain files instead of skipping them
  (cd "$work/site/Megatron-LM" && GIT_CEILING_DIRECTORIES=$work git apply "$patch_file") \
    || { echo "bundle_slime: $name does not apply to Megatron-LM $megatron_commit"; exit 1; }
  echo "$name" >> "$work/site/Megatron-LM/SLIME_PATCHES"
done
[ -f "$work/site/Megatron-LM/SLIME_PATCHES" ] || { echo "bundle_slime: slime $slime_commit has no Megatron patch"; exit 1; }
printf 'slime %s\nMegatron-LM %s\n' "$slime_commit" "$megatron_commit" > "$work/site/COMMITS"
for spec in sglang-router==0.3.2 wandb==0.31.0 platformdirs==4.14.9; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$work/wheels" "$spec"
done
for wheel in "$work/wheels"/*.whl; do python3 -m zipfile -e "$wheel" "$work/site/lib"; done
rm -rf "$work/site/lib/wandb/bin"  # wandb's service binaries: runs log with WANDB_MODE=disabled
mkdir -p "$BUNDLE"
tar -C "$work/site" -cJf "$BUNDLE/slime.tar.xz" .
cat > "$BUNDLE/install_slime.sh" <<'INSTALL'
# Source it: unpacks slime beside this file into /tmp/peer_slime (once); SLIME_PYTHONPATH names what goes first on
# the PYTHONPATH of slime's runs only (`cd $SLIME_DIR && PYTHONPATH=$SLIME_PYTHONPATH:$PYTHONPATH python3 train.py`).
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f /tmp/peer_slime/.unpacked ]; then
  mkdir -p /tmp/peer_slime && tar -C /tmp/peer_slime -xJf "$_here/slime.tar.xz" && touch /tmp/peer_slime/.unpacked \
    || { echo "install_slime: cannot unpack $_here/slime.tar.xz"; return 1; }
fi
export SLIME_PYTHONPATH=/tmp/peer_slime/Megatron-LM:/tmp/peer_slime/slime:/tmp/peer_slime/lib
export SLIME_DIR=/tmp/peer_slime/slime WANDB_MODE=disabled
cat /tmp/peer_slime/COMMITS; echo "Megatron-LM patched with: $(cat /tmp/peer_slime/Megatron-LM/SLIME_PATCHES | paste -sd' ')"
INSTALL
cat "$work/site/COMMITS"
du -sh "$BUNDLE"/*
