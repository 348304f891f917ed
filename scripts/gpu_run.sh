#!/usr/bin/env bash
# One device call: GPU tests, step costs, and replayed-acceptance benchmarks. Output under $OUT.
# Carries .whl (scripts/fetch_device_wheels.sh fetches it here first).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# inductor's compile cache, per GPU model (its keys hold the device's name): a cold machine compiles the 7B in ~110 s.
# The last call's cache comes back as $OUT/inductor_<GPU>.tgz.NN (parts of 15 MiB: files from $OUT are at most 16 MiB
# each, 8 in all); carried in compile_cache/ (gitignored), it is unpacked first. Its keys hash the code compiled, so a
# cache from another tree is only ever missed, never misused.
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '_')
INDUCTOR=/tmp/torchinductor_$(whoami)
if ls compile_cache/inductor_"$GPU_NAME".tgz.* >/dev/null 2>&1; then
  mkdir -p "$INDUCTOR" && cat compile_cache/inductor_"$GPU_NAME".tgz.* | tar -xz -C "$INDUCTOR" \
    && echo "compile cache: unpacked $(du -sh "$INDUCTOR" | cut -f1)"
fi
save_cache() {  # at most two parts (30 MiB) come back
  [ -d "$INDUCTOR" ] || return 0
  rm -f "$OUT/inductor_$GPU_NAME.tgz."*
  tar -czf /tmp/inductor.tgz -C "$INDUCTOR" . 2>/dev/null || return 0
  if [ "$(stat -c %s /tmp/inductor.tgz)" -le 31457280 ]; then split -b 15M -d /tmp/inductor.tgz "$OUT/inductor_$GPU_NAME.tgz."
  else echo "compile cache: $(du -h /tmp/inductor.tgz | cut -f1) is over 30 MiB, not kept"; fi
}
# A call cut by its limit never reaches the save at the end (sc3 lost a 0.5B compile that way), so the cache is
# also saved CACHE_AT seconds in (default 560, before the usual 600 s limit; 0: only at the end). Its output goes to
# /dev/null so that no open descriptor holds the call after the script ends.
EARLY_SAVE=
if [ "${CACHE_AT:-560}" -gt 0 ]; then
  (exec >/dev/null 2>&1; trap 'kill $S; exit' TERM; sleep "${CACHE_AT:-560}" & S=$!; wait $S && save_cache) &
  EARLY_SAVE=$!
fi
bench() {  # name, extra args
  local name=$1; shift
  timeout ${BENCH_TIMEOUT:-170} python3 -m specdec bench --device cuda:0 --dtype bfloat16 --num-prompts 3 \
    --max-new-tokens 128 --repeats 2 --warmup 1 --max-len 1024 --quiet --report-greedy-mismatch \
    --json "$OUT/$name.json" "$@" 2>&1 | grep -v -i "warn.*deprecat" | tail -14 | tee "$OUT/$name.txt"
}
D=random:qwen2.5-0.5b
case "${PART:-A}" in
A)  # GPU tests, per-step costs, 0.5B -> 7B replayed acceptance
  python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
  timeout 260 python3 scripts/gpu_steps.py qwen2.5-0.5b qwen2.5-7b qwen2.5-32b 2>&1 | grep -v Warning | tee "$OUT/steps.txt"
  bench a08 --target random:qwen2.5-7b --draft $D --replay-alpha 0.8 --k 4 --modes target-only,spec
  bench a09 --target random:qwen2.5-7b --draft $D --replay-alpha 0.9 --k 6 --modes target-only,spec ;;
B)  # 0.5B -> 32B replayed acceptance, a useless draft with adaptive K, and the services with a planted
    # (perfect) random draft: every mode including gRPC, to measure the services' own per-cycle cost
  BENCH_TIMEOUT=200 bench b08 --target random:qwen2.5-32b --draft $D --replay-alpha 0.8 --k 4 --modes target-only,spec
  BENCH_TIMEOUT=200 bench b09 --target random:qwen2.5-32b --draft $D --replay-alpha 0.9 --k 6 --modes target-only,spec
  BENCH_TIMEOUT=150 bench b00 --target random:qwen2.5-32b --draft $D --replay-alpha 0.0 --k 4 --adaptive-k --modes target-only,spec ;;
