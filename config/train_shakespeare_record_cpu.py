# The laptop record: under 5 minutes on 2 CPU cores, whole-val-split loss below the best n-gram's.
# python prepare_shakespeare.py --tokenizer bpe --vocab_size 512 && python train.py config/train_shakespeare_record_cpu.py
# A 512-token vocabulary learned from the train text (about 2 characters a token), the modern
# switches with AdamW, 4 x 192, a context of 128 tokens. Chosen on a split held out of train
# (docs/evaluation.md#the-laptop-record), with AdamW: Muon was then about 15x slower than AdamW on
# CPUs without AVX-512 BF16 (torch.optim.Muon's bfloat16); optim.Muon's float32 is still to be tried.

out_dir = "out-shakespeare-record-cpu"
eval_interval = 500  # the whole split takes 3 to 4 s: five points of the val curve for plot.py
eval_iters = 0  # the whole val split, every token once
log_interval = 100
always_save_checkpoint = False

dataset = "shakespeare_bpe512"
gradient_accumulation_steps = 1
batch_size = 8
block_size = 128

n_layer = 4
n_head = 4
n_embd = 192
dropout = 0.0
rope = True
norm = "rmsnorm"
qk_norm = True
mlp_act = "relu2"
tie_embeddings = False
zero_init_proj = True
logit_softcap = 15.0

optimizer = "adamw"
learning_rate = 3e-3
min_lr = 3e-4
max_iters = 2000
beta2 = 0.99
warmup_iters = 50

device = "cpu"
compile = False
