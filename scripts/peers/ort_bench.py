#!/usr/bin/env python3
"""ONNX Runtime next to `gpt2q bench`: GPT-2 124M with dynamically quantised int8 weights.

Two graphs of GPT-2 with past key/values (`--graph`), both with logits for the last position
only, as `gpt2q bench`:
  lean  written node by node with onnx.helper from the weights (needs no torch): what an HF
        export computes — token + position embedding, per layer pre-norm attention over past +
        new keys/values (present_* outputs) and a gelu_new MLP, final norm, LM head tied to the
        token embedding — in the fewest nodes (fused LayerNormalization and Gelu, the causal
        mask an input)
  hf    transformers' GPT2LMHeadModel exported by torch.onnx (needs torch and transformers):
        the graph the HF tool chain gives an ORT user, the mask derived from attention_mask
`quantize_dynamic(weight_type=QInt8)` then turns every weight MatMul into ORT's dynamic int8
MatMul (per-tensor activation scale computed at run time, MLAS GEMM); the attention's
activation-activation MatMuls stay float (MatMulConstBOnly, quantize_dynamic's default).

  check    the float graph of tests/fixtures/tiny-gpt2 reproduces the reference logits
           (tests/fixtures/tiny-gpt2.json) by prefill and by a last step through past k/v
  bench    alternate ORT int8 and `gpt2q bench --synthetic 124M --quant q8`, pp128 and tg128 at
           1 and 2 threads, for --rounds rounds; prints per-measurement lines and a table
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
OPSET = 20  # Gelu with approximate="tanh" (GPT-2's gelu_new)
SHAPES_124M = dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12)


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# ---------------------------------------------------------------------------------------------
# weights


def fixture_weights(model_dir):
    """HF GPT-2 safetensors (Conv1D weights are [in, out]) as float32 arrays and the shapes."""
    from safetensors.numpy import load_file

    raw = load_file(os.path.join(model_dir, "model.safetensors"))
    w = {k.removeprefix("transformer."): v.astype(np.float32) for k, v in raw.items()}
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    hp = dict(n_vocab=c["vocab_size"], n_ctx=c["n_positions"], n_embd=c["n_embd"],
              n_head=c["n_head"], n_layer=c["n_layer"])
    return w, hp


def synthetic_weights(hp, seed=0):
    """Random GPT-2 weights in the given shapes: normal(0, 0.02), norms 1, biases 0."""
    rng = np.random.default_rng(seed)
    d, v = hp["n_embd"], hp["n_vocab"]

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    w = {"wte.weight": normal(v, d), "wpe.weight": normal(hp["n_ctx"], d),
         "ln_f.weight": np.ones(d, np.float32), "ln_f.bias": np.zeros(d, np.float32)}
    for i in range(hp["n_layer"]):
        p = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            w[p + ln + ".weight"] = np.ones(d, np.float32)
            w[p + ln + ".bias"] = np.zeros(d, np.float32)
        for name, (a, b) in {"attn.c_attn": (d, 3 * d), "attn.c_proj": (d, d),
                             "mlp.c_fc": (d, 4 * d), "mlp.c_proj": (4 * d, d)}.items():
            w[p + name + ".weight"] = normal(a, b)
            w[p + name + ".bias"] = np.zeros(b, np.float32)
    return w


# ---------------------------------------------------------------------------------------------
# graph


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, outputs=None, **attrs):
        self.n += 1
        outputs = outputs or [f"{op_type.lower()}_{self.n}"]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"n{self.n}", **attrs))
        return outputs[0]


def build_gpt2(w, hp, path):
    """Writes GPT-2 with past key/values as an ONNX model to `path`.

    Inputs: input_ids [1, T] int64, position_ids [1, T] int64, attn_bias [1, 1, T, P+T] float
    (0 where a query may attend, -1e9 elsewhere), past_key_i / past_value_i [1, H, P, D].
    Outputs: logits [1, n_vocab] of the last position, present_key_i / present_value_i.
    """
    g = Graph()
    d, h, n_layer = hp["n_embd"], hp["n_head"], hp["n_layer"]
    hd = d // h
    eps = 1e-5
    g.const("wte", w["wte.weight"])
    g.const("wpe", w["wpe.weight"])
    g.const("lm_head", np.ascontiguousarray(w["wte.weight"].T))  # [d, vocab]: MatMul's B
    heads_shape = g.const("heads_shape", np.array([1, -1, h, hd], np.int64))
    model_shape = g.const("model_shape", np.array([1, -1, d], np.int64))
    scale = g.const("scale", np.array(1.0 / np.sqrt(hd), np.float32))
    last = g.const("last", np.array([-1], np.int64))

    x = g.op("Add", [g.op("Gather", ["wte", "input_ids"]), g.op("Gather", ["wpe", "position_ids"])])
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "T"]),
        helper.make_tensor_value_info("attn_bias", TensorProto.FLOAT, [1, 1, "T", "PT"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, hp["n_vocab"]])]

    def linear(x, prefix):
        y = g.op("MatMul", [x, g.const(prefix + ".weight", w[prefix + ".weight"])])
        return g.op("Add", [y, g.const(prefix + ".bias", w[prefix + ".bias"])])

    def norm(x, prefix):
        return g.op("LayerNormalization", [x, g.const(prefix + ".weight", w[prefix + ".weight"]),
                                           g.const(prefix + ".bias", w[prefix + ".bias"])],
                    axis=-1, epsilon=eps)

    def heads(t):  # [1, T, d] -> [1, H, T, hd]
        return g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=[0, 2, 1, 3])

    for i in range(n_layer):
        p = f"h.{i}."
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kv}_{i}", TensorProto.FLOAT,
                                                        [1, h, "P", hd]))
            outputs.append(helper.make_tensor_value_info(f"present_{kv}_{i}", TensorProto.FLOAT,
                                                         [1, h, "PT", hd]))
        qkv = linear(norm(x, p + "ln_1"), p + "attn.c_attn")
        q, k, v = (f"{p}{n}" for n in "qkv")
        g.op("Split", [qkv], outputs=[q, k, v], axis=-1, num_outputs=3)
        k_all = g.op("Concat", [f"past_key_{i}", heads(k)], outputs=[f"present_key_{i}"], axis=2)
        v_all = g.op("Concat", [f"past_value_{i}", heads(v)], outputs=[f"present_value_{i}"],
                     axis=2)
        scores = g.op("MatMul", [heads(q), g.op("Transpose", [k_all], perm=[0, 1, 3, 2])])
        scores = g.op("Add", [g.op("Mul", [scores, scale]), "attn_bias"])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v_all])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), model_shape])
        x = g.op("Add", [x, linear(ctx, p + "attn.c_proj")])
        ff = g.op("Gelu", [linear(norm(x, p + "ln_2"), p + "mlp.c_fc")], approximate="tanh")
        x = g.op("Add", [x, linear(ff, p + "mlp.c_proj")])
    x_last = g.op("Squeeze", [g.op("Gather", [x, last], axis=1), g.const("one", np.array([1], np.int64))])
    g.op("MatMul", [norm(x_last, "ln_f"), "lm_head"], outputs=["logits"])

    graph = helper.make_graph(g.nodes, "gpt2", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.save(model, path, save_as_external_data=True, location=os.path.basename(path) + ".data")


def quantize(fp32_path, int8_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=False,
                     use_external_data_format=True)


def export_hf(model_dir, path):
    """Exports transformers' GPT-2 with past key/values to `path` through torch.onnx: the model
    in `model_dir` (HF layout), or GPT-2 124M's shapes with transformers' own random
    initialisation (normal(0, 0.02), as `gpt2q bench --synthetic`) when it is None. Inputs:
    input_ids, attention_mask (ones over past + new positions), position_ids, past_key_i /
    past_value_i [1, H, P, D]; outputs: logits [1, n_vocab] of the last position
    (`logits_to_keep=1`, so the LM head runs for one position, as in the lean graph),
    present_key_i / present_value_i."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.cache_utils import DynamicCache

    torch.manual_seed(0)
    if model_dir is None:
        model = GPT2LMHeadModel(GPT2Config(**{
            "vocab_size": SHAPES_124M["n_vocab"], "n_positions": SHAPES_124M["n_ctx"],
            "n_embd": SHAPES_124M["n_embd"], "n_head": SHAPES_124M["n_head"],
            "n_layer": SHAPES_124M["n_layer"]}))
    else:
        # Float32 whatever the checkpoint stores (the fixture is f16), as the lean graph.
        model = GPT2LMHeadModel.from_pretrained(model_dir).float()
    model.eval()
    c = model.config
    n_layer, h, hd = c.n_layer, c.n_head, c.n_embd // c.n_head

    class Step(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for i in range(n_layer):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
            layers = out.past_key_values.layers
            present = [t for layer in layers for t in (layer.keys, layer.values)]
            return (out.logits[:, -1, :], *present)

    # Traced with 3 past and 4 new positions, so that neither is a special case.
    p, t = 3, 4
    args = (torch.randint(0, c.vocab_size, (1, t)), torch.ones(1, p + t, dtype=torch.int64),
            torch.arange(p, p + t)[None], *[torch.randn(1, h, p, hd) for _ in range(2 * n_layer)])
    kv = [f"{d}_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")
          for d in ("past", "present")]
    axes = {"input_ids": {1: "T"}, "attention_mask": {1: "PT"}, "position_ids": {1: "T"}}
    axes.update({name: {2: "P" if name.startswith("past") else "PT"} for name in kv})
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on the Python-side shape tests it freezes; `check --graph hf` runs
        # the exported graph at other lengths than the traced ones.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Step(model), args, path, dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask", "position_ids"]
            + [n for n in kv if n.startswith("past")],
            output_names=["logits"] + [n for n in kv if n.startswith("present")],
            dynamic_axes=axes)


