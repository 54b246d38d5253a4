"""
Benchmarks: nothing imports them; each measures one job of the repo, from its root.

  python -m bench.train      training throughput: forward+backward and the optimizer step, MFU
  python -m bench.sample     generation tokens/s, with and without the KV cache
  python -m bench.serve      serve.py's tokens/s through its HTTP API, 1 to 8 concurrent streams
  python -m bench.hellaswag  HellaSwag examples/s, eager and compiled, by batch size
  python -m bench.prepare    prepare_fineweb.py's tokens/s beside tiktoken's own ceiling
  python -m bench.tokenizer  learning a BPE vocabulary (seconds, memory); its tokens/s beside GPT-2's
"""
