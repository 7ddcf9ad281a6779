#!/usr/bin/env bash
# One command for every table and figure of the paper on one preset: train, evaluate, report.
#   bash run_all.sh [digits|cifar10|tinyimagenet|imagenet] [--quick] [--jobs N] [--allow-cpu]
# Resumable: run it again after an interruption; finished runs and evaluations are reused.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: bash run_all.sh [PRESET] [--quick] [--jobs N] [--allow-cpu] [--data-dir DIR]

Trains every run the paper's Tables 1-10 and Figures 2-7 need, evaluates them with eval.py and writes
the tables (markdown), figures (PNG) and results.json with report.py.

PRESET        digits (default; offline, CPU, minutes to an hour)
              cifar10       4 ResNet18 experts, 130 epochs, eps 8/255, PGD-10 train / PGD-50 eval (GPU)
              tinyimagenet  4 pretrained ViT-small experts, 10 epochs, eps 2/255 (GPU)
              imagenet      only Table 10: AT, TRADES, RT-ER with pretrained ViT-small experts (GPU)
--quick       smoke run: 2 epochs, tiny attacks and test subsets, AutoAttack cut to APGD-CE
              (10 iterations); writes to runs/<preset>-quick and results/<preset>-quick
--jobs N      trainings / evaluations run at once (default 2 for digits, 1 otherwise);
              with N > 1 on CPU each job gets OMP_NUM_THREADS=1
--allow-cpu   run a paper preset without a GPU (it will take days)
--data-dir D  where the dataset lives (default $DATA_DIR, else ./data)
--dry-run     print the commands each job would run now (after the reuse checks) and stop; no GPU / data check
-h, --help    this text

Environment: RUNS_DIR (default runs/<preset>[-quick]), RESULTS_DIR (default results/<preset>[-quick]),
DATA_DIR, EVAL_N / AA_N (test points for the final PGD / AutoAttack evaluations; default all (AA_N 100 on
digits), 40 / 20
with --quick). Logs of each job: RUNS_DIR/<run>/train.log, eval.log, and job.log (its summary).
Reuse rules: a run whose log.csv reached its last epoch (and has ckpt.pt) is not retrained; an
evaluation whose JSON exists is not redone (delete the JSON to redo it); a run that collapsed
(diverged.json) is reported as collapsed, not retrained (delete diverged.json to retry it).
EOF
}

die() { echo "run_all: $*" >&2; exit 1; }

# ----------------------------------------------------------------------------- arguments

