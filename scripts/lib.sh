# shellcheck shell=bash
# Shared helpers for scripts/test and other setup scripts. Source it; it defines functions only.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------------
# Output

# Milliseconds since the epoch (bash 5 EPOCHREALTIME, e.g. "1764149494.123456").
_lib_ms() {
    local t=${EPOCHREALTIME/[.,]/}
    printf '%s' "$((10#${t} / 1000))"
}
# Milliseconds as seconds with one decimal.
_lib_secs() { printf '%d.%d' "$(($1 / 1000))" "$(($1 % 1000 / 100))"; }
_lib_now() { date -u '+%Y-%m-%dT%H:%M:%SZ'; }

_LIB_START_MS=$(_lib_ms)
_LIB_PHASE_NAME=""
_LIB_PHASE_START_MS=0
_LIB_SUMMARY=()

# log MESSAGE...: a line on stderr with wall-clock time and seconds since the script started.
log() { printf '[%s +%ss] %s\n' "$(_lib_now)" "$(_lib_secs "$(($(_lib_ms) - _LIB_START_MS))")" "$*" >&2; }
warn() { log "WARNING: $*"; }
die() {
    log "ERROR: $*"
    exit 1
}

# phase NAME: closes the previous phase (recording its duration) and announces the next one.
phase() {
    phase_end
    _LIB_PHASE_NAME=$1
    _LIB_PHASE_START_MS=$(_lib_ms)
    printf '\n==> [%s] %s\n' "$(_lib_now)" "$1" >&2
}

# phase_end: records the duration of the current phase, if any.
phase_end() {
    if [[ -n ${_LIB_PHASE_NAME} ]]; then
        _LIB_SUMMARY+=("$(printf '%7ss  %s' "$(_lib_secs "$(($(_lib_ms) - _LIB_PHASE_START_MS))")" "${_LIB_PHASE_NAME}")")
        _LIB_PHASE_NAME=""
    fi
}

# phase_summary: prints how long each phase took.
phase_summary() {
    phase_end
    printf '\n==> [%s] phase durations (total %ss)\n' "$(_lib_now)" "$(_lib_secs "$(($(_lib_ms) - _LIB_START_MS))")" >&2
    local line
    for line in "${_LIB_SUMMARY[@]}"; do printf '    %s\n' "${line}" >&2; done
}

# ---------------------------------------------------------------------------------------------
# Privileges

# can_root: true when commands can run as root (we are root, or password-less sudo works).
can_root() {
    [[ ${EUID} -eq 0 ]] && return 0
    command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1
}

# as_root CMD...: runs CMD as root (directly or through `sudo -n`). Fails when that is impossible.
as_root() {
    if [[ ${EUID} -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        sudo -n "$@"
    else
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# Debian packages

# missing_debs PKG...: prints (one a line) the packages that are not installed.
missing_debs() {
    local pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null || true)
        [[ ${status} == "install ok installed" ]] || printf '%s\n' "${pkg}"
    done
}

_LIB_APT_UPDATED=0

# apt_install PKG...: installs packages non-interactively; runs `apt-get update` once per run.
apt_install() {
    [[ $# -gt 0 ]] || return 0
    local -a apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300)
    if [[ ${_LIB_APT_UPDATED} -eq 0 ]]; then
        log "apt-get update"
        as_root "${apt[@]}" update >&2 || return 1
        _LIB_APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root "${apt[@]}" install "$@" >&2
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL (local Debian cluster)

# pg_answers HOST PORT: true when a server accepts connections there (pg_isready, or a bare TCP
# connect when the client tools are not installed).
pg_answers() {
    local host=$1 port=$2
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "${host}" -p "${port}" -t 3
    else
        (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null
    fi
}

# pg_psql ARGS...: psql as superuser `postgres` over TCP on PG_HOST:PG_PORT, never prompting.
pg_psql() {
    PGCONNECT_TIMEOUT=5 psql -X -q -w -v ON_ERROR_STOP=1 -h "${PG_HOST}" -p "${PG_PORT}" -U postgres "$@"
}

# pg_can_login: true when `postgres` can log in over TCP without a password.
pg_can_login() { pg_psql -d postgres -Atc 'select 1' >/dev/null 2>&1; }

# pg_local_version: the newest PostgreSQL version with a Debian configuration (/etc/postgresql/V).
pg_local_version() {
    local dir
    dir=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
    printf '%s' "${dir}"
}

# pg_wait HOST PORT SECONDS: waits until the server answers.
pg_wait() {
    local host=$1 port=$2 deadline=$((SECONDS + $3))
    until pg_answers "${host}" "${port}"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

_LIB_HBA_MARK="# added by video-server scripts/test"

# pg_trust_loopback VERSION: lets every user log in from 127.0.0.1/::1 without a password
# (first lines of pg_hba.conf, so they win), then reloads the cluster. Test machines only.
pg_trust_loopback() {
    local version=$1 hba="/etc/postgresql/$1/main/pg_hba.conf"
    [[ -f ${hba} ]] || return 1
    if ! grep -qF "${_LIB_HBA_MARK}" "${hba}" 2>/dev/null; then
        log "pg_hba.conf: trusting TCP connections from 127.0.0.1 and ::1 (${hba})"
        # shellcheck disable=SC2016
        as_root bash -c '
            set -euo pipefail
            tmp=$(mktemp)
            { printf "%s: trust loopback TCP for the test suite\n" "$2"
              printf "host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
              cat "$1"; } >"$tmp"
            cat "$tmp" >"$1"   # keeps owner and mode of the original
            rm -f "$tmp"' _ "${hba}" "${_LIB_HBA_MARK}" || return 1
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "${version}" main reload >&2
}
