#!/usr/bin/env bash
# Install the offline datasets the test suite reads, where this machine can.
# Fashion-MNIST comes from Debian's package (IDX files under /usr/share/datasets/fashion-mnist);
# without it the Fashion-MNIST tests skip, each naming this reason, so say so loudly here.
set -uo pipefail
dir=/usr/share/datasets/fashion-mnist
[ -d "$dir" ] && exit 0
why=""
if [ "$(id -u)" != 0 ]; then
  why="not root"
elif ! command -v apt-get >/dev/null; then
  why="no apt-get on this machine"
else
  echo "installing Debian's dataset-fashion-mnist (the Fashion-MNIST tests read it) ..."
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null; then
    exit 0
  fi
  why="apt-get install dataset-fashion-mnist failed"
fi
cat >&2 <<MSG
warning: Fashion-MNIST is not installed ($why), so its tests will be SKIPPED.
  Install it with: sudo apt-get install dataset-fashion-mnist   (files under $dir)
MSG
exit 0
