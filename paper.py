"""The papers' numbers, transcribed, shown beside ours on their presets by report.py."""
# Tables 1-10: Zhang, Xu, Hu, Wang, "Optimizing Robustness and Accuracy in Mixture
# of Experts: A Dual-Model Approach", ICML 2025. Rows: (SA, RA, RA-E, RA-R) for single MoEs, (SA, RA, RA-RMoE,
# RA-SMoE) for dual models, in %. Tables A1, A2: the AdvMoE appendix (the MoE-CNN), below.
PAPER = {
    "table1": {"cifar10": {"pgd": (92.14, 52.54, 3.11, 54.67), "aa": (92.14, 14.25, 2.95, 55.2)},  # ST, PGD-50 and AA
               "tinyimagenet": {"pgd": (82.05, 34.53, 29.21, 59.0), "aa": (82.05, 14.24, 26.11, 58.95)}},
    "table2": {"cifar10": {"at": (79.08, 53.74, 73.85, 78.91), "rter": (77.81, 69.09, 75.71, 72.28),  # top-1, top-2
                           "at_top2": (79.20, 54.65, 74.66, 76.09), "rter_top2": (78.78, 70.05, 76.2, 72.35)}},
    "table3": {  # single MoEs; dual models (pre-trained at alpha 0.7 / 0.8 / 0.9, JTDMoE at 0.7); PGD
        "cifar10": {"st": (92.14, 52.54, 3.11, 54.67), "at": (79.08, 53.74, 73.85, 78.91),
                    "rter": (77.81, 69.09, 75.71, 72.28), "dual_0.7": (89.81, 67.81, 79.47, 52.93),
                    "dual_0.8": (87.58, 68.27, 77.25, 54.99), "dual_0.9": (83.27, 70.73, 75.03, 60.87),
                    "jtdmoe_0.7": (92.29, 74.62, 85.42, 68.73)},
        "tinyimagenet": {"st": (82.05, 34.53, 29.21, 59.00), "at": (70.77, 50.94, 42.09, 83.81),
                         "rter": (68.51, 56.79, 46.32, 81.26), "dual_0.7": (80.74, 53.11, 68.92, 47.39),
                         "dual_0.8": (77.89, 55.27, 65.94, 55.16), "dual_0.9": (74.2, 56.58, 61.95, 62.80),
                         "jtdmoe_0.7": (84.91, 57.39, 69.58, 53.32)}},
    "table4": {"cifar10": {"pretrained": (89.81, 33.64, 34.20, 14.34), "jtdmoe": (92.29, 54.55, 51.13, 45.55)},  # AA
               "tinyimagenet": {"pretrained": (80.74, 51.27, 56.25, 26.88), "jtdmoe": (84.91, 52.91, 60.98, 28.82)}},
    "table5": {"cifar10": {"airplane": 5.11, "automobile": 3.49, "bird": 7.5, "cat": 5.55, "deer": 10.27,  # margin
                           "dog": 14.42, "frog": 6.46, "horse": 4.03, "ship": 1.25, "truck": 4.58}},
    "table6": {"cifar10": {"st": (92.14, 46.02, 3.11, 54.67), "at": (79.08, 51.03, 73.85, 78.91),  # smooth attack
                           "rter": (77.81, 68.96, 75.71, 72.28)}},
    "table7": {"cifar10": {"pgd": {"trades": (83.81, 52.54, 72.72, 76.63), "advmoe": (76.83, 58.67, 73.79, 74.03),
                                   "rter": (77.81, 69.09, 75.71, 72.28)},
                           "aa": {"trades": (83.81, 38.90, 54.72, 56.84), "advmoe": (76.83, 44.17, 54.62, 55.06),
                                  "rter": (75.92, 54.36, 57.86, 54.84)}}},
    "table8": {"cifar10": {"rter_e3": (75.85, 69.03, 74.79, 72.42), "rter": (77.81, 69.09, 75.71, 72.28),  # E experts
                           "rter_e5": (79.77, 70.00, 76.51, 71.86)}},
    "table9": {"cifar10": {"rter_b1": (81.68, 64.13, 68.67, 69.64), "rter_b3": (79.91, 65.92, 70.75, 72.05),  # beta
                           "rter": (77.81, 69.09, 75.71, 72.28), "rter_b9": (10.0, 10.0, 10.0, 10.0)}},
    "table10": {"imagenet": {"at": (60.32, 44.64, 43.06, 70.24), "trades": (61.94, 45.54, 43.75, 70.37),  # ViT experts
                             "rter": (68.38, 56.16, 44.99, 70.82)}},
    # AdvMoE appendix, CIFAR-10 only (Table A2's caption names CIFAR-100 too, but it prints no CIFAR-100 block).
    # Each (mean, std) as printed, in %; then GFLOPs and the printed reduction against AT (Dense) (% down, None for
    # AT (Dense) itself). Table A1 (10-step PGD training, r = 0.5): (RA, RA-AA, SA, GFLOPs, reduction).
    "tableA1": {"cifar10": {
        "resnet18": {"dense": ((50.97, 0.14), (46.29, 0.15), (81.44, 0.15), 0.54, None),
                     "sdense": ((48.22, 0.11), (43.79, 0.15), (79.93, 0.12), 0.14, 74),
                     "sparse": ((48.29, 0.14), (43.18, 0.19), (79.35, 0.17), 0.14, 74),
                     "moe": ((46.79, 0.49), (41.13, 0.29), (78.32, 0.51), 0.15, 72),
                     "advmoe": ((52.22, 0.14), (46.44, 0.09), (79.62, 0.12), 0.15, 72)},
        "wrn28_10": {"dense": ((52.35, 0.18), (46.49, 0.11), (81.45, 0.15), 5.25, None),
                     "sdense": ((50.92, 0.18), (44.69, 0.19), (80.33, 0.15), 1.31, 75),
                     "sparse": ((48.69, 0.18), (44.50, 0.16), (80.32, 0.11), 1.31, 75),
                     "moe": ((47.24, 0.57), (42.39, 0.26), (76.21, 0.42), 1.75, 67),
                     "advmoe": ((56.13, 0.11), (46.73, 0.08), (82.19, 0.14), 1.75, 67)}}},
    # Table A2 (2-step PGD training): per model scale r, (RA, SA, GFLOPs, reduction); AT (Dense) at r = 1.
    # As printed: WRN-28-10 r = 0.8 reads 3.36 (38% down) though 3.36 / 5.25 is 36% down.
    "tableA2": {"cifar10": {
        "resnet18": {"dense": ((50.13, 0.13), (82.99, 0.11), 0.54, None),
                     "sdense": {"0.2": ((43.83, 0.11), (78.28, 0.14), 0.13, 76),
                                "0.5": ((48.12, 0.09), (80.18, 0.11), 0.14, 74),
                                "0.8": ((49.44, 0.09), (81.32, 0.11), 0.36, 33)},
                     "sparse": {"0.2": ((43.24, 0.14), (79.14, 0.14), 0.13, 76),
                                "0.5": ((47.93, 0.17), (80.45, 0.13), 0.14, 74),
                                "0.8": ((48.32, 0.13), (81.77, 0.11), 0.36, 33)},
                     "moe": {"0.2": ((38.75, 0.41), (76.54, 0.29), 0.14, 74),
                             "0.5": ((45.57, 0.51), (78.84, 0.75), 0.15, 72),
                             "0.8": ((45.99, 0.42), (79.46, 0.31), 0.37, 31)},
                     "advmoe": {"0.2": ((49.18, 0.12), (79.03, 0.19), 0.14, 74),
                                "0.5": ((51.83, 0.12), (80.15, 0.11), 0.15, 72),
                                "0.8": ((52.38, 0.14), (81.44, 0.13), 0.37, 31)}},
        "wrn28_10": {"dense": ((51.75, 0.12), (83.54, 0.15), 5.25, None),
                     "sdense": {"0.2": ((49.59, 0.17), (79.93, 0.13), 0.21, 96),
                                "0.5": ((50.66, 0.13), (82.24, 0.10), 1.31, 75),
                                "0.8": ((51.73, 0.17), (82.88, 0.14), 3.36, 38)},
                     "sparse": {"0.2": ((48.37, 0.21), (79.32, 0.21), 0.21, 96),
                                "0.5": ((48.95, 0.14), (82.44, 0.17), 1.31, 75),
                                "0.8": ((50.73, 0.19), (82.11, 0.23), 3.36, 38)},
                     "moe": {"0.2": ((42.29, 0.51), (75.32, 0.38), 0.94, 82),
                             "0.5": ((46.73, 0.46), (77.42, 0.73), 1.75, 67),
                             "0.8": ((46.94, 0.45), (79.11, 0.27), 4.57, 13)},
                     "advmoe": {"0.2": ((54.02, 0.09), (79.55, 0.12), 0.94, 82),
                                "0.5": ((55.73, 0.13), (84.32, 0.18), 1.75, 67),
                                "0.8": ((56.07, 0.14), (84.45, 0.09), 4.57, 13)}}}},
}