PRESET="" QUICK=0 JOBS="" ALLOW_CPU=0 DATA_ARG="" DRY_RUN=0
while (($#)); do
  case "$1" in
    digits|cifar10|tinyimagenet|imagenet)
      [[ -z "$PRESET" ]] || die "two presets given ($PRESET and $1)"; PRESET=$1 ;;
    --quick) QUICK=1 ;;
    --jobs) (($# >= 2)) || die "--jobs needs a number"; JOBS=$2; shift ;;
    --jobs=*) JOBS=${1#--jobs=} ;;
    --allow-cpu) ALLOW_CPU=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --data-dir) (($# >= 2)) || die "--data-dir needs a folder"; DATA_ARG=$2; shift ;;
    --data-dir=*) DATA_ARG=${1#--data-dir=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all: unknown argument '$1' (presets: digits cifar10 tinyimagenet imagenet)" >&2
       echo "usage: bash run_all.sh [digits|cifar10|tinyimagenet|imagenet] [--quick] [--jobs N] [--allow-cpu]" >&2
       exit 2 ;;
  esac
  shift
done
PRESET=${PRESET:-digits}
if [[ -z "$JOBS" ]]; then [[ $PRESET == digits ]] && JOBS=2 || JOBS=1; fi
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer, got '$JOBS'"
if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  die "needs bash >= 5.1 (for 'wait -n -p'); this is bash $BASH_VERSION"
fi

CALLER_DIR=$PWD
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$CALLER_DIR/$1" ;; esac; }
SUFFIX=""; ((QUICK)) && SUFFIX="-quick"
if [[ -n "${RUNS_DIR:-}" ]]; then RUNS=$(absolute "$RUNS_DIR"); else RUNS="$HERE/runs/$PRESET$SUFFIX"; fi
if [[ -n "${RESULTS_DIR:-}" ]]; then RESULTS=$(absolute "$RESULTS_DIR"); else RESULTS="$HERE/results/$PRESET$SUFFIX"; fi
if [[ -n "$DATA_ARG" ]]; then DATA=$(absolute "$DATA_ARG")
elif [[ -n "${DATA_DIR:-}" ]]; then DATA=$(absolute "$DATA_DIR")
else DATA="$HERE/data"; fi
cd "$HERE" || die "cannot enter $HERE"

PY=python
command -v "$PY" >/dev/null || die "no 'python' on PATH: activate the project's venv first (. .venv/bin/activate)"

COMMAND="bash run_all.sh $PRESET"; ((QUICK)) && COMMAND+=" --quick"

# ----------------------------------------------------------------------------- preset checks (before any training)

check_data() {
  local root
  case "$PRESET" in
    cifar10)
      [[ -d "$DATA/cifar-10-batches-py" ]] || die "CIFAR-10 data missing: looked for $DATA/cifar-10-batches-py; get it with: python -c \"import data; data.load_dataset('cifar10', '$DATA', download=True)\" (or point DATA_DIR at it)" ;;
    tinyimagenet)
      root="$DATA/tiny-imagenet-200"
      for need in wnids.txt train val/val_annotations.txt; do
        [[ -e "$root/$need" ]] || die "TinyImageNet data missing: looked for $root/$need; get it with: python -c \"import data; data.load_dataset('tinyimagenet', '$DATA', download=True)\" (or point DATA_DIR at it)"
      done ;;
    imagenet)
      for need in train val; do
        [[ -d "$DATA/$need" ]] || die "ImageNet data missing: looked for $DATA/$need; ImageNet cannot be downloaded automatically: get ILSVRC2012 and arrange train/ and val/ in class folders under DATA_DIR"
      done ;;
  esac
}

torch_gpu() { "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }

ON_GPU=0
if ((DRY_RUN)); then
  echo "run_all: dry run: no GPU or data check, nothing runs"
elif [[ $PRESET != digits ]]; then
  check_data
  if torch_gpu; then ON_GPU=1
  elif ((ALLOW_CPU)); then echo "run_all: no GPU visible; --allow-cpu given, running preset $PRESET on CPU (very slow)"
  else die "preset $PRESET needs a GPU, but none is visible (torch.cuda.is_available() is False); use --allow-cpu to run on CPU anyway"
  fi
else
  # digits runs on whatever the scripts pick; ask torch only where an NVIDIA driver exists (saves an import)
  if command -v nvidia-smi >/dev/null 2>&1 && torch_gpu; then ON_GPU=1; fi
fi
if ((JOBS > 1 && ! ON_GPU)); then export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; fi

# ----------------------------------------------------------------------------- settings per preset

# digits: the scripts' own defaults (train_common.DEFAULTS: 30 epochs; train_jtdmoe.py: 10); the curves take
# PGD-20 RA every second epoch (every epoch would cost a fifth of the preset's 30 minutes)
EPOCHS=30 JT_EPOCHS=10 CURVE=(--eval-steps 20 --eval-every 2)
TRAIN=() EVAL=()
case "$PRESET" in
  cifar10) TRAIN=(--dataset cifar10 --arch resnet18 --amp --channels-last); EPOCHS=130 CURVE=(--eval-n 1000) ;;
  tinyimagenet) TRAIN=(--dataset tinyimagenet --arch vit_small --pretrained --amp); EPOCHS=10 CURVE=(--eval-n 1000) ;;
  imagenet) TRAIN=(--dataset imagenet --arch vit_small --pretrained --amp); EPOCHS=10 CURVE=(--eval-n 1000) ;;
esac
if [[ $PRESET != digits ]]; then TRAIN+=(--data-dir "$DATA"); EVAL+=(--data-dir "$DATA"); fi
if ((QUICK)); then  # smoke run
  CURVE=(--eval-n 60 --eval-steps 3 --steps 2); EPOCHS=2 JT_EPOCHS=1
  [[ $PRESET == digits ]] && CURVE+=(--bs 256)  # 5 steps an epoch: keeps the digits smoke run near 1.5 min on 2 cores
  EVAL+=(--steps 5); EVAL_N=${EVAL_N:-40} AA_N=${AA_N:-20}
  export RUN_ALL_QUICK_AA=1
