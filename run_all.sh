#!/usr/bin/env bash
# usage: bash run_all.sh [digits|fashion_mnist|cifar10|cifar100|tinyimagenet|imagenet] [--quick] [--jobs N]
#                        [--seeds N] [--allow-cpu] [--data-dir DIR] [--no-pretrained] [--dry-run] [--estimate]
# Every table and figure of the paper on one preset: make trains and evaluates the runs the Makefile lists, then
# report.py writes tables, figures and results.json. Resumable: run it again after an interruption. Presets: digits
# (default; offline, CPU), fashion_mnist (CPU; the main claims; apt-get install dataset-fashion-mnist), cifar10,
# cifar100 (AdvMoE's Table A2 only), tinyimagenet, imagenet (Table 10): GPU (or --allow-cpu) and data (--data-dir,
# DATA_DIR, ./data). --quick: smoke run; --jobs N at once (default 2 on the CPU presets, else 1); --seeds N: seeds
# 0..N-1, seed k >= 1 in <run>-seed<k>; --no-pretrained: ViT experts (TinyImageNet, ImageNet) start from random
# weights, not the hub's (make PRETRAINED=); --dry-run: make -n; --estimate: time a few steps of every job make would
# run, on this machine as the run would (threads, jobs at once; paper presets on their synthetic stand-ins, no data),
# and print the expected hours per run and in total (estimate.py; ESTIMATE_STEPS, ESTIMATE_CUT). Environment: RUNS_DIR
# (runs/<preset>[-quick]), RESULTS_DIR (RUNS_DIR/results), EVAL_N / AA_N (test points of the final PGD / AutoAttack
# evaluations: all, AA_N 100 on digits; fashion_mnist 2,000 and 200).
set -uo pipefail
die() { echo "run_all: $*" >&2; exit 1; }
bad() { echo "run_all: $*; see bash run_all.sh --help" >&2; exit 2; }

PRESET="" QUICK="" JOBS="" SEEDS=1 ALLOW_CPU="" DRY_RUN="" DATA=${DATA_DIR:-} MAKE_PID="" NO_PRETRAINED=""
ESTIMATE=""
while (($#)); do
  case $1 in
    digits|fashion_mnist|cifar10|cifar100|tinyimagenet|imagenet)
      [[ -z $PRESET ]] || bad "two presets given ($PRESET and $1)"; PRESET=$1 ;;
    --quick) QUICK=1 ;; --allow-cpu) ALLOW_CPU=1 ;; --dry-run) DRY_RUN=1 ;; --no-pretrained) NO_PRETRAINED=1 ;;
    --estimate) ESTIMATE=1 ;;
    --jobs=*|--seeds=*|--data-dir=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --jobs|--seeds|--data-dir) (($# >= 2)) || bad "$1 needs a value"
      case $1 in --jobs) JOBS=$2 ;; --seeds) SEEDS=$2 ;; *) DATA=$2 ;; esac; shift ;;
    -h|--help) sed -n '2,/^set /{/^set /d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
    *) bad "unknown argument '$1' (presets: digits fashion_mnist cifar10 cifar100 tinyimagenet imagenet)" ;;
  esac
  shift
done
PRESET=${PRESET:-digits}
CPU_PRESET=$([[ $PRESET == digits || $PRESET == fashion_mnist ]] && echo 1)  # small CNN experts: 2 jobs, no GPU needed
[[ -n $CPU_PRESET ]] && JOBS=${JOBS:-2} || JOBS=${JOBS:-1}
for n in JOBS SEEDS; do [[ ${!n} =~ ^[1-9][0-9]*$ ]] || bad "--${n,,} must be a positive integer, got '${!n}'"; done
HERE=$(cd "$(dirname "$0")" && pwd)
RUNS=$(realpath -m "${RUNS_DIR:-$HERE/runs/$PRESET${QUICK:+-quick}}")
RESULTS=$(realpath -m "${RESULTS_DIR:-$RUNS/results}")
DATA=$(realpath -m "${DATA:-$HERE/data}")
cd "$HERE" || die "cannot enter $HERE"
command -v python >/dev/null || die "no 'python' on PATH: activate the project's venv first (. .venv/bin/activate)"
MAKE=(make -s -j "$JOBS" -f Makefile PRESET="$PRESET" QUICK="$QUICK" SEEDS="$SEEDS" RUNS="$RUNS" DATA="$DATA"
  ${NO_PRETRAINED:+PRETRAINED=})
