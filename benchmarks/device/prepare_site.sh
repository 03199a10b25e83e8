#!/usr/bin/env bash
# Build a slim site-packages folder with what robolearn needs beyond a stock CUDA PyTorch image
# (the lent GPU machine reaches no package index). Usage: prepare_site.sh OUT_DIR [PYTHON_VERSION]
# The heavy parts robolearn never imports (dm_control's suite and locomotion assets, MuJoCo's
# experimental renderers and headers, PyOpenGL's Windows DLLs) are dropped so the folder travels.
set -euo pipefail
out=${1:?output folder}
python_version=${2:-3.12}
abi=cp${python_version/./}
wheels=$(mktemp -d)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64)
for requirement in $(grep -iE '^(mujoco|dm_control|dm-env|dm-tree|docstring_parser|tyro|typeguard|gymnasium|Farama-Notifications|PyOpenGL)==' "$(dirname "$0")/../../constraints.txt"); do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    --abi "$abi" --abi none "${platforms[@]}" --platform any -d "$wheels" "$requirement"
done
rm -rf "$out" && mkdir -p "$out"
for wheel in "$wheels"/*.whl; do unzip -qo "$wheel" -d "$out"; done
rm -rf "$out"/dm_control/{suite,locomotion,blender,manipulation,entities} \
  "$out"/mujoco/{experimental,testdata,include,usd,sysid} "$out"/mujoco/*_test.py \
  "$out"/OpenGL/{DLLS,GLES1,GLES2,GLES3} "$out"/OpenGL/raw/GLES*
find "$out" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$wheels"
du -sh "$out"
