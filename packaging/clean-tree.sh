# shellcheck shell=bash
# packaging/clean-tree.sh: sourced by build-deb and build-rpm.
#
# clean_tree TOP DEST: copies the source tree TOP into DEST (which must exist) as a release
# would hold it: what git tracks, as it is in the working tree, plus new files git does not
# ignore (so uncommitted work is built, build directories are not); files deleted but not
# yet committed are left out. Outside a git checkout (an unpacked tarball): everything but
# .git and build output. Fails when any step of the copy does (callers use ||, where set -e
# does not reach; pipefail does).
clean_tree() {
        local top=$1 dest=$2
        if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
                git -C "$top" ls-files -z --cached --others --exclude-standard |
                        (cd "$top" && while IFS= read -r -d '' f; do
                                if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
                        done) |
                        tar -C "$top" --null --no-recursion -T - -cf - | tar -C "$dest" -xf - || return 1
        else
                tar -C "$top" --exclude=.git --exclude='./build' --exclude='./build-*' \
                        --exclude='./obj-*' -cf - . | tar -C "$dest" -xf - || return 1
        fi
        [ -f "$dest/meson.build" ] && [ -d "$dest/packaging" ]
}