C)  # a planted random draft agrees with the random target: acceptance ~1 through every mode
  bench svc --target random:qwen2.5-7b --draft $D --k 4 --modes target-only,spec,services ;;
D)  # the same without overlap: services minus spec = the services' own cost per cycle
  bench svc_seq --target random:qwen2.5-7b --draft $D --k 4 --no-overlap --modes target-only,spec,services
  bench svc_32b --target random:qwen2.5-32b --draft $D --k 4 --no-overlap --modes target-only,spec,services ;;
E)  # two GPUs (nvidia-h200-x2): target on cuda:0, draft on cuda:1; 0.5B -> 32B replayed, overlap off vs on
    # (on = pre-drafting every likely outcome: --predraft auto is on for a GPU draft), then the GPU tests
  BENCH_TIMEOUT=200 bench e09 --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.9 --k 6 \
    --modes target-only,spec,spec-overlap
  BENCH_TIMEOUT=170 bench e08 --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.8 --k 4 \
    --modes target-only,spec,spec-overlap
  BENCH_TIMEOUT=120 bench e08g --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.8 --k 4 \
    --predraft off --modes spec-overlap
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt" ;;
F)  # two GPUs: the services with pre-drafting (planted 7B: a real draft-model proposer), α = 0.9 with the
    # plain "all accepted" guess, and a useless draft (α = 0) with adaptive K
  BENCH_TIMEOUT=200 bench fsvc --draft-device cuda:1 --target random:qwen2.5-7b --draft $D --k 4 \
    --modes target-only,spec,spec-overlap,services
  BENCH_TIMEOUT=120 bench e09g --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.9 --k 6 \
    --predraft off --modes spec-overlap
  BENCH_TIMEOUT=150 bench f00 --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.0 --k 4 \
    --adaptive-k --modes target-only,spec-overlap ;;
G)  # two GPUs, `--predraft auto` choosing per block between branches and the plain guess (run once with a
    # first, threshold version and once with the cost model; a paused draft keeps its cache caught up): the draft-bound 7B case, α = 0.9 and α = 0
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
  BENCH_TIMEOUT=200 bench gsvc --draft-device cuda:1 --target random:qwen2.5-7b --draft $D --k 4 \
    --modes target-only,spec,spec-overlap,services
  BENCH_TIMEOUT=130 bench g09 --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.9 --k 6 \
    --modes target-only,spec-overlap
  BENCH_TIMEOUT=130 bench g00 --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.0 --k 4 \
    --adaptive-k --modes target-only,spec-overlap ;;
H)  # one GPU: replayed acceptance through the services (the draft service replays the bench's references),
    # next to in process: a useless draft (α = 0) with adaptive K, then α = 0.9. Draft and target share the GPU,
    # so the services draft without overlap (shared-GPU rule) and in process runs `spec` (overlap off) too.
  BENCH_TIMEOUT=230 bench h00 --target random:qwen2.5-32b --draft $D --replay-alpha 0.0 --k 4 --adaptive-k \
    --modes target-only,spec,services
  BENCH_TIMEOUT=230 bench h09 --target random:qwen2.5-32b --draft $D --replay-alpha 0.9 --k 6 \
    --modes target-only,spec,services ;;
I)  # two GPUs (nvidia-h200-x2): replayed acceptance through the services with the draft on its own GPU, next
    # to in-process overlap (GIL contention between its two threads) and overlap off: the ≥ 90%-of-analytic bar
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
  BENCH_TIMEOUT=260 bench i09 --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.9 --k 6 \
    --modes target-only,spec,spec-overlap,services
  BENCH_TIMEOUT=260 bench i08 --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.8 --k 4 \
    --modes target-only,spec,spec-overlap,services
  BENCH_TIMEOUT=200 bench i00 --draft-device cuda:1 --target random:qwen2.5-32b --draft $D --replay-alpha 0.0 --k 4 \
    --adaptive-k --modes target-only,spec-overlap,services ;;
L)  # one GPU: GPU tests, then the batched services under 1-64 concurrent clients (random 7B target, planted 0.5B
    # draft on the same GPU, 128 tokens): target-only and speculation (adaptive K), then today's unbatched target
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py ${UNIT_TESTS:-} 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
  timeout ${LOAD_TIMEOUT:-400} python3 scripts/gpu_load.py --configs ${LOAD_CONFIGS:-target-only,spec} \
    --concurrency ${LOAD_LEVELS:-1,4,16,64} 2>"$OUT/load_${LOAD_NAME:-l}.log" | tee "$OUT/load_${LOAD_NAME:-l}.jsonl" ;;
