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
# runs_as_hellod: hellod.service's main process runs as the system user hellod (its sysusers.d file).
runs_as_hellod() {
        local user
        user=$(ps -o user= -p "$(prop hellod.service MainPID)")
        [ "$user" = hellod ] || { echo "hellod runs as '$user', not as the system user hellod"; return 1; }
}

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

# ---------------------------------------------------------------------------------------------
# hellod-socket-generator and the reload check, shared by guest-checks (meson's install) and
# guest-install (the .deb). They use $conf and leave it as they found it.
generated=/run/systemd/generator/hellod.socket.d/50-hellod-conf.conf
closed() { ! nc -z -w 2 "$1" "$2" 2>/dev/null; }
# journal_since CURSOR ARGS...: the boot's journal after CURSOR (the message text only).
journal_cursor() { journalctl --sync; journalctl -b -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }
journal_since() {
        local cursor=$1
        shift
        journalctl --sync
        timeout 10 journalctl -b --no-pager -o cat --after-cursor="$cursor" "$@" 2>&1
}

# check_generator_installed: the generator ran on daemon-reload and wrote the drop-in from the
# shipped config: the packaged addresses again (ListenStream=9999).
check_generator_installed() {
        local gen
        gen=$(find /lib/systemd/system-generators /usr/lib/systemd/system-generators \
                -name hellod-socket-generator -perm -u+x 2>/dev/null | head -n 1)
        [ -n "$gen" ] || { echo "no executable hellod-socket-generator in the generator directory"; return 1; }
        [ -f "$generated" ] || { echo "no $generated:"; ls -R /run/systemd/generator | head -n 30; return 1; }
        grep -qx 'ListenStream=9999' "$generated" || { cat "$generated"; return 1; }
        prop hellod.socket DropInPaths | grep -q "$generated" ||
                { echo "DropInPaths=$(prop hellod.socket DropInPaths)"; return 1; }
        [ "$(prop hellod.socket Listen)" = '[::]:9999 (Stream)' ] ||
                { echo "hellod.socket Listen=$(prop hellod.socket Listen)"; return 1; }
}

# check_generator_moves: the issue's workflow, with hellod running (started by a client).
check_generator_moves() {
        local cursor
        converse 127.0.0.1 9999 '' "$1\r\n" || { unit_state; return 1; }
        [ "$(systemctl is-active hellod.service)" = active ] || { unit_state; return 1; }
        cp -p "$conf" "$work/conf.before-move"
        { cat "$work/conf.before-move"; printf '%s\n' 'listen = ["127.0.0.1"];' 'port = 7777;' 'backlog = 64;'; } >"$conf"
        cursor=$(journal_cursor)
        sctl daemon-reload || return 1
        grep -qx 'ListenStream=127.0.0.1:7777' "$generated" && grep -qx 'Backlog=64' "$generated" ||
                { echo "$generated:"; cat "$generated"; return 1; }
        sctl restart hellod.socket || { unit_state; return 1; }
        [ "$(prop hellod.socket Listen)" = '127.0.0.1:7777 (Stream)' ] ||
                { echo "hellod.socket Listen=$(prop hellod.socket Listen)"; return 1; }
        converse 127.0.0.1 7777 'Michael\n' "$1\r\nHello, Michael!\r\n" || { unit_state; return 1; }
        closed 127.0.0.1 9999 || { echo "9999 still accepts:"; ss -ltn; return 1; }
        closed ::1 7777 || { echo "[::1]:7777 accepts:"; ss -ltn; return 1; }
        # The restarted hellod got sockets matching its config: no warning.
        wait_for 5 journal_has "$cursor" "as 'listen' and 'port' say" ||
                { journal_since "$cursor" -u hellod.service | tail -n 20; return 1; }
        ! journal_since "$cursor" -u hellod.service | grep -q 'do not match' ||
                { journal_since "$cursor" -u hellod.service | tail -n 20; return 1; }
}
# (Read whole, then matched: with pipefail, grep -q ending early fails the pipe.)
journal_has() {
        local text
        text=$(journal_since "$1" -u hellod.service)
        grep -qF "$2" <<<"$text"
}

