# Sourced by scripts/test before pytest: installs the real components the tests start
# (Debian's redis-server, nginx and chromium; Node packages into tests/node) when they are
# missing, so a fresh machine runs the whole suite and no test ever skips for want of one.
# One line per thing it installs, nothing when all is there: a second run costs a few
# milliseconds (a PATH lookup per binary and one hash of the npm lock file).
set -euo pipefail

_llmbrick_components() {
    local -a missing=()
    local name
    # The three Debian packages are named after the binary they install. nginx lives in
    # /usr/sbin, which a non-root PATH may lack, so look there too.
    for name in redis-server nginx chromium; do
        if ! command -v "$name" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$name" ]; then
            missing+=("$name")
        fi
    done
    if ((${#missing[@]})); then
        echo "installing ${missing[*]} (apt)"
        _llmbrick_apt_install "${missing[@]}"
    fi

    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "llmbrick tests need Node.js 20+ with npm on PATH (install Debian's nodejs and npm)" >&2
        return 1
    fi
    # node_modules is current when it was made from exactly this package.json and lock:
    # the stamp is named after their hash, as scripts/_env.sh does for the venv.
    local dir=tests/node stamp
    stamp="$dir/node_modules/.llmbrick-$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        local packages
        packages=$(node -p 'Object.keys(require("./'"$dir"'/package.json").dependencies).join(" ")')
        echo "installing npm packages $packages into $dir"
        _llmbrick_quietly npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
        touch "$stamp"
    fi
}

_llmbrick_apt_install() {
    local -a apt=(apt-get)
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "installing $* needs root (or sudo): apt-get install $*" >&2
            return 1
        }
        apt=(sudo apt-get)
    fi
    # The package lists are refreshed only when an install cannot find what it needs
    # (a fresh image has none, an old one may point at superseded files).
    if ! LLMBRICK_QUIET_FAILURE=1 _llmbrick_quietly "${apt[@]}" -y -q install "$@"; then
        _llmbrick_quietly "${apt[@]}" -q update
        _llmbrick_quietly "${apt[@]}" -y -q install "$@"
    fi
}

# Runs a command with its output kept aside, and shows that output only if it fails
# (unless LLMBRICK_QUIET_FAILURE is set: a failure the caller recovers from).
# Installs run non-interactively and never start the packages' system services: the
# tests start their own redis-server and nginx on free loopback ports, and a service
# left listening on :80 or :6379 would outlive the test run.
_llmbrick_quietly() {
    local log status=0
    log=$(mktemp)
    (
        export DEBIAN_FRONTEND=noninteractive
        policy=/usr/sbin/policy-rc.d
        if [ ! -e "$policy" ] && [ -w /usr/sbin ]; then
            trap 'rm -f "$policy"' EXIT
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
        fi
        "$@"
    ) >"$log" 2>&1 || status=$?
    if ((status)) && [ -z "${LLMBRICK_QUIET_FAILURE:-}" ]; then
        cat "$log" >&2
        echo "failed ($status): $*" >&2
    fi
    rm -f "$log"
    return "$status"
}

_llmbrick_components
unset -f _llmbrick_components _llmbrick_apt_install _llmbrick_quietly
