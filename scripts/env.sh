#!/usr/bin/env bash
# Set up (or reuse) mtp's virtual environment, with every domain's extra, then run a command in it.
#   bash scripts/env.sh test            install + run the test suite (what CI runs)
#   bash scripts/env.sh main            install + train and evaluate recipes/ett_itransformer.yaml
#   bash scripts/env.sh CMD [ARGS...]   install + run any command (e.g. mtp list tasks)
# The environment lives outside the clone, under ~/.cache/mtp/, keyed by a hash of the dependency spec
# (pyproject.toml's dependency tables and the pins below), so a fresh clone reuses it and a changed spec
# rebuilds it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

EXTRAS="all,test"
# torchaudio's compiled extension is built against one torch release, and the registry has no CPU build of
# that pair, so both come from the registry at the same version (a CUDA build; it runs on the CPU).
TORCH_SPEC="torch==2.11.0 torchaudio==2.11.0"
APT_PACKAGES="libusb-1.0-0"   # open3d-cpu loads libusb at import
NEEDED_GB=12                  # torch + its CUDA libraries unpacked, with room for pip's cache

spec="$(python3 - <<'PY'
import json, sys
try:
    import tomllib
except ImportError:  # Python 3.10: hash the whole file
    sys.stdout.write(open("pyproject.toml").read()); sys.exit()
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(json.dumps([p["dependencies"], p["optional-dependencies"]], sort_keys=True))
PY
)"
key="$(printf '%s\n%s %s %s\n' "$spec" "$EXTRAS" "$TORCH_SPEC" "$APT_PACKAGES" | sha256sum | cut -c1-16)"
venv="${MTP_VENV:-$HOME/.cache/mtp/venv-$key}"

missing_apt() {
  for pkg in $APT_PACKAGES; do dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg"; done
}
if [ -n "$(missing_apt)" ]; then
  echo "[env] installing Debian packages: $(missing_apt | tr '\n' ' ')" >&2
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq $(missing_apt) >/dev/null
fi

# One set-up at a time: two commands started together (a training and a test run) would otherwise reinstall the
# editable package over each other, and one of them finds the environment half-written.
parent="$(dirname "$venv")"
mkdir -p "$parent"
exec 9>"$parent/.$(basename "$venv").lock"
command -v flock >/dev/null && flock 9   # util-linux; without it, set-ups are not serialised
if [ ! -f "$venv/.complete" ]; then
  free_gb="$(df -P -BG "$parent" | awk 'NR == 2 {sub("G", "", $4); print $4}')"
  if [ "$free_gb" -lt "$NEEDED_GB" ]; then
    echo "[env] $parent has ${free_gb} GB free; the environment needs about $NEEDED_GB GB" >&2
    exit 1
  fi
  echo "[env] building $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip "setuptools>=77,<82" wheel  # editable installs reuse them
  # One resolve with torch pinned, so no extra can pull in another torch build.
  "$venv/bin/python" -m pip install -q $TORCH_SPEC -e ".[$EXTRAS]"
  touch "$venv/.complete"
else
  # The editable install must point at this clone, wherever it is (pip's output only when it fails).
  if ! log="$("$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1)"; then
    echo "$log" >&2
    exit 1
  fi
fi
exec 9>&-   # releases the lock; the command below does not hold it
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
# Real data and official weights sit in ../shared beside the clone (see README, "Data and weights").
export MTP_DATA_DIR="${MTP_DATA_DIR:-$(cd "$root/.." && pwd)/shared/data}"
export MTP_WEIGHTS_DIR="${MTP_WEIGHTS_DIR:-$(cd "$root/.." && pwd)/shared/weights}"

case "${1:-test}" in
  test) shift || true; exec python -m pytest -q "$@" ;;
  main) shift; exec mtp run recipes/ett_itransformer.yaml --overwrite "$@" ;;
  *) exec "$@" ;;
esac