# check_unapplied_warned: the file says another port, no daemon-reload yet: a (valid) reload
# tells the operator at warning level, with the fix.
check_unapplied_warned() {
        local cursor entry
        sed -i 's/^port = 7777;$/port = 7778;/' "$conf"
        cursor=$(journal_cursor)
        sctl reload hellod.service || { unit_state; return 1; }
        wait_for 5 journal_has "$cursor" 'do not match' || { journal_since "$cursor" -u hellod.service; return 1; }
        # (JSON, because `-u` and `-p` together select nothing on 252.)
        entry=$(journal_since "$cursor" -u hellod.service -o json | grep -F 'do not match')
        grep -qF 'systemctl daemon-reload && systemctl restart hellod.socket' <<<"$entry" &&
                grep -qF '"PRIORITY":"4"' <<<"$entry" ||
                { echo "not at warning level, or without the fix: $entry"; return 1; }
        sed -i 's/^port = 7778;$/port = 7777;/' "$conf"
}

# check_reload_fails: a broken file makes `systemctl reload` fail; the error shows in
# `systemctl status`; hellod goes on serving (HOST PORT GREETING) with its old configuration.
check_reload_fails() {
        local pid restarts status=0
        pid=$(prop hellod.service MainPID) restarts=$(prop hellod.service NRestarts)
        [ "$pid" != 0 ] || { unit_state; return 1; }
        cp -p "$conf" "$work/conf.before-break"
        printf '%s\n' 'no_such_key = 1;' >>"$conf"
        timeout 60 systemctl reload hellod.service >"$work/reload.out" 2>&1 || status=$?
        [ "$status" != 0 ] || { echo "systemctl reload succeeded on a broken config"; unit_state; return 1; }
        echo "# systemctl reload: exit $status: $(head -n 1 "$work/reload.out")"
        [ "$(systemctl is-active hellod.service)" = active ] || { unit_state; return 1; }
        [ "$(prop hellod.service MainPID)" = "$pid" ] && [ "$(prop hellod.service NRestarts)" = "$restarts" ] ||
                { echo "the daemon was replaced: MainPID $pid -> $(prop hellod.service MainPID)"; unit_state; return 1; }
        systemctl status --no-pager -n 20 hellod.service 2>&1 | grep -q 'no_such_key' ||
                { echo "systemctl status does not show the error:"; systemctl status --no-pager -n 20 hellod.service; return 1; }
        converse "$1" "$2" 'Tracy\n' "$3\r\nHello, Tracy!\r\n" || { unit_state; return 1; }
        cp -p "$work/conf.before-break" "$conf"
}