M)  # issue 18, two GPUs (nvidia-h200-x2): target on cuda:0, draft service on cuda:1, batched, under 1-64 clients:
    # target-only, speculation with and without overlap, replayed acceptance 0.8 and 0 (adaptive K), 7B and 32B.
    # DRAFT_DEVICE=cuda:0 checks the same part end to end on one GPU (TARGETS, ALPHAS, LEVELS narrow it).
  for T in ${TARGETS:-7b 32b}; do for A in ${ALPHAS:-0.8 0}; do
    timeout ${SWEEP_TIMEOUT:-900} python3 -m specdec bench --concurrency ${LEVELS:-1,4,16,64} --device cuda:0 \
      --draft-device ${DRAFT_DEVICE:-cuda:1} --dtype bfloat16 --max-len 1024 --max-new-tokens 128 \
      --target random:qwen2.5-$T --draft $D --replay-alpha $A --modes target-only,services,services-no-overlap \
      --report-greedy-mismatch \
      --json "$OUT/issue18_${T}_a$A.json" --plot "$OUT/issue18_${T}_a$A.png" 2>"$OUT/issue18_${T}_a$A.log" \
      | tee "$OUT/issue18_${T}_a$A.txt"
  done; done ;;
S)  # one GPU: the single-session re-check after batching (issue 17): 32B, replayed 0.9, K = 6, services vs target-only
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-300} bench s09 --target random:qwen2.5-32b --draft $D --replay-alpha 0.9 --k 6 \
    --modes target-only,services ;;
N)  # one GPU, issue 17: the batched engines in process (engine-*: no gRPC, no orchestrator) next to the services'
    # target-only under 1-64 clients, random 7B target + planted 0.5B draft on cuda:0, replayed acceptance 0.8
    # (ALPHAS="0.8 0" adds a useless draft; MODES adds services, e.g. services-own-draft; GPU_TESTS="-k EXPR" first
    # runs those GPU tests; K (default 4) and FIXED_K=--fixed-k: draft exactly K; STREAM_INTERVALS="1 8": one sweep
    # per stream interval, back to back; default auto; ENGINE_PROCESS="off on": the services' targets without, then with
    # their engine in a child process (serve --engine-process off / on; default auto: on for cuda), back to back; ROUNDS: requests per client (default 6: at 2, a 64-client
    # point measured ~3 s, mostly ramp and tail); EXTRA: more bench flags, e.g. --no-compile; BOUNDS_OF=FILE: no
    # mode, FILE's points (a sweep of the same settings cut before its bounds, carried in the tree) get their
    # exactness check and bounds: `bench --bounds-only`); TREES="base this": each sweep first on a base tree (as for
    # PART=Z: carry base_tree.tgz), then on this one, side by side (files named ..._base, ..._this); REPLAY=FILE: the
    # target's continuations kept there (`bench --replay-references`): a call with target-only writes them (give
    # $OUT/replay.jsonl to bring them back), a later one carries them (in compile_cache/, gitignored) and runs
    # MODES=services-own-draft alone, where one call is too short for both deployments' compile and capture (since
    # stop 61's static sizes one call holds both at 16 and 64 clients with their bounds: 357 s from an empty cache, sd4)
  if [ -n "${GPU_TESTS:-}" ]; then
    timeout ${TESTS_TIMEOUT:-150} python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py $GPU_TESTS 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
  fi
  case " ${TREES:-} " in *" base "*) mkdir -p /tmp/base && tar -xzf base_tree.tgz -C /tmp/base || exit 1 ;; esac
  for EP in ${ENGINE_PROCESS:-auto}; do for SI in ${STREAM_INTERVALS:-auto}; do for A in ${ALPHAS:-0.8}; do for T in ${TREES:-this}; do
    NAME=engine_a${A}_s$SI$([ "$EP" = on ] && echo _ep)$([ "$EP" = off ] && echo _one)${TREES:+_$T}
    ROOT=$PWD; [ "$T" = base ] && ROOT=/tmp/base
    [ -z "${BOUNDS_OF:-}" ] || cp "$BOUNDS_OF" "$OUT/$NAME.json"
    (cd "$ROOT" && PYTHONPATH=/tmp/site:$ROOT timeout ${SWEEP_TIMEOUT:-540} python3 -m specdec bench ${BOUNDS_OF:+--bounds-only} \
      --concurrency ${LEVELS:-1,16,64} --device cuda:0 --dtype bfloat16 --max-len 1024 --max-new-tokens 128 \
      --target random:qwen2.5-7b --draft $D --replay-alpha $A --k ${K:-4} \
      --modes ${MODES:-target-only,engine-target-only,engine-spec} --report-greedy-mismatch $([ "$SI" = auto ] || echo --stream-interval $SI) \
      --engine-process $EP --rounds ${ROUNDS:-6} --json "$OUT/$NAME.json" --log-level info ${FIXED_K:-} ${EXTRA:-} \
      ${REPLAY:+--replay-references $REPLAY} \
      2>"$OUT/$NAME.log" | tee "$OUT/$NAME.txt")
    # the engine's 5 s windows at load side by side (rows, where the missing ones are, the drafted cycle's parts)
    python3 -m specdec.tools.engine_log "$OUT/$NAME.log" --min-rows 12 > "$OUT/$NAME.windows.md" 2>&1
  done; done; done; done ;;
