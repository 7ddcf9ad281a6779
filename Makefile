# The runs and evaluations of one preset as files: make orders them, runs -j at once, reuses what exists, dry-runs
# (-n). run_all.sh calls it; by hand: make -s -j2 RUNS=runs/digits-quick QUICK=1 [PRESET=digits SEEDS=1 DATA=data]
# RUN/train.done: the training exited 0 or 3 (diverged: a collapse), dated like its checkpoint: evaluations (eval.py's
# RUN/eval_<attack>.json) newer than it stay. Delete a JSON to redo it, train.done to go on or retry, a run to retrain.
PRESET ?= digits
SEEDS ?= 1
RUNS ?= runs/$(PRESET)$(if $(QUICK),-quick)
.DEFAULT_GOAL := all

# pick(quick, digits, paper preset, fashion_mnist). Quick: tiny attacks and test subsets, AutoAttack cut to APGD-CE,
# 5 steps an epoch on digits. Digits: the scripts' defaults, the curves PGD-20 RA every 2nd epoch (every epoch: +20 %
# time), AutoAttack a fixed 100 test points (on one core 5-25 s per target; Square's 5,000 queries on the robust points
# dominate). fashion_mnist: a CPU preset of the claims that matter most, on a fixed training subset (TRAIN_N)
FASHION := $(filter fashion_mnist,$(PRESET))
pick = $(if $(QUICK),$1,$(if $(filter digits,$(PRESET)),$2,$(if $(FASHION),$4,$3)))
EPOCHS := $(call pick,2,30,$(if $(filter cifar%,$(PRESET)),130,10),10)
JT_EPOCHS := $(call pick,1,10,10,5)
TRAIN_N ?= $(call pick,1000,0,0,10000)# fashion_mnist: 10,000 of 60,000 training images, 10 epochs, for 2.5 h a seed
CNN_EPOCHS := $(call pick,2,30,100)# MoE-CNN runs (AdvMoE appendix: 100; AT (Sparse): 100 mask + 100 fine-tuning)
A2_EPOCHS := $(call pick,2,20,100)# digits: no claim rests on Table A2, so it trains less to keep the preset in 40 min
SCALES := $(call pick,0.5,0.2 0.5 0.8,0.2 0.5 0.8)# Table A2's model scales r
# CURVE of run $1 (read inside `train`): quick trains with 2-step PGD, except the runs whose table row names
# their train-time steps (Table A1: 10), so a quick row still means what the table says
CURVE = $(call pick,--eval-n 60 --eval-steps 3$(if $(filter a1%,$1),, --steps 2),--eval-steps 20 --eval-every 2,\
  --eval-n 1000,--eval-n 500 --eval-steps 10 --eval-every 3)
PRETRAINED ?= --pretrained# ViT experts from the hub (timm); run_all.sh --no-pretrained empties it
PAPER := $(if $(filter digits fashion_mnist,$(PRESET)),,--data-dir $(or $(DATA),data))# the data flag of a paper preset
# TinyImageNet / ImageNet as the public code attacks them: eps and step 2/255 (the final PGD too), in 224-pixel space
# (data.py resizes on the device), batch 512
VIT_PGD := $(if $(filter tinyimagenet imagenet,$(PRESET)),--step-size 0.00784314)
VIT_TRAIN := $(if $(VIT_PGD),--bs 512 $(VIT_PGD))
EVAL := $(PAPER) $(VIT_PGD)
# the papers' own attacks beside ours on the paper presets: the ICML paper's '50-step AutoAttack' (APGD-CE, 50
# iterations) on every run that faces AutoAttack, the AdvMoE code's PGD-10 (CE + 6 CE(router, y mod E)) on Tables A1/A2
ICML_AA := $(if $(PAPER),apgd-ce50)
ADVMOE_PGD := $(if $(PAPER),pgd10-advmoe)
GPU := $(if $(filter cifar%,$(PRESET)),--amp --channels-last,--amp)
# a run's model: Tables A1 / A2 (a1_*, a2_*; a1w_*, a2w_*: WRN-28-10) the MoE-CNN family, else the preset's experts
arch = $(if $(filter a1w_% a2w_%,$1),--arch moe_wrn28_10,$(if $(filter a1_% a2_%,$1),--arch $(if $(PAPER),moe_resnet18,\
  moe_cnn),$(if $(PAPER),--arch $(if $(filter cifar%,$(PRESET)),resnet18,vit_small $(PRETRAINED)))))
table_epochs = $(if $(filter jtdmoe_%,$1),$(JT_EPOCHS),$(if $(filter a1%,$1),$(CNN_EPOCHS),$(if $(filter a2%,$1),\
  $(A2_EPOCHS),$(EPOCHS))))
# AT (Sparse): its table's epochs for the masks, as many for the fine-tuning (quick: one each)
epochs = $(if $(findstring _sparse,$1),$(if $(QUICK),2,$(shell expr 2 \* $(call table_epochs,$1))),\
  $(call table_epochs,$1))
