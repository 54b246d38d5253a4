# GPT-2 (124M) on 10B tokens of FineWeb-Edu, for one node of 8 GPUs (A100/H100 80GB):
# python prepare_fineweb.py
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

out_dir = "out-gpt2"
wandb_run_name = "gpt2-124M"

dataset = "fineweb_edu"
# ~0.5M tokens per step, as GPT-3's paper for models of this size: 2**19 = 8 GPUs x 64 x 1024.
# On smaller GPUs lower batch_size: gradient accumulation makes up the difference.
total_batch_size = 524288
batch_size = 64
block_size = 1024

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True

learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 0.1
beta2 = 0.95
max_iters = 19073  # 10e9 tokens / 524288 tokens per step: one pass over the sample
warmup_iters = 715  # 375M tokens, GPT-3's warmup

eval_interval = 250
eval_iters = 160  # x 64 x 1024 = 10M val tokens, 20 batches per GPU
log_interval = 10
hellaswag_interval = 250  # HellaSwag's 10,042 val examples, split over the GPUs: OpenAI's 124M has acc_norm 0.2955
