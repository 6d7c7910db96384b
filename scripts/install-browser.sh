#!/usr/bin/env sh
# The play page's end-to-end test drives a real headless browser: Debian's chromium and
# chromedriver (a browser download such as `playwright install` needs the internet; apt does
# not). `make test` and CI both run this. Where it cannot install them (no apt-get, no root or
# sudo, a broken mirror) it says so and the browser test skips with that reason; the rest of
# the suite runs either way.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get here; install chromium and chromedriver yourself, or the browser test (tests/test_play.py) is skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo"
    else
        echo "install-browser: not root and no password-less sudo; run 'sudo apt-get install chromium chromium-driver', or the browser test (tests/test_play.py) is skipped" >&2
        exit 0
    fi
fi
echo "install-browser: installing Debian's chromium and chromium-driver for the browser test" >&2
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "install-browser: WARNING: could not install chromium; the browser test (tests/test_play.py) will be skipped" >&2
fi
exit 0
