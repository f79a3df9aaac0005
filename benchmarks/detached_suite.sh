#!/bin/bash
# On a GPU host reached by short calls (each call's command must return within minutes, the host stays up between):
#     bash benchmarks/detached_suite.sh                      # install the wheel folders that came along, then exit
#     JOBS="attn train_rest" bash benchmarks/detached_suite.sh   # start run_gpu_suite.sh detached, wait up to LIMIT s
#     bash benchmarks/detached_suite.sh                      # with RES's suite running: wait for it again
# Wheel folders (benchmarks/offline_wheels.sh) go into SITE with pip --target; the suite writes into RES, and on
# return the status, each log's last TAIL lines, and RES as OUT/res.tgz (when OUT is set) are handed back.
set -u
cd "$(dirname "$0")/.."
SITE=$(realpath -m "${SITE:-/tmp/site}") RES=$(realpath -m "${RES:-/tmp/res}")
running() { [ -f "$RES/pid" ] && kill -0 "$(cat "$RES/pid")" 2>/dev/null; }
install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }
if running; then
  echo "a suite is running: no installs under it"
else
  mkdir -p "$SITE"
  # the CuTe DSL puts its Python packages behind a .pth file, which only a site dir (not PYTHONPATH) reads
  echo "import site; site.addsitedir('$SITE')" >"$SITE/sitecustomize.py"
  for d in .whl .whl_ann; do ls $d/*.whl >/dev/null 2>&1 && install $d/*.whl && echo "installed $d"; done
  # the two halves come in separate calls (64 MiB each): the first is staged, the second joins and installs
  if [ -d .fa4_a ]; then mkdir -p /tmp/fa4 && cp .fa4_a/* /tmp/fa4/ && echo "staged .fa4_a"; fi
  if [ -f .fa4_b/libs_cu13.name ]; then
    mkdir -p /tmp/fa4 && cp .fa4_b/* /tmp/fa4/ && cd /tmp/fa4 || exit 1
    wheel=$(cat libs_cu13.name)
    cat libs_cu13.part.* >"$wheel" 2>/dev/null
    if [ "$(md5sum "$wheel" | cut -d' ' -f1)" = "$(cat libs_cu13.md5)" ]; then
      python3 -c "import cuda.bindings.driver" 2>/dev/null && rm -f cuda_bindings*.whl cuda_pathfinder*.whl
      python3 -c "import google.protobuf" 2>/dev/null && rm -f protobuf*.whl
      install ./*.whl && PYTHONPATH=$SITE python3 -c "import flash_attn.cute; print('flash-attn-4 importable')"
    else
      echo "flash-attn-4 skipped: the libs wheel's halves do not join (was .fa4_a sent in an earlier call?)"
    fi
    cd - >/dev/null
  fi
fi
if [ -n "${JOBS:-}" ]; then
  if running; then echo "a suite is already running"; else
    rm -rf "$RES" && mkdir -p "$RES"
    SITE=$SITE setsid nohup bash benchmarks/run_gpu_suite.sh "$RES" $JOBS >"$RES/suite.out" 2>&1 </dev/null &
    echo $! >"$RES/pid"
    echo "started: $JOBS"
  fi
elif [ ! -f "$RES/pid" ]; then exit 0
fi
end=$((SECONDS + ${LIMIT:-540}))
while running && [ $SECONDS -lt $end ]; do sleep 10; done
cat "$RES/status" 2>/dev/null
tail -n "${TAIL:-8}" "$RES/suite.out"  # where a suite that never started says why
# what a learning run has saved so far (its job copies the same when it ends): a lease may end before the job does
for name in learn learn_long; do
  grep -q "start $name\$" "$RES/status" 2>/dev/null &&
    bash benchmarks/collect_learn.sh "${LEARN_DIR:-/tmp/learn}${name#learn}" "$RES" $name
done
for f in "$RES"/*.log; do [ -f "$f" ] && { echo "== $f"; tail -n "${TAIL:-8}" "$f"; }; done
[ -n "${OUT:-}" ] && tar czf "$OUT/res.tgz" -C "$RES" .
exit 0