COMMAND="bash run_all.sh $PRESET${QUICK:+ --quick}$( ((SEEDS == 1)) || echo " --seeds $SEEDS")"
COMMAND+=${NO_PRETRAINED:+ --no-pretrained}
REPORT=(python report.py "$PRESET" --runs "$RUNS" --out "$RESULTS" --command "$COMMAND" ${QUICK:+--quick})
[[ -z $DRY_RUN ]] || { echo "run_all: dry run of preset $PRESET: what would run now (no GPU or data check)"
  "${MAKE[@]}" -n && echo "${REPORT[*]}"; exit; }

declare -A NEED=([cifar10]=cifar-10-batches-py [cifar100]=cifar-100-python [imagenet]="train val"
  [tinyimagenet]="tiny-imagenet-200/wnids.txt tiny-imagenet-200/train tiny-imagenet-200/val/val_annotations.txt")
[[ -n $ESTIMATE ]] ||  # the estimate times the paper presets on synthetic images of their shapes
for need in ${NEED[$PRESET]:-}; do [[ -e $DATA/$need ]] || die "$PRESET data missing: looked for $DATA/$need;" \
  "get it with a train script's --download (ImageNet: by hand, train/ and val/ class folders) or set DATA_DIR"; done
[[ $PRESET != fashion_mnist ]] || python -c "import data, sys; sys.exit(data.fashion_mnist_files('$DATA') is None)" ||
  die "fashion_mnist data missing: looked in $DATA/FashionMNIST/raw, $DATA and /usr/share/datasets/fashion-mnist;" \
  "apt-get install dataset-fashion-mnist, or: python -c 'import data; data.load_dataset(\"fashion_mnist\", \"$DATA\"," \
  "download=True)'"
ON_GPU=""  # digits asks torch only where a driver is (an import less)
{ [[ $PRESET != digits ]] || command -v nvidia-smi >/dev/null; } &&
  python -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null && ON_GPU=GPU
[[ -n $ON_GPU$ALLOW_CPU$CPU_PRESET ]] || die "preset $PRESET needs a GPU, but none is visible" \
  "(torch.cuda.is_available() is False); use --allow-cpu to run on CPU anyway"
[[ -n $ON_GPU ]] || ((JOBS == 1)) || export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[[ -z $ESTIMATE ]] || { "${MAKE[@]}" -n | python estimate.py "$PRESET" --jobs "$JOBS" --runs "$RUNS"; exit; }

mkdir -p "$RUNS" && exec 9>>"$RUNS/.lock" || die "cannot create $RUNS/.lock"  # every job inherits the lock (fd 9)
flock -n 9 || die "another run_all.sh (or a job left from one, even by a kill -9) is still working in $RUNS; wait" \
  "for it to end or stop it (fuser -k $RUNS/.lock), then run this again"
export RUN_ALL_FAILED=$RUNS/.failed  # the failing job's message (Makefile JOB_SCRIPT), said again as the last line
: >"$RUN_ALL_FAILED" || die "cannot write $RUN_ALL_FAILED"
echo "run_all: preset $PRESET${QUICK:+ (quick)}, $SEEDS seed(s), $JOBS job(s) at once on ${ON_GPU:-CPU}; runs in $RUNS"
stop() {  # exit status, why (none: the failing job said why); make and its jobs are one process group (set -m)
  [[ -z ${2:-} ]] || echo "run_all: $2: stopping the jobs. Run the same command again to go on (done work stays)" >&2
  kill -TERM -- "-$MAKE_PID" 2>/dev/null; wait $MAKE_PID
  while kill -0 -- "-$MAKE_PID" 2>/dev/null; do sleep 0.1; done  # until the last job is gone
  [[ ! -s $RUN_ALL_FAILED ]] || cat "$RUN_ALL_FAILED" >&2  # after make's own noise (make: *** wait: ...)
  exit "$1"
}
trap 'stop 130 interrupted' INT TERM HUP; trap 'stop 1' USR1  # USR1: a job failed (Makefile JOB_SCRIPT) and said why
export RUN_ALL_PID=$$; set -m; "${MAKE[@]}" </dev/null & MAKE_PID=$!; set +m
wait "$MAKE_PID" || stop 1

mkdir -p "$RESULTS" && "${REPORT[@]}" >"$RESULTS/report.log" 2>&1 ||
  die "report.py failed: $(tail -n 1 "$RESULTS/report.log"); full log: $RESULTS/report.log"
COLLAPSED=$(cd "$RUNS" && for f in */diverged.json; do [[ -f $f ]] && echo "${f%/*}"; done)
[[ -z $COLLAPSED ]] || echo "run_all: collapsed (reported as such in the tables):" $COLLAPSED
echo "run_all: total ${SECONDS}s; tables and figures in $RESULTS"