train = $(if $(PAPER),--dataset $(PRESET) $(call arch,$1) $(GPU) $(PAPER) $(VIT_TRAIN),$(call arch,$1) $(if $(FASHION),--dataset \
  fashion_mnist --data-dir $(or $(DATA),data) --train-n $(TRAIN_N)) $(if $(QUICK),--bs 256)) $(CURVE)
EVAL_N ?= $(call pick,40,0,0,2000)# test points of the final evaluations (0: all)
AA_N ?= $(call pick,20,100,0,200)
SMOOTH_N ?= $(call pick,,,,500)# fashion_mnist: the smooth attack runs all 4 experts on every point, 3x PGD's time
# fashion_mnist: AutoAttack, the costliest, on the targets and the alpha the claims read
aa_only = $(if $(FASHION),$(if $(dual),--aa-alphas 0.7,$(if $(filter st rter at,$1),,--aa-targets whole)))
EVAL += $(if $(QUICK),--steps 5 --aa-version quick) --n $(EVAL_N) --aa-n $(AA_N)$(if $(SMOOTH_N), --smooth-n $(SMOOTH_N))
comma := ,

# $(JOB) TARGET COMMAND...: the output to RUN/<stage>.log; a stage whose input checkpoint was never written (its run
# collapsed in epoch 1) is skipped; a failure says the log's last line and stops run_all (USR1) with the other jobs
define JOB_SCRIPT
target=$1; shift; dir=${target%/*}; stage=${target##*/}; stage=${stage%.*}; log=$dir/$stage.log
say() { echo "[$(date +%T)] $1 ${dir##*/} $stage$2"; }
for arg; do [[ $arg != */ckpt.pt || -f ${arg#--*=} ]] || { say skipped ": no ${arg#--*=}"; exit 0; }; done
mkdir -p "$dir" && say start && echo "+ $*" >"$log" && "$@" >>"$log" 2>&1; rc=$?
last=$(tr '\r' '\n' <"$log" | grep -v '^[[:space:]]*$' | tail -n 1)
((rc == 3)) && [[ -f $dir/diverged.json ]] && rc=0 how=collapsed
((rc == 0)) || { why="run_all: ${dir##*/} failed ($stage, exit $rc): $last; full log: $log"; echo "$why" >&2
  [[ -z ${RUN_ALL_FAILED:-} ]] || echo "$why" >>"$RUN_ALL_FAILED"  # run_all says it again once make is gone
  [[ -z ${RUN_ALL_PID:-} ]] || kill -USR1 "$RUN_ALL_PID"; exit 1; }
[[ $target != *.done ]] || { [[ -f $dir/ckpt.pt ]] && touch -r "$dir/ckpt.pt" "$target" || touch "$target"; }
say "${how:-done}" " (${SECONDS}s)${how:+: $last}"
endef
export JOB_SCRIPT := $(value JOB_SCRIPT)
JOB = bash -c "$$JOB_SCRIPT" job

folder = $(RUNS)/$1$(if $(filter-out 0,$2),-seed$2)# run, seed -> its folder
dual = $(filter jtdmoe_% dual_pretrained,$1)
# what a run starts from: a dual model mixes st and rter, AT (Sparse) prunes its table's AT (Dense)
pair = $(foreach m,$(if $(dual),st rter,$(if $(findstring _sparse,$1),$(firstword $(subst _, ,$1))_dense)),\
  $(call folder,$m,$2)/$3)
std_rob = $(if $(dual),$(join --std= --rob=,$(call pair,$1,$2,ckpt.pt)),$(if $(call pair,$1,$2),--init \
  $(call pair,$1,$2,ckpt.pt)))
own_alpha = $(patsubst jtdmoe_a%,--alphas %,$(filter jtdmoe_a%,$1))# a JTDMoE at its alpha
# run $1 in folder $2: evaluations $3, training script and flags $4 (none: evaluation only), seed $5; no target: no rule
define run
all: $(if $4,$2/train.done) $(patsubst %,$2/eval_%.json,$3)
$(if $4,$2/train.done): | $(call pair,$1,$5,train.done)
	$$(JOB) $$@ $(strip python $4 $(call std_rob,$1,$5) $(call train,$1) --epochs $(call epochs,$1) --out $2 --resume)
$(patsubst %,$2/eval_%.json,$3) &: $(if $4,$2/train.done,$(call pair,$1,$5,train.done))
	$$(JOB) $2/eval $(strip python eval.py --keep-done $(if $4,--ckpt $2/ckpt.pt $(call own_alpha,$1),$(call std_rob,$1,$5) \
	  --alphas 0.5,0.6,0.7,0.8,0.9,1.0 --out $2) --attack $(subst $() ,$(comma),$3) $(EVAL) $(call aa_only,$1))
.PRECIOUS: $(patsubst %,$2/eval_%.json,$3)# eval.py writes each whole: a kill keeps the finished ones
endef
seeded = $(if $1,$1$(if $(filter-out 0,$2), --seed $2))# training script and flags of one seed
experiment = $(foreach s,$(shell seq 0 $$(($(SEEDS) - 1))),\
  $(eval $(call run,$(strip $1),$(call folder,$(strip $1),$s),$(strip $2),$(call seeded,$(strip $3),$s),$s)))

#                  run              evaluations    training script and flags (none: evaluation only)
ifeq ($(PRESET),imagenet)  # Table 10 only
$(call experiment, at,              pgd adaptive,  train_at.py --method at)
$(call experiment, rter,            pgd adaptive,  train_rter.py --beta 6)
$(call experiment, trades,          pgd adaptive,  train_at.py --method trades)
else ifneq ($(PRESET),cifar100)  # (CIFAR-100: Table A2 only) order = priority: the runs others depend on first
# every run a worst-case claim compares faces the same attacks: pgd aa smooth adaptive (paper presets: and apgd-ce50)
$(call experiment, st,              pgd aa $(ICML_AA) smooth adaptive, train_st.py)
$(call experiment, rter,            pgd aa $(ICML_AA) smooth adaptive, train_rter.py --beta 6)
$(call experiment, at,              pgd aa $(ICML_AA) smooth adaptive, train_at.py --method at)
$(call experiment, dual_pretrained, pgd aa $(ICML_AA),)
$(call experiment, jtdmoe_a0.7,     pgd aa $(ICML_AA), train_jtdmoe.py --alpha 0.7)
$(call experiment, jtdmoe_pub_a0.7, pgd aa $(ICML_AA), train_jtdmoe.py --alpha 0.7 --upper std --kl-experts all \
  --optimizers one)
$(call experiment, trades,          pgd aa $(ICML_AA) smooth adaptive, train_at.py --method trades)
$(call experiment, advmoe,          pgd aa $(ICML_AA) smooth adaptive, train_advmoe.py)
$(call experiment, rter_top2,       pgd aa $(ICML_AA) smooth adaptive, train_rter.py --beta 6 --topk 2)
$(call experiment, at_top2,         pgd aa $(ICML_AA) smooth adaptive, train_at.py --method at --topk 2)
ifeq ($(FASHION),)  # the sweeps: Figure 7 (alpha), Table 9 (beta; the KL over every expert), Table 8 (E)
$(foreach a,0.5 0.6 0.8,$(call experiment, jtdmoe_a$a, pgd, train_jtdmoe.py --alpha $a))
$(foreach b,1 3 6 9,$(call experiment, rter_b$b, pgd, train_rter.py --beta $b --kl-experts all))
$(call experiment, rter_e5,         pgd,           train_rter.py --beta 6 --experts 5)
$(call experiment, rter_e3,         pgd,           train_rter.py --beta 6 --experts 3)
endif
endif
# AdvMoE appendix, MoE-CNN: Table A1 (10-step training, r = 0.5) on digits / CIFAR-10, Table A2 (2-step training,
# r in SCALES, AT (Dense) at r = 1) on digits / CIFAR-10 / CIFAR-100; a1w_, a2w_: WRN-28-10 (paper presets).
# Every row TRADES-trained (beta 6) as the public code trains them; its 2-step training attack steps 5/255 at eps
# 8/255, digits the same 5/8 of its eps 0.15.
# cnn TABLE, evaluations, train PGD steps (and step size), scale r, run name suffix
cnn = $(call experiment, $1_sdense$5, $2, train_at.py --method trades --experts 1 --scale $4 $3)\
  $(call experiment, $1_sparse$5, $2, train_sparse.py --loss trades --scale $4 $3)\
  $(call experiment, $1_moe$5,    $2, train_at.py --method trades --scale $4 $3)\
  $(call experiment, $1_advmoe$5, $2, train_advmoe.py --loss trades --scale $4 $3)
dense = $(call experiment, $1_dense, $2, train_at.py --method trades --experts 1 --scale 1 $3)
STEPS2 := --steps 2 --step-size $(if $(PAPER),0.0196078,0.09375)
ifneq ($(filter digits cifar10,$(PRESET)),)
$(foreach b,a1 $(if $(PAPER),a1w),$(call dense,$b,pgd aa $(ADVMOE_PGD),--steps 10)$(call cnn,$b,pgd aa $(ADVMOE_PGD),\
  --steps 10,0.5))
endif
ifneq ($(filter digits cifar10 cifar100,$(PRESET)),)
$(foreach b,a2 $(if $(PAPER),a2w),$(call dense,$b,pgd $(ADVMOE_PGD),$(STEPS2))$(foreach r,$(SCALES),$(call cnn,$b,\
  pgd $(ADVMOE_PGD),$(STEPS2),$r,_r$r)))
endif
