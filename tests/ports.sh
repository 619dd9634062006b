# tests/ports.sh: sourced by the shell tests that start their own hellod (tests/bench/smoke,
# tests/systemd/handover-clients-smoke) to pick a loopback port as the integration harness does.

# port_in_use PORT: whether something accepts on 127.0.0.1:PORT.
port_in_use() {
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# claim_port PORT: takes PORT from the ports the integration harness hands out
# (tests/integration/harness.c, claim_port: a lock on /tmp/hellod-test-ports/PORT), so that a
# test running beside this one does not pick it too; held until this script exits. Where no
# claim can be had (no flock, a directory of another user), the probe alone decides, as the
# harness does then.
claim_port() {
        local fd
        command -v flock >/dev/null || return 0
        mkdir -p /tmp/hellod-test-ports 2>/dev/null
        { exec {fd}>>"/tmp/hellod-test-ports/$1"; } 2>/dev/null || return 0
        flock -n "$fd" && return 0
        exec {fd}>&-
        return 1
}
