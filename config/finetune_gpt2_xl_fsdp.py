# Fine-tune GPT-2 XL (1.5B) on Shakespeare on GPUs of 24 GB: its weights, gradients and AdamW's state
# take 25 GB, more than one such GPU holds, so FSDP shards them. train.py prints its estimate first:
# about 13 GB a GPU on 2 of them, 7 GB on 4; on 1 it stops and says so.
# python prepare_shakespeare.py --tokenizer=gpt2
# torchrun --standalone --nproc_per_node=2 train.py config/finetune_gpt2_xl_fsdp.py

out_dir = "out-shakespeare-xl"
eval_interval = 5
eval_iters = 40
log_interval = 1
always_save_checkpoint = False  # only what improves val loss: fine-tuning overfits fast

init_from = "gpt2-xl"
dataset = "shakespeare"
fsdp = True
activation_checkpointing = True  # 48 blocks' activations would take more than the sharded state saves

# 32 x 1024 tokens per step, as config/finetune_shakespeare.py; 32 micro-steps divide among 1, 2, 4 or 8 GPUs
batch_size = 1
gradient_accumulation_steps = 32
block_size = 1024
dropout = 0.0
max_iters = 20

learning_rate = 1e-5  # constant and smaller than the 124M model's: the larger model moves further per step
decay_lr = False
beta2 = 0.95
