# GPT-2 (124M) made into a chat model on a Hugging Face chat set, for GPUs:
# python prepare_chat.py --dataset HuggingFaceTB/smol-smoltalk --out_dir data/smoltalk   # conversations <= 1024 tokens
# torchrun --standalone --nproc_per_node=8 train.py config/chat_gpt2.py                   # from OpenAI's GPT-2
# torchrun --standalone --nproc_per_node=8 train.py config/chat_gpt2.py --init_from=out-gpt2   # or from ours
# python chat.py --out_dir=out-gpt2-chat, or python serve.py --out_dir=out-gpt2-chat
# OpenAI's GPT-2 has 50257 token ids: it grows rows for the 4 chat tokens (to 50304, as ours have).

out_dir = "out-gpt2-chat"
init_from = "gpt2"
eval_interval = 250
eval_iters = 50
log_interval = 10
always_save_checkpoint = False

dataset = "smoltalk"
# 131,072 tokens a step: 128 rows of 1024, each starting at a conversation; 8 GPUs x 16, or accumulation
total_batch_size = 131072
batch_size = 16
block_size = 1024
dropout = 0.0

learning_rate = 1e-4  # fine-tuning: a tenth of pretraining's peak, or less
min_lr = 1e-5
weight_decay = 0.0
beta2 = 0.95
max_iters = 2000
warmup_iters = 50