Q)  # one GPU, issue 17: where the target process's time goes at 64 clients (own draft's plain cycles take twice
    # target-only's, calls g1-g3): py-spy (carried as a wheel) over a sweep, uncompiled so that the services start
    # in seconds (COMPILED=1: compiled as served, carry compile_cache), then the engine threads' samples by what they
    # were doing (scripts/profile_summary.py). GIL=1: only the threads holding the interpreter's lock are sampled, and
    # every thread's functions are summed per process. K (default 4), FIXED_K=--fixed-k: draft exactly K
  timeout ${SWEEP_TIMEOUT:-400} /tmp/site/bin/py-spy record --nonblocking --subprocesses --threads \
    $([ -n "${GIL:-}" ] && echo --gil || echo --idle) -r 100 --format raw \
    -o "$OUT/profile.txt" -- python3 -m specdec bench --concurrency ${LEVELS:-64} --device cuda:0 --dtype bfloat16 \
    --max-len 1024 --max-new-tokens 128 --target random:qwen2.5-7b --draft $D --replay-alpha ${ALPHAS:-0} \
    --k ${K:-4} ${FIXED_K:-} --modes ${MODES:-target-only,services-own-draft} --rounds ${ROUNDS:-6} \
    $([ -n "${COMPILED:-}" ] || echo --no-compile) --quiet \
    --json "$OUT/profiled.json" 2>"$OUT/profiled.log" | tee "$OUT/profiled.txt"
  python3 scripts/profile_summary.py "$OUT/profile.txt" --top ${TOP:-25} ${GIL:+--functions} | tee "$OUT/profile_summary.txt" ;;
R)  # one GPU, issue 17: what the own draft's phases cost, catch-ups included (1 / 16 / 64 rows, 16-512 tokens
    # behind, compiled as the services run it): a probe's one-row catch-up took ~130 ms in calls g4-g5
    # (PROFILE=1: only one-row catch-ups under torch.profiler, and dynamo's counters)
  timeout ${STEPS_TIMEOUT:-300} python3 scripts/gpu_own_draft_steps.py $D ${K:-4} ${PROFILE:+--profile} 2>&1 \
    | grep -v Warning | tee "$OUT/own_draft_phases${PROFILE:+_profile}.txt" ;;
J)  # one GPU, issue 17: graph steps over the span of the cache their rows reach (8c71888): their GPU test first, then
    # the batched-graph and own-draft ones (the last two took more than 150 s and 170 s in call j7: one call for them)
  timeout ${TESTS_TIMEOUT:-560} python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py \
    -k "span or batched_graph or own_draft_with" --durations=5 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt" ;;
K)  # one GPU, issue 17: a graph step at a short and at a long context (a 256-column span against the whole cache),
    # the 0.5B and the 7B
  timeout ${STEPS_TIMEOUT:-500} python3 scripts/gpu_span_steps.py 2>&1 \
    | grep -v -i "warn\|online softmax\|split the reduction\|important use case\|^$" | tee "$OUT/span_steps.txt" ;;
