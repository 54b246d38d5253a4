# The laptop record: 4 minutes on 2 quiet CPU cores, whole-val-split loss far below the best n-gram's.
# python prepare_shakespeare.py --tokenizer bpe --vocab_size 1024 && python train.py config/train_shakespeare_record_cpu.py
# A 1024-token vocabulary learned from the train text (about 2.6 characters a token), the modern
# switches with the head tied to the embedding, 4 x 192, a context of 128 tokens, batches of 16,
# Muon with Polar Express's coefficients and NorMuon's variance normalisation, a constant rate
# after warmup, and evals and the checkpoint of a moving average of the weights.
# Chosen on a split held out of train (docs/evaluation.md#the-laptop-record), never on val.

out_dir = "out-shakespeare-record-cpu"
eval_interval = 500  # the whole split takes about 1.5 s: three points of the val curve for plot.py
eval_iters = 0  # the whole val split, every token once
log_interval = 100
always_save_checkpoint = False

dataset = "shakespeare_bpe1024"
gradient_accumulation_steps = 1
batch_size = 16
block_size = 128

n_layer = 4
n_head = 4
n_embd = 192
dropout = 0.0  # the average below keeps the model from over-fitting this small text, as dropout did
rope = True
norm = "rmsnorm"
qk_norm = True
mlp_act = "relu2"
tie_embeddings = True
zero_init_proj = True
logit_softcap = 15.0

optimizer = "muon"  # for the blocks' matrices; AdamW (learning_rate) for the embedding and the gains
muon_lr = 0.02
muon_coefficients = "polar_express"
muon_beta2 = 0.9
learning_rate = 3e-3
min_lr = 3e-3  # no decay: the average of the weights does better here than a rate annealed to a tenth
ema_decay = 0.998  # about the last 500 steps, and a little of the first step's weights, which helps here
max_iters = 1000  # 1,100 scored 0.007 bits lower, in 234 to 246 s: too near the 4 minutes
beta2 = 0.99
warmup_iters = 50

device = "cpu"
compile = False  # Inductor's C++ makes a step 5 to 10% faster here, and takes about 26 s to compile
