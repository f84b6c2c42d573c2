#!/usr/bin/env bash
# What tests/test_serve_browser.py needs, installed once: Debian's chromium and chromium-driver,
# node and npm (apt-get, as root), and the locked playwright-core (npm; it drives that chromium,
# so Playwright's own browser download is never used). Does nothing when all is there. Never
# fails the build: where something cannot be installed it says why, and the test skips.
set -u
cd "$(dirname "$0")"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "browser test: installing ${missing[*]} with apt-get (once; takes a few minutes)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q "${missing[@]}"; } >/dev/null \
      || echo "browser test: apt-get could not install ${missing[*]}; the test will skip"
  else
    echo "browser test: ${missing[*]} missing and not installable here (needs root and" \
         "apt-get); the test will skip"
  fi
fi

# npm ci wipes node_modules, so only when the lock file is newer than the installed tree.
if command -v npm >/dev/null 2>&1 \
    && { [ ! -f node_modules/.package-lock.json ] \
         || [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error \
    || echo "browser test: npm could not install playwright-core; the test will skip"
fi
exit 0