# check_generator_broken: a broken file at daemon-reload: no drop-in, the generator's reason
# in the journal, and hellod.socket back to the packaged [::]:9999 once restarted. (With the
# service stopped first: it could not start on that file, and the socket alone shows it.)
check_generator_broken() {
        local cursor
        sctl stop hellod.service || return 1
        sed -i 's/^port = 7777;$/port = 77777;/' "$conf"
        grep -qx 'port = 77777;' "$conf" || { echo "no 'port = 7777;' line to break in $conf"; return 1; }
        cursor=$(journal_cursor)
        sctl daemon-reload || return 1
        [ ! -e "$generated" ] || { echo "a drop-in was generated from a broken config:"; cat "$generated"; return 1; }
        wait_for 5 generator_said "$cursor" 'hellod.conf:' ||
                { echo "no message from hellod-socket-generator in the journal; since the daemon-reload:";
                  journal_since "$cursor" -o verbose | grep -B14 -A3 'hellod.socket keeps' | tail -n 40; return 1; }
        generator_said "$cursor" 'port: must be between 1 and 65535' ||
                { echo "the generator's message does not name the key:"; generator_lines "$cursor"; return 1; }
        # What the documentation tells the operator to run.
        local by_id
        by_id=$(timeout 10 journalctl -b --no-pager -o cat -t hellod-socket-generator)
        grep -qF 'port: must be between 1 and 65535' <<<"$by_id" ||
                { echo "journalctl -b -t hellod-socket-generator does not show it: $by_id"; return 1; }
        sctl restart hellod.socket || { unit_state; return 1; }
        [ "$(prop hellod.socket Listen)" = '[::]:9999 (Stream)' ] ||
                { echo "hellod.socket Listen=$(prop hellod.socket Listen)"; return 1; }
        ss -Hltn 'sport = :9999' | grep -q . || { echo "nothing listens on 9999:"; ss -ltn; return 1; }
        closed 127.0.0.1 7777 || { echo "7777 still accepts"; ss -ltn; return 1; }
}
# generator_said CURSOR TEXT: the generator logged TEXT since CURSOR. (Its entries, not its
# identifier, are matched: `-t` with `--after-cursor` found nothing on 252.)
generator_lines() { journal_since "$1" -o short | grep -F 'hellod-socket-generator['; }
generator_said() {
        local text
        text=$(generator_lines "$1")
        grep -qF "$2" <<<"$text"
}

# generator_restore: the configuration as before the checks, applied.
generator_restore() {
        cp -p "$work/conf.before-move" "$conf" || return 1
        sctl daemon-reload && sctl restart hellod.socket
}

# ---------------------------------------------------------------------------------------------
# The hand-over (docs/zero-downtime.md), shared by guest-checks and guest-install:
# handover-clients (bound at /mnt/handover-clients) holds conversations across a restart, an
# upgrade or a crash and checks each byte for byte afterwards.
handover_clients=/mnt/handover-clients

# hold_start N GREETING: N conversations on 127.0.0.1:9999, each in its state; waits for them.
hold_start() {
        rm -f "$work/hold.cmd"
        mkfifo "$work/hold.cmd"
        "$handover_clients" -p 9999 -n "$1" -t 30 -g "$2" hold <"$work/hold.cmd" >"$work/hold.report" \
                2>"$work/hold.errors" &
        hold_pid=$!
        exec 4>"$work/hold.cmd"
        if ! wait_for 60 grep -q "^ready $1\$" "$work/hold.report"; then
                echo "the conversations did not get ready:"
                cat "$work/hold.report"
                head -n 5 "$work/hold.errors"
                exec 4>&-
                kill "$hold_pid" 2>/dev/null
                wait "$hold_pid"
                return 1
        fi
}

# hold_check STOP_MS STATUS PATTERN: the check; the exit status and report must be as given.
hold_check() {
        local status
        echo "check $1" >&4
        exec 4>&-
        wait "$hold_pid"
        status=$?
        cat "$work/hold.report"
        head -n 5 "$work/hold.errors"
        [ "$status" = "$2" ] || { echo "handover-clients exited with $status, expected $2"; return 1; }
        grep -Eq -- "$3" "$work/hold.report" || { echo "the report does not match /$3/"; return 1; }
}

# greet_start GREETING, greet_done: 50 new clients, from now on, each greeted and answered.
greet_start() {
        "$handover_clients" -p 9999 -n 50 -t 30 -g "$1" greet >"$work/greet.report" 2>&1 &
        greet_pid=$!
}
greet_done() {
        wait "$greet_pid" || { echo "clients connecting during the gap:"; cat "$work/greet.report"; return 1; }
}

# hold_figures LABEL: the report's figures, as a comment line in the test output.
hold_figures() { echo "# $1: $(grep -o 'conversations: .*' "$work/hold.report" 2>/dev/null)"; }

kept_all() { echo "^handover-clients: $1 conversations: kept $1, dropped 0, refused 0, wrong 0, stalled 0"; }
