#!/usr/bin/env bash
# sleepemo: one command for the whole pipeline, one for the tests.
#
#   ./run.sh [--profile smoke|quick|full] [--data-dir DIR] [--out DIR] [--set KEY=VALUE]...
#            [--submissions DIR] [--stages 00,01,07] [--no-progress] [--quiet|--verbose]
#       set up .venv, then `python -m sleepemo run`: get the data (Kaggle with credentials,
#       else synthetic), lock the artefact folder, run every stage in its own process (in
#       order; --stages: only those), write and validate the submission, score it when
#       solution.csv exists. Every line also goes to <out>/run.log; --quiet: only warnings
#       and errors on the console (python -m sleepemo run --help).
#   ./run.sh test [PYTEST ARGS]
#       set up .venv and run the test suite, two files at once (slow tests excluded
#       unless you ask: -m slow; one process: -n 0).
#   ./run.sh submit [--run RUN] [--model MODEL] [--file FILE] [--dry-run] [...]
#       submit a finished run (default: the newest) or a checked file to Kaggle, wait for
#       the public score, append a row to submissions/leaderboard.csv
#       (python -m sleepemo.kaggle.submit --help).
#   ./run.sh predict --run OUT [--model NAME] [--stream] [--out DIR] FILE_OR_FOLDER...
#       apply a finished run to new .mat recordings without retraining
#       (python -m sleepemo predict --help; README "Predict new recordings").
#   ./run.sh kaggle-bundle [--out DIR] [--user NAME] [--no-wheels] [--gpu] [--profile P]
#            [--time-budget S] [--stages NN...]
#       write the code and wheels datasets and the offline kernel for Kaggle
#       (default kaggle/bundle/; README "Run as a Kaggle kernel (offline)").
#   ./run.sh kaggle status [--kernel USER/SLUG] [--wait]
#   ./run.sh kaggle output [--kernel USER/SLUG] [--out DIR]
#       the pushed kernel's status, or its output files downloaded into a new folder
#       submissions/kernel-<slug>-<UTC time>/ (python -m sleepemo.kaggle.kernel --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
REPO=$PWD
SELF=./$(basename "${BASH_SOURCE[0]}")

die() { echo "run.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }

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
  want=$(python -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(f,"rb").read() for f in sys.argv[1:])).hexdigest())' requirements.txt pyproject.toml)
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "== installing requirements into $VIRTUAL_ENV (first run: a few minutes)"
    python -m pip install --disable-pip-version-check -q -r requirements.txt
    # the package itself, editable: the `sleepemo` command in the venv (no download)
    python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation \
      -e .
    echo "$want" > "$stamp"
  fi
  export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
  export MPLBACKEND=Agg
}

case "${1:-}" in
  -h|--help|help)  # before any set-up: no .venv is created to print this
    usage
    ;;
  test)
    shift
    setup
    # two test files at once (pytest-xdist, one file per process so that its module
    # fixtures are built once), one torch/BLAS thread each: about 2x on 2 cores
    # (the 15 slowest tests are listed at the end: the suite's time budget is 10 minutes)
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m pytest -m "not slow" \
      -n "${SLEEPEMO_TEST_PROCESSES:-2}" --dist loadfile --durations=15 "$@"
    ;;
  submit|predict|kaggle-bundle|kaggle)  # pass-throughs to `python -m sleepemo <command>`
    setup
    exec python -m sleepemo "$@"
    ;;
  *)
    for arg in "$@"; do  # ./run.sh --profile smoke --help: the usage, still before set-up
      if [[ $arg == -h || $arg == --help ]]; then usage; exit 0; fi
    done
    setup
    # exec: the pipeline's process is this one (its pid holds the artefact folder's lock)
    exec python -m sleepemo run "$@"
    ;;
esac