# The attack behind the papers' numbers, as eval.py names ours: report.py puts ours under it beside each paper cell.
# ICML tables, by the attack of our row: its PGD is PGD-50 at step 2/255 (ours), its smooth attack ours, its
# "50-step AutoAttack, step 2/255" in its public code an APGD-CE routine (ours: apgd-ce50, APGD-CE alone, 50
# iterations). AdvMoE appendix, by metric: RA from its code's PGD-10 on CE(F) + 6 CE(router, y mod E)
# (utils/eval_utils.py adv_val; ours: pgd10-advmoe), RA-AA from torchattacks' standard AutoAttack (auto_attack_eval.py;
# ours: aa, the reference code of the same four attacks).
PAPER_ATTACK = {"pgd": "pgd", "smooth": "smooth", "aa": "apgd-ce50"}
ADVMOE_PAPER_ATTACK = {"ra": "pgd10-advmoe", "ra_aa": "aa"}
PAPER_ATTACK_TEXT = {  # what each of those attacks is, for the notes under a table
    "pgd": "our PGD (eval_pgd.json), the paper's PGD-50 at step 2/255",
    "smooth": "our smooth attack (eval_smooth.json), the paper's",
    "aa": "standard AutoAttack (eval_aa.json; the AdvMoE code runs torchattacks' port of it)",
    "apgd-ce50": "APGD-CE alone, 50 iterations, 1 restart (eval_apgd-ce50.json), the ICML paper's '50-step "
                 "AutoAttack, step 2/255' as its public code runs it: APGD sets its own step (2 eps, halved where the "
                 "loss stalls), and standard AutoAttack adds APGD-T, FAB-T and Square",
    "pgd10-advmoe": "the AdvMoE code's PGD-10 (eval_pgd10-advmoe.json): a uniform start, 10 signed steps of 2/255 up "
                    "CE(F(x+d), y) + 6 CE(router(x+d), y mod E), CE alone for a dense network (E = 1)",
}
