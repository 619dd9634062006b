# shellcheck shell=bash
# tests/systemd/lib.sh: the host side of the real-systemd tests, sourced by tests/systemd/run
# (the meson stage under systemd) and tests/packaging/deb (the Debian package installed
# into a booted guest). It keeps the counts, builds and caches the guest's root file
# system, boots it with systemd-nspawn to run a check script inside, reads the guest's
# verdict and cleans up.
#
# Before sourcing, set:
#   checks_label  the summary line's prefix ("systemd checks" prints
#                 "systemd checks: P passed, F failed")
#   test_name     a short word for messages and temporary directories ("systemd")
# Then: guest_init (traps, prerequisites, $tmp), guest_rootfs ($rootfs), guest_boot SCRIPT
# [nspawn options], guest_verdict; summary last.
#
# Environment: HELLOD_GUEST_CACHE (where the root file system is kept, default
# /var/cache/hellod-tests), HELLOD_KEEP_OUT=1 (keep the guest's logs and print where).
#
# Nothing here skips: whatever keeps a test from running (no namespaces, debootstrap failing)
# is a failure, said loudly. Nothing touches the host's systemd: the container has its own
# PID 1, network, and a throw-away overlay on top of the cached root file system.

guest_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${HELLOD_GUEST_CACHE:-/var/cache/hellod-tests}
suite=bookworm
# Everything the guest needs: systemd itself, hellod's run-time libraries, and the tools the
# checks use (nc, ss, ps/kill). Changing this list (or ROOTFS_RECIPE) builds a new root.
# The Debian package's dependencies must all be here: the guest has no network.
guest_packages=systemd,systemd-sysv,dbus,iproute2,procps,libconfig9,liburing2,netcat-openbsd
ROOTFS_RECIPE=2