U)  # one GPU, issue 17: where a drafted cycle's time goes on the H200's host: the span graphs' GPU test, then the engine in
    # process (random 7B + planted 0.5B own draft, compiled, graphs) at 16 and 64 clients, target-only, K = 2 and adaptive
    # K, under py-spy (the engine thread's samples by what it did: scripts/profile_summary.py). GPU_TESTS: which GPU tests
    # first (a -k expression); EARLY=both: each drafting configuration with the early verify (and draft ahead) on, then
    # off; EARLY=each: both on, the early verify alone, neither; EXTRA: more flags, e.g. --no-compile (a cold machine
    # compiled and captured both models for over 360 s in call ca2, and took no sample)
  timeout ${TESTS_TIMEOUT:-90} python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py -k "${GPU_TESTS:-span}" 2>&1 \
    | tail -60 | tee "$OUT/gpu_tests.txt"
  timeout ${STEPS_TIMEOUT:-420} /tmp/site/bin/py-spy record --nonblocking --threads --idle -r 200 --format raw \
    -o "$OUT/host_profile.txt" -- python3 scripts/engine_host_time.py --device cuda:0 --dtype bfloat16 \
    --target random:qwen2.5-7b --draft $D --max-len 512 --clients ${LEVELS:-16,64} --k ${KS:-0,2,a4} --tokens 128 \
    --repeats ${REPEATS:-2} --early-verify ${EARLY:-default} --log ${EXTRA:-} 2>"$OUT/host_time.log" | tee "$OUT/host_time.txt"
  python3 scripts/profile_summary.py "$OUT/host_profile.txt" --depth 3 --top 40 | tee "$OUT/host_profile_summary.txt" ;;
V)  # one GPU, issue 17: where the device waits for its host. The GPU tests named by GPU_TESTS (default: the launch
    # that must not wait for the device, and the early verify's), then the engine in process (random 7B + planted 0.5B
    # own draft, compiled, graphs) at LEVELS clients, target-only and K = 2, each run traced (torch.profiler, every
    # thread; traces stay on the device) and its device idle gaps told by what ended them, and the syncs the host
    # waited in (specdec.tools.device_gaps). SAMPLED=1: every request sampled (temperature 0.7, top-p 0.95)
  timeout ${TESTS_TIMEOUT:-150} python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py \
    -k "${GPU_TESTS:-launches_steps or drafted_tokens}" 2>&1 | tail -30 | tee "$OUT/gpu_tests.txt"
  timeout ${STEPS_TIMEOUT:-400} python3 scripts/engine_host_time.py --device cuda:0 --dtype bfloat16 \
    --target random:qwen2.5-7b --draft $D --max-len 512 --clients ${LEVELS:-16,64} --k ${KS:-0,2} --tokens 128 \
    --repeats 1 --trace /tmp/traces --log ${SAMPLED:+--temperature 0.7 --top-p 0.95} 2>"$OUT/gaps.log" \
    | tee "$OUT/gaps.txt" ;;
Y)  # one GPU, issue 17: a sampled cycle's own device work at Qwen's vocabulary, apart from the forwards (processing,
    # nucleus, draws, a verify's device outcome and host verify; peaked and wide distributions, ROWS rows, K = 4)
  timeout ${STEPS_TIMEOUT:-200} python3 scripts/gpu_sampling_costs.py ${ROWS:-16 64} 2>&1 | tee "$OUT/sampling_costs.txt" ;;
W)  # one GPU, issue 17: sampled requests under load (every request at TEMPERATURE 0.7, TOP_P 0.95, one seed), random 7B
    # target + planted 0.5B own draft (no replay: the planted draft's own sampled acceptance), target-only side by side.
    # First the GPU tests that run the sampled path's device draws under CUDA's sync debug mode (GPU_TESTS narrows them)
  timeout ${TESTS_TIMEOUT:-90} python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py \
    -k "${GPU_TESTS:-sync}" 2>&1 | tail -20 | tee "$OUT/gpu_tests.txt"
  timeout ${SWEEP_TIMEOUT:-540} python3 -m specdec bench --concurrency ${LEVELS:-1,16,64} --device cuda:0 --dtype bfloat16 \
    --max-len 1024 --max-new-tokens 128 --target random:qwen2.5-7b --draft $D --k ${K:-4} \
    --modes ${MODES:-target-only,services-own-draft} --temperature ${TEMPERATURE:-0.7} --top-p ${TOP_P:-0.95} \
    --report-greedy-mismatch --rounds ${ROUNDS:-6} --json "$OUT/sampled.json" ${EXTRA:-} 2>"$OUT/sampled.log" \
    | tee "$OUT/sampled.txt" ;;