def write_graph(kind, model_dir, path):
    """The float graph of `kind` (lean or hf) for the fixture in `model_dir`, or for random
    weights in GPT-2 124M's shapes when it is None."""
    if kind == "hf":
        export_hf(model_dir, path)
    elif model_dir is None:
        build_gpt2(synthetic_weights(dict(SHAPES_124M)), dict(SHAPES_124M), path)
    else:
        build_gpt2(*fixture_weights(model_dir), path)


# ---------------------------------------------------------------------------------------------
# running


class Runner:
    """An ORT session over a GPT-2 graph and the feeds that drive it like gpt2q's session."""

    def __init__(self, path, hp, threads):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.hp = hp
        hd = hp["n_embd"] // hp["n_head"]
        self.empty = np.zeros((1, hp["n_head"], 0, hd), np.float32)
        self.names = [o.name for o in self.sess.get_outputs()]
        # The lean graph takes the causal mask; the HF export builds it from attention_mask.
        self.masked_by_bias = any(i.name == "attn_bias" for i in self.sess.get_inputs())

    def empty_past(self):
        return [self.empty] * (2 * self.hp["n_layer"])

    def run(self, ids, past):
        """Runs `ids` after `past` (a list of 2*n_layer arrays); returns (logits, present)."""
        p, t = past[0].shape[2], len(ids)
        feeds = {"input_ids": np.array([ids], np.int64),
                 "position_ids": np.arange(p, p + t, dtype=np.int64)[None, :]}
        if self.masked_by_bias:
            # Query i (at position p + i) attends to keys 0..=p + i.
            allowed = np.arange(p + t)[None, :] <= p + np.arange(t)[:, None]
            feeds["attn_bias"] = np.where(allowed, 0.0, -1e9).astype(np.float32)[None, None]
        else:
            feeds["attention_mask"] = np.ones((1, p + t), np.int64)
        for i in range(self.hp["n_layer"]):
            feeds[f"past_key_{i}"] = past[2 * i]
            feeds[f"past_value_{i}"] = past[2 * i + 1]
        out = self.sess.run(self.names, feeds)
        return out[0][0], out[1:]


