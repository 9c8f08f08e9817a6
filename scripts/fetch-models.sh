#!/usr/bin/env bash
# Model files that no package installs where callengine loads them from.
#   fetch-models.sh [VENV]   (default .venv)
# <VENV>/share/callengine/nakdimon.onnx: the Nakdimon Hebrew diacritization model (MIT,
# Elazar Gershuni) with its licence, copied out of the piper-tts wheel from PyPI. Only
# the model file is taken: piper-tts's code (GPL-3) is neither installed nor imported.
# Without it Hebrew is spoken by raw espeak-ng (a warning at start-up), so a platform
# without that wheel warns here instead of failing the setup.
# <VENV>/share/callengine/piper-stages/: the default Piper voice cut into its prior, flow
# and vocoder (engine/providers/piper_stages.py), so it speaks window by window; a host
# that finds them missing cuts them itself at start-up (a few seconds).
set -euo pipefail
venv="${1:-.venv}"
dest="$venv/share/callengine"
"$venv/bin/python" -m engine.providers.piper_stages
[ -s "$dest/nakdimon.onnx" ] && exit 0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ! "$venv/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" 'piper-tts==1.8.0'; then
  echo "callengine: could not fetch the piper-tts wheel for the Nakdimon model; Hebrew will use raw espeak-ng" >&2
  exit 0
fi
"$venv/bin/python" - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile

src, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(src, "piper_tts-*.whl"))[0]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for member, name in (("piper/hebrew/LICENSE", "nakdimon.LICENSE"), ("piper/hebrew/nakdimon.onnx", "nakdimon.onnx")):
        part = os.path.join(dest, name + ".part")
        with open(part, "wb") as fh:
            fh.write(z.read(member))
        os.replace(part, os.path.join(dest, name))
PY
echo "callengine: Nakdimon model in $dest" >&2