n=0 passed=0 failed=0
ok() { n=$((n + 1)) passed=$((passed + 1)); echo "ok $n - $1"; }
not_ok() {
        n=$((n + 1)) failed=$((failed + 1))
        echo "not ok $n - $1"
        shift
        [ $# -eq 0 ] || printf '%s\n' "$@" | sed 's/^/#   /'
}
summary() { echo "$checks_label: $passed passed, $failed failed"; }
# die: a step the test cannot do without. Loud, counted as a failure, never a skip.
die() {
        not_ok "$@"
        echo "$test_name test: CANNOT RUN: $1" >&2
        summary
        exit 1
}

# ---------------------------------------------------------------------------------------------
# Cleanup: the container (its cgroup, with anything left in it), temporary directories.
tmp='' cgroups=() nspawn_pid=''
cgroup_kill() {
        local cg=$1 pid
        [ -d "$cg" ] || return 0
        if [ -e "$cg/cgroup.kill" ]; then
                echo 1 >"$cg/cgroup.kill" 2>/dev/null
        else
                for _ in 1 2 3; do
                        find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null |
                                while read -r pid; do kill -KILL "$pid" 2>/dev/null; done
                done
        fi
        for _ in $(seq 50); do
                [ -z "$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break
                sleep 0.1
        done
        find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ ! -d "$cg" ] || echo "$test_name test: warning: could not remove cgroup $cg" >&2
}
cleanup() {
        local cg
        trap - EXIT INT TERM HUP
        for cg in "${cgroups[@]}"; do cgroup_kill "$cg"; done
        [ -z "$nspawn_pid" ] || { wait "$nspawn_pid"; } 2>/dev/null
        if [ -n "$tmp" ]; then
                if [ -n "${HELLOD_KEEP_OUT:-}" ]; then
                        echo "$test_name test: guest output kept in $tmp/out" >&2
                        rm -rf "$tmp/stage"
                else
                        rm -rf "$tmp"
                fi
        fi
}

# guest_init [TOOL:PACKAGE...]: traps, the prerequisites (root, namespaces, the tools nspawn
# and debootstrap need plus those named), and $tmp with $tmp/out for the guest.
guest_init() {
        local tool
        trap cleanup EXIT
        trap 'echo "$test_name test: interrupted" >&2; exit 1' INT TERM HUP
        [ "$(id -u)" -eq 0 ] || die "running as root (systemd-nspawn and debootstrap need it)"
        for tool in systemd-nspawn:systemd-container debootstrap:debootstrap flock:util-linux "$@"; do
                command -v "${tool%%:*}" >/dev/null ||
                        die "host has ${tool%%:*}" "install it: apt-get install --no-install-recommends ${tool#*:}"
        done
        unshare --pid --mount --net --uts --ipc --fork true 2>/dev/null ||
                die "host allows namespaces (unshare --pid --mount --net --uts --ipc failed)"
        tmp=$(mktemp -d "/tmp/hellod-$test_name.XXXXXX") || die "mktemp"
        mkdir -p "$tmp/out"
}

# ---------------------------------------------------------------------------------------------
# guest_rootfs: sets $rootfs, the guest's root file system, built once per package list and
# shared read-only afterwards (every boot puts a tmpfs overlay on it). Built in a temporary
# directory and renamed into place, under a lock, so that a crash or a parallel run never
# sees half a root.
build_rootfs() {
        local mirror work unit
        mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
        mirror=${mirror:-http://deb.debian.org/debian}
        work=$(mktemp -d "$cache/.rootfs-$suite-$hash.XXXXXX") || return 1
        echo "$test_name test: building the guest root with debootstrap ($mirror), about a minute" >&2
        if ! timeout --kill-after=20 600 debootstrap --variant=minbase --include="$guest_packages" \
                "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1; then
                tail -n 30 "$work/debootstrap.log" "$work/root/debootstrap/debootstrap.log" 2>/dev/null
                rm -rf "$work"
                return 1
        fi
        # Quiet boots: no login prompt on the read-only console, no package timers.
        for unit in console-getty.service getty@.service apt-daily.timer apt-daily-upgrade.timer \
                dpkg-db-backup.timer fstrim.timer e2scrub_all.timer; do
                ln -sf /dev/null "$work/root/etc/systemd/system/$unit"
        done
        rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* "$work/root/debootstrap"
        mv -T "$work/root" "$rootfs" && rm -rf "$work"
}
guest_rootfs() {
        local started
        hash=$(printf '%s\n' "$suite" "$guest_packages" "$ROOTFS_RECIPE" | sha256sum | cut -c1-16)
        rootfs=$cache/rootfs-$suite-$hash
        mkdir -p "$cache" || die "create the cache directory $cache"
        {
                flock -w 900 9 || die "lock $cache/lock"
                if [ ! -x "$rootfs/usr/lib/systemd/systemd" ]; then
                        started=$(date +%s)
                        build_rootfs || die "debootstrap the guest root ($suite: $guest_packages)"
                        echo "$test_name test: guest root built in $(($(date +%s) - started)) s: $rootfs" >&2
                fi
        } 9>"$cache/lock"
}

# ---------------------------------------------------------------------------------------------
# guest_boot SCRIPT [NSPAWN OPTION...]: boots the guest, which runs SCRIPT (bash) as
# hellod-test.service once it is up, then powers off. Inside: SCRIPT at /mnt/checks, this
# directory (guest-lib.sh) at /mnt/test, $tmp/out at /mnt/out (writable); the options add
# more (e.g. --bind-ro=DIR:/mnt/stage). Sets nspawn_status and elapsed.
#
# nspawn runs in a cgroup of this test's own (in every hierarchy the host has): with
# --keep-unit it leaves cgroups behind, and on failure the cgroup takes everything with it.
cgroup_parent() { # controller field of /proc/self/cgroup ('' for cgroup2) -> our cgroup there
        sed -n "s|^[0-9]*:$1:||p" /proc/self/cgroup | head -n 1
}
add_cgroup() { # mount point, pattern in /proc/self/cgroup
        local path
        path=$(cgroup_parent "$2")
        [ -n "$path" ] || return 0
        path=$1${path%/}/hellod-$test_name-test.$$
        mkdir "$path" || return 1
        cgroups+=("$path")
}
cgroup_fs() { stat -fc %T "$1" 2>/dev/null; }
guest_boot() {
        local script=$1 started cg
        shift
        if [ ${#cgroups[@]} -eq 0 ]; then
                if [ "$(cgroup_fs /sys/fs/cgroup)" = cgroup2fs ]; then
                        add_cgroup /sys/fs/cgroup '' || die "create a cgroup under /sys/fs/cgroup"
                else
                        [ "$(cgroup_fs /sys/fs/cgroup/unified)" = cgroup2fs ] &&
                                { add_cgroup /sys/fs/cgroup/unified '' ||
                                        die "create a cgroup under /sys/fs/cgroup/unified"; }
                        [ -d /sys/fs/cgroup/systemd ] &&
                                { add_cgroup /sys/fs/cgroup/systemd 'name=systemd' ||
                                        die "create a cgroup under /sys/fs/cgroup/systemd"; }
                fi
                [ ${#cgroups[@]} -gt 0 ] || die "find a cgroup hierarchy for the container"
        fi

        echo "$((n + 1))" >"$tmp/out/first-check"
        started=$(date +%s)
        (
                for cg in "${cgroups[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs" || exit 125; done
                SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec timeout --kill-after=20 300 systemd-nspawn --quiet --boot \
                        --register=no --keep-unit --volatile=overlay --private-network --console=read-only \
                        -D "$rootfs" --machine="hellod-$test_name-$$" \
                        --bind-ro="$guest_lib_dir:/mnt/test" --bind-ro="$script:/mnt/checks" \
                        --bind="$tmp/out:/mnt/out" \
                        --bind-ro="$guest_lib_dir/hellod-test.service:/etc/systemd/system/hellod-test.service" \
                        "$@" systemd.wants=hellod-test.service
        ) >"$tmp/console.log" 2>&1 &
        nspawn_pid=$!
        wait "$nspawn_pid"
        nspawn_status=$?
        nspawn_pid=
        elapsed=$(($(date +%s) - started))
}

# guest_verdict: the guest's log (without its own summary line, which the host's replaces) is
# printed and its counts added; its journal is shown when anything failed.
guest_verdict() {
        local status gp='' gf='' f
        status=$(cat "$tmp/out/status" 2>/dev/null)
        if [ -f "$tmp/out/guest.log" ]; then
                grep -v '^guest checks: ' "$tmp/out/guest.log"
                read -r gp gf < <(sed -n 's/^guest checks: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' \
                        "$tmp/out/guest.log" | tail -n 1)
                passed=$((passed + ${gp:-0})) failed=$((failed + ${gf:-0}))
                n=$((n + ${gp:-0} + ${gf:-0}))
        fi
        if [ -z "$status" ] || [ -z "$gp" ]; then
                not_ok "the guest ran its checks and reported (container exit status $nspawn_status after ${elapsed} s)" \
                        "console (last 40 lines):" "$(tail -n 40 "$tmp/console.log")"
        elif [ "$status" != 0 ] && [ "${gf:-0}" -eq 0 ]; then
                not_ok "the guest's checks exited with status $status"
        fi
        echo "# container: booted, checked and powered off in ${elapsed} s (exit status $nspawn_status)"
        if [ "$failed" -gt 0 ]; then
                for f in hellod-journal.txt journal.txt; do
                        [ -s "$tmp/out/$f" ] || continue
                        echo "# ---- guest $f (last 80 lines) ----"
                        tail -n 80 "$tmp/out/$f" | sed 's/^/# /'
                done
        fi
}
