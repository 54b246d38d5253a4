# The quick start's character model made into a chat model, on a laptop CPU:
# python prepare_shakespeare.py && python train.py config/train_shakespeare_char_cpu.py   # the quick start
# python prepare_chat.py --shakespeare --tokenizer_from data/shakespeare_char --block_size=64
# python train.py config/chat_shakespeare_char_cpu.py
# python chat.py --out_dir=out-shakespeare-chat
# The chat set is Tiny Shakespeare's speeches, each answered by the next one; the quick start's
# context is 64 characters, so the turns are a line or two.

out_dir = "out-shakespeare-chat"
init_from = "out-shakespeare-char-cpu"  # the quick start's run, which grows rows for the 4 chat tokens
eval_interval = 100
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

dataset = "shakespeare_chat"
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64
dropout = 0.0

learning_rate = 1e-3
max_iters = 300
beta2 = 0.99

device = "cpu"
compile = False
