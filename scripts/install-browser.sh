#!/bin/sh
# Install the headless browser the end-to-end review test drives (tests/test_review_browser.py):
# Debian's chromium and its matching chromedriver. Nothing is downloaded at test time.
#
# Idempotent: a no-op (no apt call) when both binaries are already installed. Needs root (or
# password-less sudo) to install; without either it warns and exits 0 on a developer machine,
# so `make venv` still works there, but fails under CI=true, where the test must run.
set -eu

have() { command -v "$1" >/dev/null 2>&1; }
browser() { have chromium || have chromium-browser; }

if browser && have chromedriver; then
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif have sudo && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install-browser: chromium/chromedriver missing and not root; install them with" >&2
    echo "  apt-get install -y chromium chromium-driver   (the browser test is skipped)" >&2
    [ "${CI:-}" = "true" ] && exit 1
    exit 0
fi

if ! have apt-get; then
    echo "install-browser: no apt-get here; install chromium and chromedriver yourself" >&2
    [ "${CI:-}" = "true" ] && exit 1
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core
browser && have chromedriver
