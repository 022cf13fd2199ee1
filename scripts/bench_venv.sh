# Sourced by the benchmark environment scripts (bench_env.sh, forecast_peer_env.sh): build a venv once with
# the given pinned packages, reuse it afterwards with mtp installed editable (no deps) from this clone, and
# export what the benchmarks need. Caller sets: root, label, venv, NEEDED_GB, and the packages as arguments.
#   build_bench_venv PACKAGE_SPEC...
build_bench_venv() {
  if [ ! -f "$venv/.complete" ]; then
    local parent free_gb
    parent="$(dirname "$venv")"
    mkdir -p "$parent"
    free_gb="$(df -P -BG "$parent" | awk 'NR == 2 {sub("G", "", $4); print $4}')"
    df -h "$parent" >&2
    if [ "$free_gb" -lt "$NEEDED_GB" ]; then
      echo "[$label] $parent has ${free_gb} GB free; the environment needs about $NEEDED_GB GB" >&2
      exit 1
    fi
    echo "[$label] building $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    # pyproject.toml's SPDX licence string needs setuptools>=77 for the editable installs (torch caps it <82).
    "$venv/bin/python" -m pip install -q --upgrade pip "setuptools>=77,<82" wheel
    # One resolve, everything that matters pinned, so no package can pull in another torch build.
    "$venv/bin/python" -m pip install -q "$@"
    "$venv/bin/python" -m pip install -q --no-deps -e "$root"
    touch "$venv/.complete"
  else
    # The editable install must point at this clone, wherever it is (pip's output only when it fails).
    local log
    if ! log="$("$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" 2>&1)"; then
      echo "$log" >&2
      exit 1
    fi
  fi
  export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv" CUDA_VISIBLE_DEVICES=""
  export MTP_DATA_DIR="${MTP_DATA_DIR:-$(cd "$root/.." && pwd)/shared/data}"
  export MTP_WEIGHTS_DIR="${MTP_WEIGHTS_DIR:-$(cd "$root/.." && pwd)/shared/weights}"
}
