# ci/lib.sh - helpers shared by the ci/ scripts.  Source it; do not run it.
#
#   ci_python 3.12        print the path of a working CPython 3.12
#   ci_apt_install PKG..  install missing Debian packages (root only)
#   ci_venv DIR PYTHON    (re)create a venv at DIR and put it first on PATH
#   ci_run CMD...         print the command, then run it
#   ci_pytest [ARGS...]   run the test suite from inside tests/

# The repository root, whatever directory the script was started from.
CI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CI_PYTHONS_DEFAULT="3.10 3.11 3.12 3.13"
# Upper bound for one pytest or meson test run, so that a hang fails the job
# instead of eating the CI time budget.
CI_TEST_TIMEOUT="${CI_TEST_TIMEOUT:-1200}"

ci_log() {
    printf '\n==== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"
}

ci_die() {
    printf '\nci: ERROR: %s\n' "$*" >&2
    exit 1
}

ci_run() {
    printf '+ %s\n' "$*"
    "$@"
}

# ci_python VERSION: print an interpreter path for CPython VERSION (e.g. 3.12).
# Uses python3.X from PATH if it really runs (a pyenv shim for a version that
# is not selected exits with "command not found"), otherwise the newest
# matching pyenv installation.
ci_python() {
    local want="$1" exe have pyenv_bin latest
    if [[ "$want" == */* ]]; then      # already a path
        [ -x "$want" ] || ci_die "$want is not executable"
        echo "$want"
        return 0
    fi
    exe="$(command -v "python$want" 2>/dev/null || true)"
    if [ -n "$exe" ]; then
        have="$("$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
        if [ "$have" = "$want" ]; then
            echo "$exe"
            return 0
        fi
    fi
    pyenv_bin="$(command -v pyenv 2>/dev/null || true)"
    [ -n "$pyenv_bin" ] || pyenv_bin="${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv"
    if [ -x "$pyenv_bin" ]; then
        latest="$("$pyenv_bin" versions --bare 2>/dev/null \
            | grep -E "^${want//./\\.}\.[0-9]+$" | sort -V | tail -n 1 || true)"
        if [ -n "$latest" ]; then
            exe="$("$pyenv_bin" prefix "$latest")/bin/python"
            if "$exe" -c 'import sys' >/dev/null 2>&1; then
                echo "$exe"
                return 0
            fi
        fi
    fi
    ci_die "no working Python $want (neither python$want on PATH nor a pyenv $want.x)"
}

# ci_apt_install PKG[:COMMAND]...: make sure each tool is present.  A package
# counts as present when COMMAND (default: the package name) is on PATH, or,
# for library packages (no COMMAND found, name ends in -dev), when dpkg knows
# it.  Missing ones are installed with one quiet apt-get update + install, as
# root only.  Returns 1 if something is still missing.
_CI_APT_UPDATED=""
ci_apt_install() {
    local spec pkg cmd missing=()
    for spec in "$@"; do
        pkg="${spec%%:*}"
        cmd="${spec#*:}"
        [ "$spec" = "$pkg" ] && cmd="$pkg"
        if [[ "$pkg" == *-dev ]] && [ "$cmd" = "$pkg" ]; then
            dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
        elif ! command -v "$cmd" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "ci: missing ${missing[*]} and cannot install them (not root or no apt-get)" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$_CI_APT_UPDATED" ]; then
        echo "+ apt-get update -qq"
        apt-get update -qq >/dev/null
        _CI_APT_UPDATED=1
    fi
    echo "+ apt-get install -y -qq --no-install-recommends ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ci_venv DIR PYTHON: a fresh venv at DIR (relative to the repository root),
# activated for the rest of the calling script (first on PATH: meson-python
# finds meson and ninja through PATH).
ci_venv() {
    local dir="$CI_ROOT/$1" py="$2"
    ci_run "$py" -m venv --clear "$dir"
    export VIRTUAL_ENV="$dir"
    export PATH="$dir/bin:$PATH"
    hash -r
    # The pip bundled with 3.10 (23.0) knows neither -C nor repeated
    # --config-settings keys, which the builds below rely on.
    ci_run python -m pip install -q --upgrade pip
}

# ci_pytest [ARGS...]: run the whole suite against the installed qloop.  From
# inside tests/, with the `pytest` script: from the repository root the source
# package (no compiled module) would shadow the installed one.
ci_pytest() {
    (cd "$CI_ROOT/tests" && ci_run timeout -k 30 "$CI_TEST_TIMEOUT" \
        pytest -q -ra -p no:cacheprovider "$@" .)
}

# ci_py_version PYTHON: print "3.X" for an interpreter.
ci_py_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}
