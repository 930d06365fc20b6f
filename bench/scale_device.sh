#!/usr/bin/env bash
# bench.scale at the aim's scale on the lent GPU machine (issue 14): 16 cores instead of this machine's 2, so
# the driver, Ray's processes and the 64 trial processes stop taking each other's cores. That machine has
# Python 3.12, torch and pyarrow but neither Ray nor Optuna nor open_clip, and no network: `pack` (here)
# installs what it lacks for CPython 3.12 into one xz tarball under the wheel limit of a call (Ray's Java
# jar and the dashboard's web client are left out: a simulated cluster uses neither); `run` (there, with
# .devsite carried) unpacks it into /tmp/site and runs `python3 -m bench.scale` with the given flags.
#
#   bash bench/scale_device.sh pack                       # here: .devsite/site.tar.xz (~34 MB)
#   bash bench/scale_device.sh run --nodes 8 --gpus-per-node 8 --trials 80 --trial-s 20 ...   # there
#
# A call runs at most 600 s and returns a table only if the run ends in it: `run` adds `--deadline 480
# --progress 30` unless a --deadline is given, so the sweep is cut in time and tabulated (bench/watch.py).
# Check first, here: the same flags with --plan-only print --plan's predicted wall and whether the deadline
# cuts the run (a call also spends ~60 s before the sweep starts and ~60 s after the cut). Seen on 2026-12-04:
# 13 x 80 trials at --trial-s 90 cut at 470 s gave the steady state (docs/speed.md); 13 x 16 trials at
# --trial-s 40, guessed to end in ~200 s, was planned at 685 s and was cut.
#
# The device tool's call: command "bash bench/scale_device.sh run ...", carry [".devsite"]; the log comes
# back as $OUT/scale.log. .devsite/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=.devsite/site.tar.xz

case "${1:-}" in
pack)
  # versions: constraints.txt's where it pins them, else what pip resolved for ray[tune,train] + optuna +
  # open_clip_torch on CPython 3.12 (2026-12-04), less what the machine's image already has
  pkgs=(ray==2.60.0 optuna==5.0.0 open_clip_torch==3.3.0 alembic==1.20.1 Mako==1.4.3 SQLAlchemy==2.1.9
        colorlog==6.12.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        tensorboardX==2.6.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
        rpds-py==2026.9.1 ftfy==6.3.1 wcwidth==0.9.4)
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --target "$tmp/site" "${pkgs[@]}" 2>&1 | { grep -vE '^WARNING: (Location|Running pip)' || true; }
  rm -rf "$tmp/site/ray/jars" "$tmp/site/ray/dashboard/client/build" "$tmp/site/bin"
  mkdir -p .devsite
  tar -C "$tmp/site" -cf - . | xz -9 -T0 > "$SITE"
  ls -la "$SITE"
  ;;
run)
  shift
  case " $* " in *" --deadline "*) ;; *) set -- "$@" --deadline 480 --progress 30 ;; esac
  out=${OUT:-/tmp}
  mkdir -p /tmp/site
  tar -C /tmp/site -xJf "${DEVSITE:-$SITE}"
  ulimit -n 65536 2>/dev/null || true      # 9 raylets and 64 trial processes hold many sockets
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 \
         RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled RAY_AIR_NEW_OUTPUT=0
  echo "== $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(python3 -V)"
  python3 -c "import ray, optuna, open_clip, torch; print('ray', ray.__version__, 'optuna', optuna.__version__,
              'open_clip', open_clip.__version__, 'torch', torch.__version__)"
  python3 -m bench.scale "$@" 2>&1 | tee "$out/scale.log"
  ;;
*)
  echo "usage: bash bench/scale_device.sh pack | run [bench.scale flags]" >&2
  exit 2
  ;;
esac