def check(args):
    """The float graph of the tiny fixture reproduces the reference's last-position logits."""
    fixture = os.path.join(REPO, "tests/fixtures/tiny-gpt2")
    _, hp = fixture_weights(fixture)
    with open(os.path.join(REPO, "tests/fixtures/tiny-gpt2.json")) as f:
        ref = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tiny.onnx")
        write_graph(args.graph, fixture, path)
        r = Runner(path, hp, 1)
        worst = 0.0
        for prompt in ref["prompts"]:
            ids, want = prompt["ids"], np.array(prompt["last_logits"], np.float32)
            got, _ = r.run(ids, r.empty_past())
            # The last position again, through the past keys and values of the others.
            if len(ids) > 1:
                _, past = r.run(ids[:-1], r.empty_past())
                stepped, _ = r.run(ids[-1:], past)
            else:
                stepped = got
            for g in (got, stepped):
                err = float(np.max(np.abs(g - want)) / max(1.0, float(np.max(np.abs(want)))))
                worst = max(worst, err)
                if err > 1e-3 or int(np.argmax(g)) != int(np.argmax(want)):
                    sys.exit(f"check FAILED on {prompt['name']!r}: relative error {err:.2e}")
    print(f"check: the {args.graph} ONNX graph reproduces the reference logits of "
          f"{len(ref['prompts'])} prompts by prefill and through past key/values "
          f"(worst relative error {worst:.1e})")


def bench_tokens(n, n_vocab):
    rng = np.random.default_rng(1234)
    return [int(x) for x in rng.integers(0, n_vocab - 1, n)]


