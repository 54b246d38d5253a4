# The character-level Shakespeare model sized for a laptop CPU: 70 to 90 s on 2 cores.
# python prepare_shakespeare.py && python train.py config/train_shakespeare_char_cpu.py
# The model of nanoGPT's CPU command line (4 layers, 4 heads, 128 wide, context 64), trained
# with three times its learning rate for 1200 steps instead of 2000: a lower val loss, sooner.

out_dir = "out-shakespeare-char-cpu"
eval_interval = 200
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 3e-3
max_iters = 1200
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 50

device = "cpu"
compile = False  # compiling costs more than it saves at this size on a CPU
