#!/usr/bin/env bash
# sleepemo: one command for the whole pipeline, one for the tests.
#
#   ./run.sh [--profile smoke|quick|full] [--data-dir DIR] [--out DIR] [--set KEY=VALUE]...
#            [--submissions DIR] [--stages 00,01,07]
#       set up .venv, get the data (Kaggle with credentials, else synthetic), run every
#       stage (src/NN_*.py in order; --stages: only those), write and validate the
#       submission, score it when solution.csv exists.
#   ./run.sh test [PYTEST ARGS]
#       set up .venv and run the test suite, two files at once (slow tests excluded
#       unless you ask: -m slow; one process: -n 0).
#   ./run.sh submit [--run RUN] [--model MODEL] [--dry-run] [--timeout S] [...]
#       submit a finished run (default: the newest) to Kaggle, wait for the public score,
#       append a row to submissions/leaderboard.csv (python -m sleepemo.kaggle.submit --help).
#   ./run.sh predict --run OUT [--model NAME] [--stream] [--out DIR] FILE_OR_FOLDER...
#       apply a finished run to new .mat recordings without retraining
#       (python -m sleepemo predict --help; README "Predict new recordings").
#   ./run.sh kaggle-bundle [--out DIR] [--user NAME] [--no-wheels] [--gpu] [--profile P]
#       write the code and wheels datasets and the offline kernel for Kaggle
#       (default kaggle/bundle/; README "Run as a Kaggle kernel (offline)").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
REPO=$PWD

die() { echo "run.sh: $*" >&2; exit 2; }

setup() {
  if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    local py=${PYTHON:-}
    if [[ -z "$py" ]]; then
      for cand in python3.11 python3 python; do
        if command -v "$cand" >/dev/null 2>&1; then py=$cand; break; fi
      done
    fi
    [[ -n "$py" ]] || die "no python found; install Python 3.11"
    "$py" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' \
      || die "$py is $("$py" --version 2>&1); Python >= 3.11 is needed"
    if [[ ! -x .venv/bin/python ]]; then
      echo "== creating .venv with $py"
      "$py" -m venv .venv
    fi
    # shellcheck disable=SC1091
    source .venv/bin/activate
  fi
  local stamp="$VIRTUAL_ENV/.sleepemo-requirements.sha256"
  local want
  want=$(python -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' requirements.txt)
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "== installing requirements into $VIRTUAL_ENV (first run: a few minutes)"
    python -m pip install --disable-pip-version-check -q -r requirements.txt
    echo "$want" > "$stamp"
  fi
  export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
  export MPLBACKEND=Agg
}

stage() {  # stage SCRIPT ARGS...: run one stage and report its wall time
  local script=$1; shift
  local t0=$SECONDS
  echo "== $script"
  python "src/$script" "$@"
  echo "   $script: $((SECONDS - t0)) s"
}

lock_out() {  # lock_out OUT COMMAND: hold OUT's lock (sleepemo.pipeline.runlock) until run.sh exits
  mkdir -p "$1"
  # the descriptor stays open in this shell (and its stages) until it exits: the lock with it
  exec {LOCK_FD}>>"$1/.sleepemo.lock"
  SLEEPEMO_LOCK_TOKEN=$(python -m sleepemo.pipeline.runlock take "$1" --fd "$LOCK_FD" --pid $$ \
    --command "$2")
  export SLEEPEMO_LOCK_TOKEN
  LOCK_RECORD="$1/.sleepemo.lock.json"
  trap 'rm -f "$LOCK_RECORD"' EXIT  # ours while we hold the lock
}

run_pipeline() {
  local profile=quick data_dir="" out="" sets=() subs=() only=""
  local command="run.sh $*"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --profile) profile=${2:?}; shift 2 ;;
      --stages) only=" ${2//,/ } "; shift 2 ;;
      --data-dir) data_dir=${2:?}; shift 2 ;;
      --out) out=${2:?}; shift 2 ;;
      --set) sets+=(--set "${2:?}"); shift 2 ;;
      --submissions) subs=(--submissions "${2:?}"); shift 2 ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
      *) die "unknown option $1 (see ./run.sh --help)" ;;
    esac
  done
  local n
  for n in $only; do
    compgen -G "src/${n}_*.py" >/dev/null || die "--stages: no stage $n (stages: $(
      cd src && ls [0-9][0-9]_*.py | cut -c1-2 | tr '\n' ' '))"
  done
  local t0=$SECONDS
  if [[ -z "$data_dir" ]]; then
    echo "== data"
    data_dir=$(python -m sleepemo.cli data --profile "$profile" ${sets[@]+"${sets[@]}"})
  fi
  [[ -d "$data_dir" ]] || die "data folder $data_dir not found"
  out=${out:-$REPO/output/$profile-$(basename "$data_dir")}
  echo "== data: $data_dir   artefacts: $out   profile: $profile"
  lock_out "$out" "$command"  # one run at a time in $out, from the first stage to the last
  local common=(--profile "$profile" --data-dir "$data_dir" --out "$out" ${sets[@]+"${sets[@]}"})
  local script
  for script in src/[0-9][0-9]_*.py; do
    script=$(basename "$script")
    if [[ -n "$only" && "$only" != *" ${script:0:2} "* ]]; then continue; fi
    if [[ $script == 07_* ]]; then
      stage "$script" "${common[@]}" ${subs[@]+"${subs[@]}"}
    else
      stage "$script" "${common[@]}"
    fi
  done
  echo "== total wall time: $((SECONDS - t0)) s (after set-up)"
}

case "${1:-}" in
  test)
    shift
    setup
    # two test files at once (pytest-xdist, one file per process so that its module
    # fixtures are built once), one torch/BLAS thread each: about 2x on 2 cores
    # (the 15 slowest tests are listed at the end: the suite's time budget is 15 minutes)
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m pytest -m "not slow" \
      -n "${SLEEPEMO_TEST_PROCESSES:-2}" --dist loadfile --durations=15 "$@"
    ;;
  submit)
    shift
    setup
    python -m sleepemo.kaggle.submit "$@"
    ;;
  kaggle-bundle)
    shift
    setup
    python -m sleepemo.kaggle.bundle "$@"
    ;;
  predict)
    shift
    setup
    python -m sleepemo predict "$@"
    ;;
  *)
    setup
    run_pipeline "$@"
    ;;
esac