X)  # one GPU, issue 17: a graph step's kernels in order (scripts/gpu_profile_step.py): the 0.5B draft at 16 and 64 rows,
    # the 7B at 16 (MODELS, ROWS narrow it; call y2 ran the first two)
  for M in ${MODELS:-qwen2.5-0.5b qwen2.5-7b}; do for R in ${ROWS:-16 64}; do
    [ "$M" = qwen2.5-7b ] && [ "$R" != 16 ] && continue
    SEQUENCE=${SEQUENCE:-40} timeout ${STEPS_TIMEOUT:-200} python3 scripts/gpu_profile_step.py random:$M $R 1 2>&1 \
      | grep -v -i "warn\|online softmax\|split the reduction\|important use case\|^$" | tee "$OUT/kernels_${M}_$R.txt"
  done; done ;;
O)  # one GPU, issue 17: the engine's host time per step in process (scripts/engine_host_time.py, random 7B + planted
    # 0.5B own draft, uncompiled: a cold machine starts in about a minute) of a base tree and of this one, side by side,
    # base first (make and carry base_tree.tgz as for PART=Z); LEVELS clients (default 64) at KS (default 0,2,3),
    # REPEATS each (default 2); ALPHA: a replayed draft at that acceptance (as the services' sweeps run it); GPU_TESTS:
    # the GPU tests of this -k expression first, on this tree; EXTRA: more flags (e.g. sampled requests, no ALPHA:
    # EXTRA="--temperature 0.7 --top-p 0.95 --time-path")
  mkdir -p /tmp/base && tar -xzf base_tree.tgz -C /tmp/base || exit 1
  if [ -n "${GPU_TESTS:-}" ]; then
    timeout ${TESTS_TIMEOUT:-200} python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py -k "$GPU_TESTS" 2>&1 \
      | grep -v -i "warn" | tail -15 | tee "$OUT/gpu_tests.txt"
  fi
  for B in base this; do
    ROOT=$PWD; [ "$B" = base ] && ROOT=/tmp/base
    PYTHONPATH=/tmp/site:$ROOT timeout ${STEPS_TIMEOUT:-200} python3 scripts/engine_host_time.py --device cuda:0 \
      --dtype bfloat16 --target random:qwen2.5-7b --draft $D --max-len 512 --clients ${LEVELS:-64} --k ${KS:-0,2,3} \
      --tokens 128 --repeats ${REPEATS:-2} --no-compile --log ${ALPHA:+--replay-alpha $ALPHA} ${EXTRA:-} \
      2>"$OUT/host_time_$B.log" | tee "$OUT/host_time_$B.txt"
  done ;;
VA) # one GPU, issue 17: the engine in process at fixed K (scripts/engine_host_time.py, replayed draft; compiled: carry
    # compile_cache), LEVELS clients (default 16,64), KS (default 0,2,4), REPEATS (default 2), ALPHA (default 0.8; own:
    # the planted draft's own proposals, as sampled requests need: EXTRA="--temperature 0.7 --top-p 0.95"), with
    # the host's path from a verify's read to the next verify's launch (--time-path); EXTRA: more flags
  timeout ${STEPS_TIMEOUT:-420} python3 scripts/engine_host_time.py --device cuda:0 --dtype bfloat16 \
    --target random:qwen2.5-7b --draft $D --max-len 1024 --clients ${LEVELS:-16,64} --k ${KS:-0,2,4} --tokens 128 \
    --repeats ${REPEATS:-2} --rounds 4 $([ "${ALPHA:-0.8}" = own ] || echo --replay-alpha ${ALPHA:-0.8}) --time-path --log ${EXTRA:-} \
    2>"$OUT/ahead.log" | tee "$OUT/ahead.txt" ;;
