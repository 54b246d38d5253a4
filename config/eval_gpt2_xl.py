# Loss of OpenAI's gpt2-xl on the FineWeb-Edu val shard (python prepare_fineweb.py first):
# python train.py config/eval_gpt2_xl.py
init_from = "gpt2-xl"
dataset = "fineweb_edu"
out_dir = "out-eval-gpt2-xl"
batch_size = 8
block_size = 1024  # GPT-2's whole context: train.py's default is the char model's 256
eval_iters = 500  # 500 x 8 x 1024 = 4M tokens
eval_only = True
wandb_log = False
