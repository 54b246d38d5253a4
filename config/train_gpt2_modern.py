# GPT-2 (124M) with the modern recipe on FineWeb-Edu, for one node of 8 GPUs (A100/H100 80GB):
# python prepare_fineweb.py
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_modern.py
#
# The token budget is from the literature, not measured here: modded-nanogpt reached GPT-2's val
# loss (3.28 on FineWeb, as llm.c's 10B-token run) in 2.67B tokens with rotary embeddings, QK-norm,
# RMSNorm, ReLU², zero-initialised projections and Muon (its README at the 12-minute record), with
# its own schedule and per-parameter rates. FineWeb-Edu's losses are not FineWeb's, so the target
# here is GPT-2's loss on our val shard: python train.py config/eval_gpt2.py. Until a GPU run
# measures it, treat max_iters and the rates as a starting point.

out_dir = "out-gpt2-modern"
wandb_run_name = "gpt2-124M-modern"

dataset = "fineweb_edu"
total_batch_size = 524288  # as config/train_gpt2.py: 8 GPUs x 64 x 1024
batch_size = 64
block_size = 1024

n_layer = 12  # GPT-2 124M's shape
n_head = 12
n_embd = 768
dropout = 0.0

rope = True
norm = "rmsnorm"
qk_norm = True
mlp_act = "relu2"
tie_embeddings = False
zero_init_proj = True
logit_softcap = 30.0  # modded-nanogpt's cap at this size

optimizer = "muon"
muon_lr = 0.02  # modded-nanogpt's Muon rate, with the same sqrt(max(1, out/in)) scaling
learning_rate = 3e-3  # AdamW for embeddings, head and gains
min_lr = 3e-4
weight_decay = 0.0
beta2 = 0.95
max_iters = 5100  # x 524288 = 2.67B tokens
warmup_iters = 100

eval_interval = 250
eval_iters = 160
log_interval = 10
