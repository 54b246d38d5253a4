# A GPT-2 XL-shaped model (1.5B) from scratch on 10B tokens of FineWeb-Edu, sharded with FSDP over
# several nodes, e.g. 2 nodes of 8 GPUs (A100/H100 80GB), each node running:
# python prepare_fineweb.py
# torchrun --nnodes=2 --node_rank=N --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
#     train.py config/train_gpt2_xl_fsdp.py
# train.py's estimate for 16 GPUs: about 10 GB a GPU (most of it activations, checkpointed); on 8,
# about 12, so 24 GB GPUs do too. 10B tokens are a third of what Chinchilla's rule (20 a parameter)
# asks for this size: for 30B, prepare_fineweb.py --name=sample-100BT --max_tokens=30000000000 and
# --max_iters=28610.

out_dir = "out-gpt2-xl"
wandb_run_name = "gpt2-1.5B"

dataset = "fineweb_edu"
fsdp = True
activation_checkpointing = True
total_batch_size = 1048576  # 2**20 tokens a step, GPT-3's for its 1.3B model: 16 GPUs x 16 x 4 x 1024
batch_size = 16
block_size = 1024

n_layer = 48
n_head = 25
n_embd = 1600
dropout = 0.0
bias = True

learning_rate = 2e-4  # GPT-3's for 1.3B
min_lr = 2e-5
weight_decay = 0.1
beta2 = 0.95
max_iters = 9537  # 10e9 tokens / 2**20 tokens a step
warmup_iters = 358  # 375M tokens, GPT-3's warmup

eval_interval = 250
eval_iters = 80  # x 16 x 1024 tokens = 1.3M val tokens
log_interval = 10
hellaswag_interval = 0  # not during sharded training: hellaswag.py scores the checkpoint
