#!/usr/bin/env python3
"""Hugging Face transformers decode throughput on the GPU: the baseline that
switchyard-engine-bench --device cuda is compared with in the same run.

Builds the model from a config.json with random weights (no hub access), in
bf16 on cuda, and for each batch size measures greedy generation of
--new-tokens tokens after a --prompt-len prompt: decode tokens/s =
batch * (N - 1) / (t(N) - t(1)), where t(1) is a generate() of one token
(the prefill), each the median of --repeats runs after a warm-up.

  python3 bench/hf_decode.py --config-dir bench/configs/qwen3_30b_a3b_2layers \
      --batch-sizes 1,16,64,256 --prompt-len 32 --new-tokens 64
"""
import argparse
import json
import statistics
import sys
import time

import torch
import transformers


def build(config_dir, layers, experts_impl):
    cfg = transformers.AutoConfig.from_pretrained(config_dir)
    if layers:
        cfg.num_hidden_layers = layers
    if experts_impl:
        cfg._experts_implementation = experts_impl
    with torch.device("cuda"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        except TypeError:
            model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.eval()
    return cfg, model


def timed_generate(model, ids, n):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             use_cache=True, pad_token_id=0)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + n, out.shape
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config-dir", default="bench/configs/qwen3_30b_a3b_2layers")
    ap.add_argument("--batch-sizes", default="1,16,64,256")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--experts-impl", default="",
                    help="transformers' experts implementation (config._experts_implementation)")
    args = ap.parse_args()
    print("command:", " ".join(sys.argv), flush=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"GPU {torch.cuda.get_device_name()}", flush=True)
    cfg, model = build(args.config_dir, args.layers, args.experts_impl)
    print(f"model {type(model).__name__}: {cfg.num_hidden_layers} layers, experts implementation "
          f"{getattr(model.config, '_experts_implementation', 'n/a')}, attention "
          f"{getattr(model.config, '_attn_implementation', 'n/a')}", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        ids = torch.randint(1, cfg.vocab_size, (b, args.prompt_len), device="cuda", generator=gen)
        try:
            timed_generate(model, ids, 2)  # warm-up
            t1 = statistics.median(timed_generate(model, ids, 1) for _ in range(args.repeats))
            tn = statistics.median(timed_generate(model, ids, args.new_tokens)
                                   for _ in range(args.repeats))
        except torch.cuda.OutOfMemoryError as e:
            print(f"batch {b}: out of memory ({e})", flush=True)
            torch.cuda.empty_cache()
            continue
        decode_s = max(tn - t1, 1e-9)
        tok_s = b * (args.new_tokens - 1) / decode_s
        tpot_ms = decode_s / (args.new_tokens - 1) * 1e3
        print(f"transformers batch {b:4d}  prefill {t1 * 1e3:9.2f} ms  decode {tok_s:10.1f} tok/s"
              f"  ({tpot_ms:7.3f} ms/step)", flush=True)
        print(json.dumps({"impl": "transformers", "batch": b, "prompt": args.prompt_len,
                          "new_tokens": args.new_tokens, "decode_tok_s": round(tok_s, 1),
                          "ms_per_step": round(tpot_ms, 4)}), flush=True)


if __name__ == "__main__":
    main()
