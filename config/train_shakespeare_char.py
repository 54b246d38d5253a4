# A small character-level Shakespeare model for one GPU: 6 layers, 6 heads, 384 wide, context 256.
# python prepare_shakespeare.py && python train.py config/train_shakespeare_char.py

out_dir = "out-shakespeare-char"
eval_interval = 250  # frequent: this tiny model overfits
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep only checkpoints that improve val loss

wandb_project = "shakespeare-char"
wandb_run_name = "mini-gpt"

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # characters of context

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # small models can take a higher rate
max_iters = 5000
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a little higher: few tokens per step
warmup_iters = 100
