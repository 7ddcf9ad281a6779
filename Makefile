# The runs and evaluations of one preset as files: make orders them, runs -j at once, reuses what exists, dry-runs
# (-n). run_all.sh calls it; by hand: make -s -j2 RUNS=runs/digits-quick QUICK=1 [PRESET=digits SEEDS=1 DATA=data]
# RUN/train.done: the training exited 0 or 3 (diverged: a collapse), dated like its checkpoint: evaluations (eval.py's
# RUN/eval_<attack>.json) newer than it stay. Delete a JSON to redo it, train.done to go on or retry, a run to retrain.
PRESET ?= digits
SEEDS ?= 1
RUNS ?= runs/$(PRESET)$(if $(QUICK),-quick)
.DEFAULT_GOAL := all

# pick(quick, digits, paper preset). Quick: tiny attacks and test subsets, AutoAttack cut to APGD-CE, 5 steps an epoch
# on digits. Digits: the scripts' defaults, the curves PGD-20 RA every 2nd epoch (every epoch: +20 % time), AutoAttack
# a fixed 100 test points (on a CPU it takes minutes per target and 100 points).
pick = $(if $(QUICK),$1,$(if $(filter digits,$(PRESET)),$2,$3))
EPOCHS := $(call pick,2,30,$(if $(filter cifar10,$(PRESET)),130,10))
JT_EPOCHS := $(call pick,1,10,10)
CURVE := $(call pick,--eval-n 60 --eval-steps 3 --steps 2,--eval-steps 20 --eval-every 2,--eval-n 1000)
EVAL := $(if $(filter digits,$(PRESET)),,--data-dir $(or $(DATA),data))
ARCH := $(if $(filter cifar10,$(PRESET)),--arch resnet18 --amp --channels-last,--arch vit_small --pretrained --amp)
TRAIN := $(if $(EVAL),--dataset $(PRESET) $(ARCH) $(EVAL),$(if $(QUICK),--bs 256)) $(CURVE)
EVAL_N ?= $(call pick,40,0,0)# test points of the final evaluations (0: all)
AA_N ?= $(call pick,20,100,0)
EVAL += $(if $(QUICK),--steps 5 --aa-version quick) --n $(EVAL_N) --aa-n $(AA_N)
comma := ,

# $(JOB) TARGET COMMAND...: the output to RUN/<stage>.log; a stage whose input checkpoint was never written (its run
# collapsed in epoch 1) is skipped; a failure says the log's last line and stops run_all (USR1) with the other jobs
define JOB_SCRIPT
target=$1; shift; dir=${target%/*}; stage=${target##*/}; stage=${stage%.*}; log=$dir/$stage.log
say() { echo "[$(date +%T)] $1 ${dir##*/} $stage$2"; }
for arg; do [[ $arg != */ckpt.pt || -f ${arg#--*=} ]] || { say skipped ": no ${arg#--*=}"; exit 0; }; done
mkdir -p "$dir" && say start && echo "+ $*" >"$log" && "$@" >>"$log" 2>&1; rc=$?
last=$(tr '\r' '\n' <"$log" | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-300)
((rc == 3)) && [[ -f $dir/diverged.json ]] && rc=0 how=collapsed
((rc == 0)) || { echo "run_all: ${dir##*/} failed ($stage, exit $rc): $last; full log: $log" >&2
  [[ -z ${RUN_ALL_PID:-} ]] || kill -USR1 "$RUN_ALL_PID"; exit 1; }
[[ $target != *.done ]] || { [[ -f $dir/ckpt.pt ]] && touch -r "$dir/ckpt.pt" "$target" || touch "$target"; }
say "${how:-done}" " (${SECONDS}s)${how:+: $last}"
endef
export JOB_SCRIPT := $(value JOB_SCRIPT)
JOB = bash -c "$$JOB_SCRIPT" job

folder = $(RUNS)/$1$(if $(filter-out 0,$2),-seed$2)# run, seed -> its folder
pair = $(if $(filter jtdmoe_% dual_pretrained,$1),$(foreach m,st rter,$(call folder,$m,$2)/$3))# what they mix
std_rob = $(if $(call pair,$1,$2),$(join --std= --rob=,$(call pair,$1,$2,ckpt.pt)))
own_alpha = $(patsubst jtdmoe_a%,--alphas %,$(filter jtdmoe_a%,$1))# a JTDMoE at its alpha
# run $1 in folder $2: evaluations $3, training script and flags $4 (none: evaluation only), seed $5; no target: no rule
define run
all: $(if $4,$2/train.done) $(patsubst %,$2/eval_%.json,$3)
$(if $4,$2/train.done): | $(call pair,$1,$5,train.done)
	$$(JOB) $$@ $(strip python $4 $(call std_rob,$1,$5) $(TRAIN) --epochs \
	  $(if $(filter jtdmoe_%,$1),$(JT_EPOCHS),$(EPOCHS)) --out $2 --resume)
$(patsubst %,$2/eval_%.json,$3) &: $(if $4,$2/train.done,$(call pair,$1,$5,train.done))
	$$(JOB) $2/eval $(strip python eval.py $(if $4,--ckpt $2/ckpt.pt $(call own_alpha,$1),$(call std_rob,$1,$5) \
	  --alphas 0.5,0.6,0.7,0.8,0.9,1.0 --out $2) --attack $(subst $() ,$(comma),$3) $(EVAL))
endef
seeded = $(if $1,$1$(if $(filter-out 0,$2), --seed $2))# training script and flags of one seed
experiment = $(foreach s,$(shell seq 0 $$(($(SEEDS) - 1))),\
  $(eval $(call run,$(strip $1),$(call folder,$(strip $1),$s),$(strip $2),$(call seeded,$(strip $3),$s),$s)))

#                  run              evaluations    training script and flags (none: evaluation only)
ifeq ($(PRESET),imagenet)  # Table 10 only
$(call experiment, at,              pgd adaptive,  train_at.py --method at)
$(call experiment, rter,            pgd adaptive,  train_rter.py --beta 6)
$(call experiment, trades,          pgd adaptive,  train_at.py --method trades)
else  # order = priority: the runs others depend on first, then the long ones
$(call experiment, st,              pgd aa smooth adaptive, train_st.py)
$(call experiment, rter,            pgd aa smooth adaptive, train_rter.py --beta 6)
$(call experiment, at,              pgd aa smooth adaptive, train_at.py --method at)
$(call experiment, dual_pretrained, pgd aa,)
$(call experiment, jtdmoe_a0.7,     pgd aa,        train_jtdmoe.py --alpha 0.7)
$(foreach a,0.5 0.6 0.8,$(call experiment, jtdmoe_a$a, , train_jtdmoe.py --alpha $a))
$(call experiment, trades,          pgd aa adaptive, train_at.py --method trades)
$(call experiment, advmoe,          pgd aa adaptive, train_at.py --method advmoe)
$(foreach b,1 3 9,$(call experiment, rter_b$b, pgd adaptive, train_rter.py --beta $b))
$(call experiment, rter_top2,       pgd adaptive,  train_rter.py --beta 6 --topk 2)
$(call experiment, at_top2,         pgd adaptive,  train_at.py --method at --topk 2)
$(call experiment, rter_e5,         pgd adaptive,  train_rter.py --beta 6 --experts 5)
$(call experiment, rter_e3,         pgd adaptive,  train_rter.py --beta 6 --experts 3)
endif
