#!/usr/bin/env bash
# Make sure the system packages callengine needs are present.
#   ensure-system.sh run    -> espeak-ng (embedded TTS and the simulated caller's voice)
#   ensure-system.sh test   -> the above, plus Node.js >= 20 with npm (the WhatsApp sidecar) and
#                              chromium (the console's browser tests drive it through playwright)
# As root they are installed with apt-get; otherwise a missing one is named and we exit 1.
set -euo pipefail
what="${1:-run}"

need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
if [ "$what" = "test" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  # The reverse proxy of the two-host test (deploy/nginx-two-hosts.conf).
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
  # Real recorded speech (8 kHz prompts, CC-BY-SA-3.0) for the recognizer tests.
  [ -f /usr/share/asterisk/sounds/en_US_f_Allison/agent-pass.wav ] || need+=(asterisk-core-sounds-en-wav)
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    need+=(nodejs npm)
  elif [ "$(node -e 'console.log(process.versions.node.split(".")[0])')" -lt 20 ]; then
    echo "callengine: Node.js >= 20 is required for the WhatsApp sidecar (found $(node --version))." >&2
    exit 1
  fi
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "callengine: installing system packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "callengine: missing system packages: ${need[*]}" >&2
  echo "  install them with: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