CP) # one GPU, issue 17: where start-up's time goes (compiled capture ran ~0.7-1.1 s a graph, uncompiled ~0.13 s: sc2,
    # sc3): py-spy over scripts/gpu_span_steps.py (MODELS, default the 0.5B: compile and warm-up, then capture of its 12
    # step graphs and its prompt chunks' graphs, 22 in all since a67797e; 27 in call st1), sampling SPY_S seconds (default 240: a call cut later still has the profile), then its samples under the
    # warm-up and under capture, DEPTH frames deep (default 4)
  timeout ${STEPS_TIMEOUT:-300} /tmp/site/bin/py-spy record --nonblocking --threads --idle -r 100 --duration ${SPY_S:-240} \
    --format raw -o "$OUT/startup_profile.txt" -- python3 scripts/gpu_span_steps.py ${MODELS:-random:qwen2.5-0.5b} 2>&1 \
    | grep -v -i "warn\|online softmax\|split the reduction\|important use case\|^$" | tee "$OUT/startup_steps.txt"
  for F in BatchedRunner._warm_up_shapes BatchedRunner._capture_all; do
    python3 scripts/profile_summary.py "$OUT/startup_profile.txt" --under $F --depth ${DEPTH:-4} --top 30 \
      | tee -a "$OUT/startup_summary.txt"
  done ;;
Z)  # one GPU: graph step costs (scripts/gpu_span_steps.py: compiled layers, captured steps at a short and a long
    # context, and a logits fingerprint) of this tree and of a base tree side by side, base first. Make the base here:
    # `git archive REV specdec draft_service target_service orchestrator | gzip > base_tree.tgz`, and carry it
    # (carry [".whl", "base_tree.tgz"]); MODELS narrows (default the 0.5B); STEPS_TIMEOUT per build (a cold compile
    # cache: ~250 s for the 0.5B); GPU_TESTS="-k EXPR" first runs those GPU tests on this tree (e.g. -k
    # own_draft_with_graphs: compiled layers, nothing compiled once serving); BUILDS: which of base, this and
    # inductor (this tree with INDUCTOR_OPTION, e.g. INDUCTOR_OPTION=combo_kernels=True) in turn (default "base this";
    # the base tree only where named)
  case " ${BUILDS:-base this} " in *" base "*) mkdir -p /tmp/base && tar -xzf base_tree.tgz -C /tmp/base || exit 1 ;; esac
  if [ -n "${GPU_TESTS:-}" ]; then  # -v: each outcome as it ends (a cut run keeps what passed); the own-draft test from
    # an empty compile cache ran past 200 s (sd1), 73 s warm (sd2)
    timeout ${TESTS_TIMEOUT:-300} python3 -m pytest -v -p no:cacheprovider tests/gpu/test_gpu.py $GPU_TESTS 2>&1 \
      | grep -v -i "warn" | grep -E "PASSED|FAILED|ERROR|Error|assert|passed|failed" | tail -30 | tee "$OUT/gpu_tests.txt"
  fi
  for B in ${BUILDS:-base this}; do
    ROOT=$PWD; [ "$B" = base ] && ROOT=/tmp/base
    PYTHONPATH=/tmp/site:$ROOT timeout ${STEPS_TIMEOUT:-250} python3 scripts/gpu_span_steps.py ${MODELS:-random:qwen2.5-0.5b} \
      $([ "$B" = inductor ] && echo --inductor "$INDUCTOR_OPTION") \
      2>&1 | grep -v -i "warn\|online softmax\|split the reduction\|important use case\|^$" | tee "$OUT/span_steps_$B.txt"
  done ;;
T)  # one GPU: the GPU tests only, each test's outcome written as it ends (a cut run keeps what passed), failures in
    # full and the slowest durations at the end (TESTS_TIMEOUT; the whole suite took 335 s on an H100, call u3)
  timeout ${TESTS_TIMEOUT:-480} python3 -m pytest -v -p no:cacheprovider tests/gpu/test_gpu.py --durations=20 2>&1 \
    | grep -v -i "warn" | tee "$OUT/gpu_tests.txt" | tail -40 ;;
P)  # one GPU: GPU tests (branch graphs included) and the cost of a pre-drafting step (6 / 8 branch rows)
  python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
  timeout 200 python3 scripts/gpu_steps.py qwen2.5-0.5b qwen2.5-32b 2>&1 | grep -v Warning | tee "$OUT/steps.txt" ;;
esac
[ -z "$EARLY_SAVE" ] || { kill "$EARLY_SAVE"; wait "$EARLY_SAVE"; } 2>/dev/null
save_cache
