#!/bin/bash
# On a GPU host reached by short calls (each call's command must return within minutes, the host stays up between):
#     bash benchmarks/detached_suite.sh                      # install the wheel folders that came along, then exit
#     JOBS="attn train_rest" bash benchmarks/detached_suite.sh   # start run_gpu_suite.sh detached, wait up to LIMIT s
#     bash benchmarks/detached_suite.sh                      # with RES's suite running: wait for it again
# Wheel folders (benchmarks/offline_wheels.sh) go into SITE with pip --target; the suite writes into RES, and on
# return the status, each log's last TAIL lines, and RES as OUT/res.tgz (when OUT is set) are handed back.
set -u
cd "$(dirname "$0")/.."
SITE=${SITE:-/tmp/site} RES=${RES:-/tmp/res}
mkdir -p "$SITE"
# the CuTe DSL puts its Python packages behind a .pth file, which only a site dir (not PYTHONPATH) reads
echo "import site; site.addsitedir('$SITE')" >"$SITE/sitecustomize.py"
install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }
for d in .whl .whl_ann; do ls $d/*.whl >/dev/null 2>&1 && install $d/*.whl && echo "installed $d"; done
if [ -d .fa4_a ]; then mkdir -p /tmp/fa4 && cp .fa4_a/* /tmp/fa4/ && echo "staged .fa4_a"; fi
if [ -f .fa4_b/libs_cu13.name ]; then
  cp .fa4_b/* /tmp/fa4/ && cd /tmp/fa4 || exit 1
  cat libs_cu13.part.* >"$(cat libs_cu13.name)" && rm libs_cu13.part.*
  [ "$(md5sum "$(cat libs_cu13.name)" | cut -d' ' -f1)" = "$(cat libs_cu13.md5)" ] || { echo "libs_cu13 wheel corrupt"; exit 1; }
  python3 -c "import cuda.bindings.driver" 2>/dev/null && rm -f cuda_bindings*.whl cuda_pathfinder*.whl
  python3 -c "import google.protobuf" 2>/dev/null && rm -f protobuf*.whl
  install /tmp/fa4/*.whl; cd - >/dev/null
  PYTHONPATH=$SITE python3 -c "import flash_attn.cute; print('flash-attn-4 importable')"
fi
if [ -n "${JOBS:-}" ]; then
  if pgrep -f run_gpu_suite.sh >/dev/null; then echo "a suite is already running"; else
    rm -rf "$RES" && mkdir -p "$RES"
    SITE=$SITE setsid nohup bash benchmarks/run_gpu_suite.sh "$RES" $JOBS >"$RES/suite.out" 2>&1 </dev/null &
    echo "started: $JOBS"
  fi
elif [ ! -f "$RES/status" ]; then exit 0
fi
end=$((SECONDS + ${LIMIT:-540}))
until grep -q "all done" "$RES/status" 2>/dev/null || [ $SECONDS -ge $end ]; do sleep 10; done
cat "$RES/status" 2>/dev/null
for f in "$RES"/*.log; do [ -f "$f" ] && { echo "== $f"; tail -n "${TAIL:-8}" "$f"; }; done
[ -n "${OUT:-}" ] && tar czf "$OUT/res.tgz" -C "$RES" .
exit 0
