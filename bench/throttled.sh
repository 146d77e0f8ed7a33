#!/usr/bin/env bash
# Runs a command with its reads from one block device limited to a given speed, as from a
# slower disk: a benchmark of this machine's page cache or fast virtual disk says little about
# a merge that reads models from an ordinary SSD or a network volume.
#
#   bench/throttled.sh MB_PER_S DEVICE COMMAND [ARGS...]
#   e.g. COLD=1 MERGEKIT=0 REPEAT=1 bench/throttled.sh 1000 /dev/vda bench/methods.sh 1 /tmp/soup-methods
#
# Needs root and a blkio (cgroup v1) or io (cgroup v2) controller. Only reads are limited, and
# only reads the command's processes issue: pages already in the page cache are not read again,
# so combine it with COLD=1 (bench/methods.sh drops the cache before every run).
set -euo pipefail

mbps=${1:?usage: bench/throttled.sh MB_PER_S DEVICE COMMAND [ARGS...]}
device=${2:?usage: bench/throttled.sh MB_PER_S DEVICE COMMAND [ARGS...]}
shift 2
(( $# > 0 )) || { echo "error: no command given; usage: bench/throttled.sh MB_PER_S DEVICE COMMAND [ARGS...]" >&2; exit 2; }
[[ -b $device ]] || { echo "error: $device is not a block device; give the disk the inputs are on (see lsblk)" >&2; exit 2; }
majmin=$(( 0x$(stat -c %t "$device") )):$(( 0x$(stat -c %T "$device") ))
bps=$(( mbps * 1000 * 1000 ))

group=model-soup-throttled-$$
if [[ -d /sys/fs/cgroup/blkio ]]; then
    dir=/sys/fs/cgroup/blkio/$group
    mkdir "$dir"
    echo "$majmin $bps" > "$dir/blkio.throttle.read_bps_device"
elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    dir=/sys/fs/cgroup/$group
    echo +io > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    mkdir "$dir"
    echo "$majmin rbps=$bps" > "$dir/io.max"
else
    echo "error: no blkio or io cgroup controller here; run without throttling" >&2
    exit 1
fi
# The group is removed once the command and its children have left it.
trap 'rmdir "$dir" 2>/dev/null || true' EXIT
echo "reads from $device ($majmin) limited to $mbps MB/s" >&2
sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' sh "$dir" "$@"