else
  unset RUN_ALL_QUICK_AA
fi
TRAIN+=("${CURVE[@]}")
# digits: standard AutoAttack on CPU costs minutes per target and 100 points, so it takes a fixed subset of 100
[[ $PRESET == digits ]] && AA_N=${AA_N:-100}
EVAL_N=${EVAL_N:-0} AA_N=${AA_N:-0}  # 0: the whole test set
PGD_ARGS=("${EVAL[@]}" --n "$EVAL_N")
AA_ARGS=("${EVAL[@]}" --n "$AA_N")
ALPHAS=0.5,0.6,0.7,0.8,0.9,1.0

# One python process per job: a run's training and its evaluations, each stage's output in RUNS/<run>/train.log or
# eval.log, the job's summary in RUNS/<run>/job.log (imports once: torch + sklearn + dynamo cost ~10 s CPU each time).
#   python -c "$DRIVER" RUN_DIR ::train SCRIPT ARGS... ::eval ARGS... ::eval ARGS...
# Exit 0: all done; 3: the training collapsed (diverged.json), the last good checkpoint still evaluated; else failed.
# With --quick, AutoAttack is cut to APGD-CE (10 iterations) and its JSON gets "aa_version" saying so.
DRIVER='
import gc, importlib, json, os, sys, time, traceback
run_dir, stages = sys.argv[1], []
for a in sys.argv[2:]:
    stages.append([a[2:], []]) if a in ("::train", "::eval") else stages[-1][1].append(a)
summary = os.fdopen(os.dup(2), "w", buffering=1)
QUICK_AA = os.environ.get("RUN_ALL_QUICK_AA")
if QUICK_AA:
    import pyautoattack

    class QuickAutoAttack(pyautoattack.AutoAttack):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.attacks_to_run = ["apgd-ce"]
            self.apgd.n_iter = 10

    pyautoattack.AutoAttack = QuickAutoAttack
import train_common as tc

opened = set()


