# shellcheck shell=bash
# tests/systemd/guest-lib.sh: sourced by the check scripts that run inside the test container
# (tests/systemd/guest-checks, tests/packaging/guest-install), as hellod-test.service: the
# counts ("ok N - ..." / "not ok N - ...", and last "guest checks: P passed, F failed", which
# the host replaces with its own summary), the exit status in /mnt/out/status, the journal
# in /mnt/out on exit, bounded waits, clients, and the units' state. Waits for the boot to
# finish. Every wait is bounded.
set -uo pipefail
export SYSTEMD_PAGER='' SYSTEMD_COLORS=0 LC_ALL=C.UTF-8

out=/mnt/out
n=$(($(cat "$out/first-check" 2>/dev/null || echo 1) - 1))
passed=0 failed=0
work=$(mktemp -d)

finish() {
        journalctl --sync 2>/dev/null
        timeout 20 journalctl -b --no-pager -o short-monotonic >"$out/journal.txt" 2>&1
        timeout 20 journalctl -b --no-pager -o short-monotonic -u hellod.service -u hellod.socket \
                >"$out/hellod-journal.txt" 2>&1
        echo "guest checks: $passed passed, $failed failed"
        local status=$((failed > 0))
        echo "$status" >"$out/status"
        exit "$status"
}
trap finish EXIT

# check DESCRIPTION FUNCTION [ARGS]: runs the function; what it prints is shown only when it
# fails.
check() {
        local desc=$1 output
        shift
        n=$((n + 1))
        if output=$("$@" 2>&1); then
                passed=$((passed + 1))
                echo "ok $n - $desc"
        else
                failed=$((failed + 1))
                echo "not ok $n - $desc"
                [ -z "$output" ] || sed 's/^/#   /' <<<"$output"
        fi
}

# wait_for SECONDS COMMAND...: retries the command every 0.2 s until it succeeds or time is up.
wait_for() {
        local deadline=$(($(date +%s%N) + $1 * 1000000000))
        shift
        until "$@"; do
                [ "$(date +%s%N)" -lt "$deadline" ] || return 1
                sleep 0.2
        done
}

sctl() { timeout 60 systemctl "$@"; }
prop() { systemctl show -P "$2" "$1"; }

# converse HOST PORT INPUT EXPECTED [nc options]: one client; what it receives must be exactly
# EXPECTED. INPUT and EXPECTED are printf formats ('Michael\n'). nc -N half-closes after the
# input, hellod then closes.
# shellcheck disable=SC2059
converse() {
        local host=$1 port=$2 input=$3 expected=$4
        shift 4
        printf "$expected" >"$work/expected"
        printf "$input" | timeout 15 nc -N -w 10 "$@" "$host" "$port" >"$work/got" 2>"$work/nc.err"
        cmp -s "$work/expected" "$work/got" && return 0
        echo "client $host:$port sent $(printf "$input" | od -An -c | tr -s ' ')"
        echo "  expected: $(od -An -c "$work/expected" | tr -s ' ')"
        echo "  got:      $(od -An -c "$work/got" | tr -s ' ') $(cat "$work/nc.err")"
        return 1
}
greets() { converse "$1" "$2" '' "$3\r\n" 2>/dev/null >/dev/null; }

unit_state() {
        echo "hellod.service: $(prop hellod.service ActiveState)/$(prop hellod.service SubState)" \
                "result=$(prop hellod.service Result) MainPID=$(prop hellod.service MainPID)" \
                "NRestarts=$(prop hellod.service NRestarts)"
        echo "hellod.socket: $(prop hellod.socket ActiveState)/$(prop hellod.socket SubState)"
        timeout 10 journalctl -b --no-pager -n 15 -u hellod.service -u hellod.socket 2>&1
}

# journal_json FILTER...: hellod's journal entries matching the filters, as JSON lines.
journal_json() {
        journalctl --sync 2>/dev/null
        timeout 10 journalctl -b --no-pager -u hellod.service -o json "$@" 2>/dev/null
}
# field NAME: the value of NAME in the JSON entry on stdin (string values only).
field() { grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | sed 's/^"[^"]*":"\(.*\)"$/\1/'; }

# write_conf LINE...: the configuration file $conf (set by the check script) holds these lines.
write_conf() {
        printf '%s\n' "$@" >"$conf"
        chmod 0644 "$conf"
}

# ---------------------------------------------------------------------------------------------
# Wait for the boot to finish.
timeout 120 systemctl is-system-running --wait >/dev/null 2>&1
echo "# guest: $(. /etc/os-release && echo "$PRETTY_NAME"), systemd $(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')," \
        "boot: $(systemctl is-system-running 2>&1)"
