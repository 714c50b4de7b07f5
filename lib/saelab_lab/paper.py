"""What the two papers report, as the generated tables quote it beside the storyworld numbers.

Braun et al. 2024 (arXiv 2405.12241), GPT-2 small, layer 6, at CE increase +0.145 unless said;
Olmo et al. 2024 (arXiv 2411.10397). Summaries: papers/e2e-sae/README.md, papers/g-sae/README.md.
"""

E2E_SETTING = "GPT-2 L6, CE +0.145"
L0_RATIO = "0.40"  # L0(e2e) / L0(local) = 27.5 / 69.4 (Table 2)
TABLE2_L0 = {"local": "69.4", "e2e": "27.5", "e2e+ds": "(similar to e2e)"}  # Table 2, layer 6
FEWER_ALIVE = "yes"  # Table 2: e2e leaves fewer latents alive than local
DOWNSTREAM = "e2e far higher, e2e+ds near local"  # Fig. 2
L2_RATIO = "e2e shrinks, e2e+ds restores"  # Table 5
WITHIN_NN_COS = "0.166 / 0.04"  # Fig. 3: local - e2e / local - e2e+ds
AUTOINTERP = "(autointerp: e2e no worse)"  # §3.5
GSAE_DEAD = "fewer"  # g-SAE vs TopK at equal k
GSAE_CE = "lower"
STEER_RATIO = 5.0  # g-SAE latents steer > 5x more than TopK's (probability added)