def to_log(path):
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if path in opened else os.O_TRUNC), 0o644)
    opened.add(path)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def last_line(path):
    with open(path, errors="replace") as f:
        lines = [x.strip() for x in f.read().replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "(empty log)"


def call(fn):
    try:
        tc.cli(fn)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1


def evaluate(argv):
    import eval as ev
    result = ev.main(argv)
    if QUICK_AA and "aa" in argv:
        args = ev.parse_args(argv)
        out = args.out or os.path.dirname(os.path.abspath(args.ckpt or args.rob))
        path = os.path.join(out, ("dual_aa" if "rows" in result else "eval_aa") + ".json")
        result["aa_version"] = "quick: APGD-CE only, 10 iterations (run_all.sh --quick)"
        tc.atomic_write(path, json.dumps(result, indent=1))


collapsed, times = False, []
for kind, argv in stages:
    log = os.path.join(run_dir, kind + ".log")
    to_log(log)
    name = argv[0] if kind == "train" else "eval.py"
    print("+ python " + " ".join([name] + argv[1 if kind == "train" else 0:]), flush=True)
    t0 = time.time()
    if kind == "train":
        module = importlib.import_module(argv[0][:-3])
        code = call(lambda: module.main(argv[1:]))
    else:
        code = call(lambda: evaluate(argv))
    label = "train" if kind == "train" else "eval " + argv[argv.index("--attack") + 1]
    times.append(f"{label} {time.time() - t0:.1f}s")
    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()
    if code == 3 and kind == "train" and os.path.exists(os.path.join(run_dir, "diverged.json")):
        collapsed = True
        print("collapsed: " + last_line(log), file=summary)
        if not os.path.exists(os.path.join(run_dir, "ckpt.pt")):
            break
    elif code:
        print(f"{label} failed (exit {code}): {last_line(log)}; full log: {log}", file=summary)
        sys.exit(code)
print(", ".join(times), file=summary)
sys.exit(3 if collapsed else 0)
'

# ----------------------------------------------------------------------------- the jobs

# One job per run folder: its training (train_*.py) and its evaluations (eval.py); arguments are built at launch.
J_RUN=() J_TRAIN=() J_EVALS=() J_DEPS=() J_STATE=() J_T0=()
declare -A JOB_OF=()

add_job() {  # run name, "attacks", training script and its arguments (none: an evaluation-only job)
  local name=$1 evals=$2; shift 2
  local deps=""
  [[ $name == jtdmoe_* || $name == dual_pretrained ]] && deps="${JOB_OF[st]} ${JOB_OF[rter]}"
  JOB_OF[$name]=${#J_RUN[@]}
  J_RUN+=("$name") J_EVALS+=("$evals") J_DEPS+=("$deps") J_STATE+=(pending) J_T0+=("")
  if (($#)); then J_TRAIN+=("$(printf '%q ' "$@")"); else J_TRAIN+=(""); fi
}

if [[ $PRESET == imagenet ]]; then  # Table 10 only
  add_job at "pgd" train_at.py --method at
  add_job rter "pgd" train_rter.py --beta 6
  add_job trades "pgd" train_at.py --method trades
else
  # order = priority: the runs others depend on first, then the long ones
  add_job st "pgd aa smooth" train_st.py
  add_job rter "pgd aa smooth" train_rter.py --beta 6
  add_job at "pgd smooth" train_at.py --method at  # no table shows AT under AutoAttack
  add_job dual_pretrained "pgd aa"
  add_job jtdmoe_a0.7 "pgd aa" train_jtdmoe.py --std "$RUNS/st/ckpt.pt" --rob "$RUNS/rter/ckpt.pt" --alpha 0.7
  for a in 0.5 0.6 0.8; do
    add_job "jtdmoe_a$a" "" train_jtdmoe.py --std "$RUNS/st/ckpt.pt" --rob "$RUNS/rter/ckpt.pt" --alpha "$a"
  done
  add_job trades "pgd aa" train_at.py --method trades
  add_job advmoe "pgd aa" train_at.py --method advmoe
  for b in 1 3 9; do add_job "rter_b$b" "pgd" train_rter.py --beta "$b"; done
  add_job rter_top2 "pgd" train_rter.py --beta 6 --topk 2
  add_job at_top2 "pgd" train_at.py --method at --topk 2
  add_job rter_e5 "pgd" train_rter.py --beta 6 --experts 5
  add_job rter_e3 "pgd" train_rter.py --beta 6 --experts 3
fi
NJOBS=${#J_RUN[@]}

# ----------------------------------------------------------------------------- bookkeeping

now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }
T_START=$(now_ms)
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }  # milliseconds -> "12.3"
say() { printf '[%7ss] %-9s %s\n' "$(secs $(($(now_ms) - T_START)))" "$1" "$2"; }
last_line() { [[ -f "$1" ]] && tr '\r' '\n' <"$1" | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-400; }

run_finished() {  # run dir, epochs: a checkpoint there and log.csv reached the last epoch
  [[ -f "$1/ckpt.pt" && -f "$1/log.csv" ]] || return 1
  [[ "$(tail -n 1 "$1/log.csv" | cut -d, -f1)" == "$2" ]]
}

eval_json() {  # run name, attack -> the JSON eval.py writes
  if [[ $1 == dual_pretrained || $1 == jtdmoe_* ]]; then echo "$RUNS/$1/dual_$2.json"; else echo "$RUNS/$1/eval_$2.json"; fi
}

RUNNING=0
declare -A PID_JOB=()

launch() {  # start job i, or settle it at once (reused / skipped)
  local i=$1 run=${J_RUN[$1]} dir="$RUNS/${J_RUN[$1]}" why="" attack
  local stages=() todo=() epochs=$EPOCHS train=0
  [[ $run == jtdmoe_* ]] && epochs=$JT_EPOCHS
  if [[ -n "${J_TRAIN[$i]}" ]]; then
    if [[ -f "$dir/diverged.json" ]]; then
      why="collapsed earlier: $(tr -d '\n' <"$dir/diverged.json"); delete diverged.json to retry"
      J_STATE[$i]=collapsed
    elif run_finished "$dir" "$epochs"; then
      why="finished run, $epochs epochs"
    else
      train=1
    fi
  fi
  if ((train && !DRY_RUN)); then
    rm -f "$dir"/eval_*.json "$dir"/eval_*.md "$dir"/dual_*.json "$dir"/dual_*.md  # stale once the run trains on
    [[ $run == st || $run == rter ]] && rm -f "$RUNS"/dual_pretrained/dual_*.json "$RUNS"/dual_pretrained/dual_*.md
  fi
  for attack in ${J_EVALS[$i]}; do [[ -f $(eval_json "$run" "$attack") ]] || todo+=("$attack"); done
  if ((!train && ${#todo[@]} == 0)); then
    [[ -n "${J_EVALS[$i]}" ]] && why+="${why:+; }eval ${J_EVALS[$i]// /, }: JSON present"
    [[ ${J_STATE[$i]} == collapsed ]] || J_STATE[$i]=done
    say reused "$run ($why)"
    return
  fi
  if ((!DRY_RUN)) && [[ $run == jtdmoe_* || $run == dual_pretrained ]] && [[ ! -f "$RUNS/st/ckpt.pt" || ! -f "$RUNS/rter/ckpt.pt" ]]; then
    J_STATE[$i]=skipped; say skipped "$run (needs the st and rter checkpoints)"; return
  fi
  if ((!train && !DRY_RUN)) && [[ -n "${J_TRAIN[$i]}" && ! -f "$dir/ckpt.pt" ]]; then
    J_STATE[$i]=skipped; say skipped "$run (no checkpoint to evaluate)"; return
  fi
  if ((train)); then
    local args
    eval "args=(${J_TRAIN[$i]})"
    stages+=(::train "${args[@]}" "${TRAIN[@]}" --epochs "$epochs" --out "$dir" --resume)
  fi
  for attack in "${todo[@]}"; do
    stages+=(::eval)
    if [[ $run == dual_pretrained ]]; then
      stages+=(--std "$RUNS/st/ckpt.pt" --rob "$RUNS/rter/ckpt.pt" --alphas "$ALPHAS" --out "$dir")
    else
      stages+=(--ckpt "$dir/ckpt.pt")
      [[ $run == jtdmoe_* ]] && stages+=(--alphas "${run#jtdmoe_a}")
    fi
    stages+=(--attack "$attack")
    if [[ $attack == aa ]]; then stages+=("${AA_ARGS[@]}"); else stages+=("${PGD_ARGS[@]}"); fi
  done
  if ((DRY_RUN)); then
    J_STATE[$i]=done
    say would "$run:"
    local word line=""
    for word in "${stages[@]}"; do
      case $word in
        ::train) [[ -n "$line" ]] && echo "      $line"; line="$PY" ;;
        ::eval) [[ -n "$line" ]] && echo "      $line"; line="$PY eval.py" ;;
        *) if [[ $word =~ ^[A-Za-z0-9_./,:=+@-]+$ ]]; then line+=" $word"; else line+=" $(printf '%q' "$word")"; fi ;;
      esac
    done
    echo "      $line"
    return
  fi
  mkdir -p "$dir" || die "cannot create $dir"
  "$PY" -c "$DRIVER" "$dir" "${stages[@]}" >"$dir/job.log" 2>&1 &
  PID_JOB[$!]=$i
  J_T0[$i]=$(now_ms) J_STATE[$i]=running
  RUNNING=$((RUNNING + 1))
  local what=()
  ((train)) && what+=("train")
  ((${#todo[@]})) && what+=("eval ${todo[*]}")
  say start "$run (${what[0]}${what[1]:+, ${what[1]}})"
}

stop_running() {  # every job process this script started (jobs -p also knows one started a moment ago)
  local pids
  pids=$( { printf '%s\n' "${!PID_JOB[@]}"; jobs -p; } | grep -v '^$' | sort -u)
  [[ -n "$pids" ]] || return 0
  kill $pids 2>/dev/null
  wait $pids 2>/dev/null
}

on_signal() {
  trap - INT TERM HUP PIPE
  { echo; echo "run_all: $1; stopping the running jobs. Run the same command again to continue (finished runs and" \
      "evaluations are reused, interrupted runs resume from their checkpoint)."; } >&2 2>/dev/null
  stop_running
  exit 130
}
trap 'on_signal interrupted' INT
trap 'on_signal terminated' TERM
trap 'on_signal "terminal closed"' HUP
trap 'on_signal "output closed"' PIPE

settle() {  # a job's process ended: pid, exit status
  local pid=$1 rc=$2 i=${PID_JOB[$1]}
  unset "PID_JOB[$pid]"
  RUNNING=$((RUNNING - 1))
  local run=${J_RUN[$i]} took
  took=$(secs $(($(now_ms) - J_T0[i])))
  local log="$RUNS/$run/job.log" detail
  detail=$(last_line "$log")
  if ((rc == 0)); then
    J_STATE[$i]=done; say done "$run (${took}s: $detail)"
    [[ -f "$RUNS/$run/diverged.json" ]] && J_STATE[$i]=collapsed
  elif ((rc == 3)) && [[ -f "$RUNS/$run/diverged.json" ]]; then
    J_STATE[$i]=collapsed
    say collapsed "$run (${took}s): $(grep -m1 '^collapsed: ' "$log" | cut -c12-) -- reported as a collapse"
  else
    J_STATE[$i]=failed
    say failed "$run (exit $rc, ${took}s)"
    echo "run_all: $run failed: ${detail:-exit $rc, see $log}" >&2
    ((RUNNING)) && echo "run_all: stopping $RUNNING running job(s); run the same command again to continue" >&2
    stop_running
    exit 1
  fi
}

deps_met() {
  local d
  for d in ${J_DEPS[$1]}; do
    case ${J_STATE[$d]} in done|collapsed|skipped) ;; *) return 1 ;; esac
  done
}

echo "run_all: preset $PRESET$( ((QUICK)) && echo " (quick)"), $NJOBS runs, $JOBS job(s) at once on $( ((ON_GPU)) && echo GPU || echo CPU); runs in $RUNS, results in $RESULTS"
if ((!DRY_RUN)); then
  mkdir -p "$RUNS" "$RESULTS" || die "cannot create $RUNS or $RESULTS"
  # every job inherits this lock, so it is held until the last job of this run_all.sh is gone (even one left
  # behind by a kill -9): a second run_all.sh on the same runs would train the same runs twice at once
  exec 9>>"$RUNS/.lock"
  flock -n 9 || die "another run_all.sh (or a job left from one) is still working in $RUNS; wait for it to end or stop it (fuser -k $RUNS/.lock), then run this again"
fi

while :; do
  for ((i = 0; i < NJOBS; i++)); do
    ((RUNNING < JOBS)) || break
    [[ ${J_STATE[$i]} == pending ]] && deps_met "$i" && launch "$i"
  done
  pending=0
  for ((i = 0; i < NJOBS; i++)); do [[ ${J_STATE[$i]} == pending ]] && pending=$((pending + 1)); done
  ((RUNNING == 0 && pending == 0)) && break
  if ((RUNNING == 0)); then
    # jobs settled at once may have unblocked others: scan again before concluding anything
    ready=0
    for ((i = 0; i < NJOBS; i++)); do [[ ${J_STATE[$i]} == pending ]] && deps_met "$i" && ready=1; done
    ((ready)) && continue
    die "internal error: $pending job(s) wait on jobs that never ran"
  fi
  rc=0 pid=""
  wait -n -p pid || rc=$?
  [[ -n "$pid" && -n "${PID_JOB[$pid]:-}" ]] && settle "$pid" "$rc"
done

# ----------------------------------------------------------------------------- the report

if ((DRY_RUN)); then
  echo "      $PY report.py $PRESET --runs $RUNS --out $RESULTS --command '$COMMAND'$( ((QUICK)) && echo " --quick")"
  exit 0
fi

say start "report -> $RESULTS"
REPORT=("$PY" report.py "$PRESET" --runs "$RUNS" --out "$RESULTS" --command "$COMMAND")
((QUICK)) && REPORT+=(--quick)
if ! "${REPORT[@]}" >"$RESULTS/report.log" 2>&1; then
  echo "run_all: report.py failed: $(last_line "$RESULTS/report.log"); full log: $RESULTS/report.log" >&2
  exit 1
fi
say done "report ($(grep -c . "$RESULTS/report.log") lines in $RESULTS/report.log)"
collapsed=()
for ((i = 0; i < NJOBS; i++)); do [[ ${J_STATE[$i]} == collapsed ]] && collapsed+=("${J_RUN[$i]}"); done
((${#collapsed[@]})) && echo "run_all: collapsed (reported as such in the tables): ${collapsed[*]}"
echo "run_all: total $(secs $(($(now_ms) - T_START)))s; tables and figures in $RESULTS"