def measure_ort(path, hp, threads, pp, tg, repeats):
    """Median tok/s of pp (one batch, empty cache) and tg (single steps from an empty cache)
    over `repeats` after one warm-up, in a fresh session."""
    r = Runner(path, hp, threads)
    toks = bench_tokens(max(pp, tg), hp["n_vocab"])
    pps, tgs = [], []
    for rep in range(repeats + 1):
        t0 = time.perf_counter()
        r.run(toks[:pp], r.empty_past())
        dt_pp = time.perf_counter() - t0
        past = r.empty_past()
        t0 = time.perf_counter()
        for tok in toks[:tg]:
            _, past = r.run([tok], past)
        dt_tg = time.perf_counter() - t0
        if rep > 0:
            pps.append(pp / dt_pp)
            tgs.append(tg / dt_tg)
    return statistics.median(pps), statistics.median(tgs)


def measure_gpt2q(gpt2q, threads, pp, tg, repeats):
    """{threads: (pp tok/s, tg tok/s)} from one `gpt2q bench` process."""
    cmd = [gpt2q, "bench", "--synthetic", "124M", "--quant", "q8", "-t",
           ",".join(map(str, threads)), "-p", str(pp), "-n", str(tg), "-r", str(repeats),
           "--format", "csv"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    head = out[0].split(",")
    res = {}
    for line in out[1:]:
        row = dict(zip(head, line.split(",")))
        res[int(row["threads"])] = (float(row["prefill_tok_s"]), float(row["decode_tok_s"]))
    return res, " ".join(cmd[1:])


def bench(args):
    hp = dict(SHAPES_124M)
    os.makedirs(args.workdir, exist_ok=True)
    # One file per graph; the lean graph's names carry no suffix.
    stem = "gpt2-124m-synthetic" + ("-hf" if args.graph == "hf" else "")
    fp32 = os.path.join(args.workdir, stem + ".onnx")
    int8 = os.path.join(args.workdir, stem + "-int8.onnx")
    if not os.path.exists(int8):
        print(f"writing the {args.graph} 124M graph (random weights) and quantising it…",
              file=sys.stderr)
        write_graph(args.graph, None, fp32)
        quantize(fp32, int8)
    import onnxruntime as ort

    threads = [int(t) for t in args.threads.split(",")]
    ort_res = {t: [] for t in threads}
    g_res = {t: [] for t in threads}
    g_cmd = None
    print(f"{args.graph} graph; onnxruntime {ort.__version__}, onnx {onnx.__version__}; "
          f"pp{args.pp} tg{args.tg}, "
          f"{args.repeat} repeats after a warm-up, {args.rounds} alternated rounds")
    for rnd in range(1, args.rounds + 1):
        for t in threads:
            la = loadavg()
            pp, tg = measure_ort(int8, hp, t, args.pp, args.tg, args.repeat)
            ort_res[t].append((pp, tg))
            print(f"round {rnd} ORT int8 t={t}: pp {pp:.1f} tg {tg:.1f} tok/s (load {la:.2f})",
                  flush=True)
        la = loadavg()
        res, g_cmd = measure_gpt2q(args.gpt2q, threads, args.pp, args.tg, args.repeat)
        for t in threads:
            g_res[t].append(res[t])
            print(f"round {rnd} gpt2q q8 t={t}: pp {res[t][0]:.1f} tg {res[t][1]:.1f} tok/s "
                  f"(load {la:.2f})", flush=True)
    print()
    print(f"gpt2q command: gpt2q {g_cmd}")
    print()
    cols = [c for t in threads for c in (f"ORT int8 t={t}", f"gpt2q q8 t={t}")]
    print("| tok/s | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for idx, label in ((1, f"decode (tg{args.tg})"), (0, f"prefill (pp{args.pp})")):
        cells = []
        for t in threads:
            o = statistics.median(x[idx] for x in ort_res[t])
            g = statistics.median(x[idx] for x in g_res[t])
            cells += [f"{o:.1f}", f"{g:.1f} ({g / o:.2f}x)"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nmedians over rounds of each round's median over repeats")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="the graph reproduces the tiny fixture's reference logits")
    b = sub.add_parser("bench", help="alternate ORT int8 and gpt2q bench")
    for p in (c, b):
        p.add_argument("--graph", choices=("lean", "hf"), default="lean",
                       help="lean: written with onnx.helper; hf: transformers + torch.onnx")
    b.add_argument("--gpt2q", default=os.path.join(REPO, "target/release/gpt2q"))
    b.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "gpt2q-ort"))
    b.add_argument("--threads", default="1,2")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("-p", "--pp", type=int, default=128)
    b.add_argument("-n", "--tg", type=int, default=128)
    args = ap.parse_args()
    check(args) if args.cmd == "check" else bench(args)


if __name__ == "__main__":
    main()
