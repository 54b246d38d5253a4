# Fine-tune GPT-2 (124M) on Shakespeare, GPT-2 BPE tokens:
# python prepare_shakespeare.py --tokenizer=gpt2 && python train.py config/finetune_shakespeare.py
# Bigger GPT-2s: --init_from=gpt2-xl (needs a large GPU; add --activation_checkpointing=True if short of memory).

out_dir = "out-shakespeare"
eval_interval = 5
eval_iters = 40
log_interval = 1
always_save_checkpoint = False  # only what improves val loss: fine-tuning overfits fast

init_from = "gpt2"
dataset = "shakespeare"

# 32 x 1024 tokens per step; ~300K tokens of training text, so one step is ~10% of an epoch
batch_size = 1
gradient_accumulation_steps = 32
block_size = 1024
dropout = 0.0
max_iters = 20

learning_rate = 3e-5  # constant and small: the weights are already good
decay_lr = False
beta2 = 0.95  # as GPT-2 was trained
