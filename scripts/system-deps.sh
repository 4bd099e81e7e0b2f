#!/usr/bin/env bash
# System packages the tests and the text benchmark read (Debian/Ubuntu, apt): the Bible in two
# translations (SWORD modules under /usr/share/sword) and WordNet 3.0 (/usr/share/wordnet).
# model/text_data.py reads them; the tests fail, never skip, without them. As root or via sudo.
set -euo pipefail
PACKAGES=(sword-text-kjv sword-text-web wordnet-base)
# the browser test (tests/test_browser.py): headless Chromium and its driver, driven by selenium
PACKAGES+=(chromium chromium-driver)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
