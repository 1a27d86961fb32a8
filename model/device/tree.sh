#!/bin/bash
# The device tool sends the whole working tree (tracked files, untracked ones git does not ignore, and
# the carried paths) and refuses more than 64 MiB. Ours is over that by itself: 77 MiB tracked, 47 of it
# the ONNX graphs the server runs, which a training run never reads; with .data (25 MiB) carried, 102.
#   bash model/device/tree.sh size [CARRY…]     what would travel, in MiB, and whether it fits
#   bash model/device/tree.sh slim [CARRY…]     untrack the ONNX graphs for a device call (still on disk), and
#                                               the release checkpoints the run does not start from
#   bash model/device/tree.sh restore           track them again: the tree as it was
# slim takes them out of git's index and lists them in .git/info/exclude, so they neither travel nor
# vanish from this checkout; while it lasts a pre-commit hook refuses every commit (one would delete
# the release's graphs from history's next state). Nothing else is touched. The checkpoint kept is
# $INIT's, as device/train.sh reads it (default: release 6's model/release/infdit-s4.ckpt.pt; release 7's
# is INIT=model/release/infdit-s4-d3.ckpt.pt, release 8's model/release/infdit-s4-d2j.ckpt.pt), with every base's
# and restorer's (release 8 trains over its own: --base model/release/infdit-s4-d2j.base.ckpt.pt).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"   # the checkout it is run in, as git itself
LIMIT=$((64 << 20))
GIT_DIR=$(git rev-parse --absolute-git-dir)
LIST=$GIT_DIR/infdit-device-slim          # the paths slim untracked, one per line
EXCLUDE=$GIT_DIR/info/exclude
HOOK=$GIT_DIR/hooks/pre-commit
BEGIN="# infdit device_tree.sh slim: begin"; END="# infdit device_tree.sh slim: end"

travel_bytes() {   # tracked files present on disk + untracked ones not ignored + the carried paths
  { git ls-files -z --cached --others --exclude-standard; for c in "$@"; do find "$c" -type f -print0; done; } |
    xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'
}

report() {
  local b; b=$(travel_bytes "$@")
  awk -v b="$b" -v l="$LIMIT" 'BEGIN{printf "would travel: %.1f MiB of the device tool'"'"'s %d MiB%s\n", b / 1048576, l / 1048576, (b > l ? " — too large" : "")}'
  [ "$b" -le "$LIMIT" ]
}

carried_exist() { for c in "$@"; do [ -e "$c" ] || { echo "carry path $c: not found" >&2; exit 2; }; done; }

case "${1:-}" in
  size)
    shift; carried_exist "$@"
    report "$@" ;;
  slim)
    shift; carried_exist "$@"
    [ -e "$LIST" ] && { echo "already slim (listed in $LIST); run: bash model/device/tree.sh restore" >&2; exit 1; }
    KEEP=${INIT:-model/release/infdit-s4.ckpt.pt}
    # every base's and restorer's checkpoint travels (under 2 MB each): a run names its base with --base
    { git ls-files -z -- '*.onnx'; git ls-files -z -- 'model/release/*.ckpt.pt'; } | tr '\0' '\n' |
      grep -v -x -F -e "$KEEP" | grep -v -E '\.(base|restore)\.ckpt\.pt$' > "$LIST" || true
    [ -s "$LIST" ] || { rm -f "$LIST"; echo "no tracked ONNX graphs to leave behind" >&2; exit 1; }
    mkdir -p "$(dirname "$EXCLUDE")" "$(dirname "$HOOK")"
    { echo "$BEGIN"; sed 's|^|/|' "$LIST"; echo "$END"; } >> "$EXCLUDE"
    tr '\n' '\0' < "$LIST" | xargs -0 git rm -q --cached --
    [ -e "$HOOK" ] && mv "$HOOK" "$HOOK.before-slim"
    printf '#!/bin/sh\necho "the ONNX graphs (and checkpoints) are untracked for a device call: bash model/device/tree.sh restore first" >&2\nexit 1\n' > "$HOOK"
    chmod +x "$HOOK"
    echo "untracked $(wc -l < "$LIST") ONNX graphs and checkpoints other than $KEEP (still on disk) until: bash model/device/tree.sh restore"
    report "$@" || { echo "still too large: restoring" >&2; bash "$0" restore; exit 1; } ;;
  restore)
    [ -e "$LIST" ] || { echo "not slim: nothing to restore"; exit 0; }
    tr '\n' '\0' < "$LIST" | xargs -0 git reset -q --
    sed -i "/^$BEGIN\$/,/^$END\$/d" "$EXCLUDE"
    rm -f "$HOOK"; [ -e "$HOOK.before-slim" ] && mv "$HOOK.before-slim" "$HOOK"
    rm -f "$LIST"
    echo "the ONNX graphs are tracked again" ;;
  *)
    echo "usage: bash model/device/tree.sh size|slim [CARRY…] | restore" >&2; exit 2 ;;
esac
