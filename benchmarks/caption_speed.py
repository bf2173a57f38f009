"""Captioner speed and model-FLOP utilisation (MFU): training, greedy / beam-3 generation, cache speedup.

    python benchmarks/caption_speed.py [--model_dir=runs/caption] [--batch_size=64] \\
        [--train_batch_size=32] [--sequence_length=25] [--train_steps=30] [--repeats=3] \\
        [--min_pairs=5] [--max_pairs=60] [--target_spread=0.1] [--xla=true]

One model, one process, one run:

1. **Matmul peak**: the best sustained float32 `tf.matmul` rate of this
   machine, in GFLOP/s: square matrices of 1024, 2048, 3072 and 4096 (the rate varies by size), one product
   per `tf.function` call, calls repeated for `--peak_seconds` in three
   windows, the best window of any size. Measured at the start and again at
   the end of the run (the machine may be shared); the higher of the two is
   the peak every MFU is divided by, so a busy moment lowers MFU rather than
   inflating it.
2. **FLOPs, counted from the graphs** by the TensorFlow profiler
   (`ProfileOptionBuilder.float_operation()`, the per-op statistics
   TensorFlow registers for MatMul, BatchMatMul, Conv2D and its gradients,
   BiasAdd and the element-wise ops) on concrete functions with static
   shapes. A matrix product or convolution of partly unknown shape, which
   the profiler would count as zero, stops the benchmark. The profiler
   miscounts batch matmuls with `adj_x` (the weight gradients of the
   attention projections: it reads the V1 attribute name `transpose_a`);
   their count is recomputed from the shapes and the correction printed.
   - Training: one forward + backward pass (`GradientTape` over the model's
     own loss, on a batch from the training pipeline), per image; the
     optimizer update (a few FLOPs per weight) is left out.
   - Generation: the graph of `generate_tokens` with each method's settings
     (what `generate` compiles). In TensorFlow 2 a `while` loop's body is a
     function of its own, which the profiler does not enter: the outer graph
     gives the image encoder and the image keys/values; the loop body,
     profiled on its own, gives one generated token: one cached decoder step
     (the new token against the key/value cache, then choosing and scoring
     the token, or for beam search reordering the beams), or for the uncached
     baseline one decoder pass over the whole padded sequence (the prompt
     keeps its full length at every step, so every step costs the same).
     FLOPs of a call = outer + body x loop iterations. Greedy iterations
     are read off the output (the loop stops once every row has its end
     token); beam search is counted at the full `sequence_length - 1`
     iterations, an upper bound when all beams end earlier (only possible
     with trained weights).
   Each count is printed next to a rough analytic estimate from the weights
   (2 FLOPs per weight per token for dense layers and per output pixel for
   convolutions, 4 x width per query-key pair for attention, backward = 2 x
   forward), so a reader can check it.
3. **Speed and MFU** (= FLOPs of the call / its time / matmul peak):
   training as `python -m training.train` trains: the step of
   `training.loop` (`train_step_function`: `model.train_step` under the
   default strategy) on the training `tf.data` pipeline, at the default
   config's batch size (`--train_batch_size`), without XLA before anything
   in the process runs under XLA (XLA slowed later TF steps here), and with
   XLA (the `--jit_compile` of `training.train`) after generation; --repeats
   rounds of --train_steps steps each, the median round; greedy with the
   key/value cache, beam search with 3 beams and the cache, and greedy
   without the cache (the decoder re-run over the whole sequence at every
   step). Cached and uncached greedy run interleaved, ABAB..., with and
   without XLA in the same rounds (`generate(..., jit_compile=True)`; the
   exported serving graphs never use XLA). The cache speedup is the median
   over rounds of uncached time / cached time of the same round; its
   spread is the width of the distribution-free 90% interval of that
   median (order statistics: at 5 rounds the min and max of the ratios),
   over the median. At least --min_pairs rounds run, more up to
   --max_pairs until every spread is below --target_spread; the per-round
   (max - min) / median and the number of rounds are printed beside it.
   Beam search alternates with its XLA twin for --repeats rounds. Generation
   times are the median call; XLA's first call (compilation) is printed
   apart. XLA may
   simplify a graph before it runs (e.g. drop work whose result is unused),
   so an XLA MFU counts the FLOPs of the TensorFlow graph, not necessarily
   those executed.

Generation runs on the weights as given, before training: fresh weights
(seeded by --seed) rarely emit the end token, so every method runs the full
sequence length and the cache comparison is not blurred by early stopping. With
--model_dir the trained weights stop at their end tokens, which shows the
speedup at natural caption lengths (the mean is printed). Ends with one
JSON line of all figures.
"""

import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_dir", None, "Load model.keras from here; default: a fresh default-config model.")
flags.DEFINE_integer("batch_size", 64, "Batch size of generation.")
flags.DEFINE_integer("train_batch_size", None, "Batch size of training; default: the default config's data.batch_size.")
flags.DEFINE_integer("sequence_length", 25, "Generated sequence length (start token included).")
flags.DEFINE_integer("train_steps", 30, "Training steps per timed round (after warmup).")
flags.DEFINE_integer("repeats", 3, "Timed rounds of training and of beam search (after warmup).")
flags.DEFINE_integer("min_pairs", 5, "Fewest interleaved cached/uncached greedy rounds.")
flags.DEFINE_integer("max_pairs", 60, "Most interleaved rounds, if the speedup does not settle earlier.")
flags.DEFINE_float("target_spread", 0.1, "Stop interleaving once the 90% interval of the median speedup, "
                  "over the median, is narrower than this.")
flags.DEFINE_float("peak_seconds", 1.0, "Length of one timing window of the matmul peak.")
flags.DEFINE_bool("xla", True, "Also time training and generation with XLA (jit_compile=True).")
flags.DEFINE_integer("seed", 0, "Seed of the fresh weights: their captions' lengths set the greedy loop's "
                     "iterations, so runs of one seed compare.")
FLAGS = flags.FLAGS

PEAK_SIZES = (1024, 2048, 3072, 4096)
# Ops whose FLOPs dominate; if one has an unknown shape the profiler counts 0.
HEAVY_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D",
             "Conv2DBackpropInput", "Conv2DBackpropFilter", "Einsum")


# Machine peak.
def matmul_peak(seconds):
    """{size: best GFLOP/s} of float32 square matmuls, one product per call."""
    import tensorflow as tf

    matmul = tf.function(tf.matmul)
    rates = {}
    for n in PEAK_SIZES:
        a = tf.random.normal((n, n), seed=1)
        b = tf.random.normal((n, n), seed=2)
        matmul(a, b).numpy()  # trace and warm up
        best = 0.0
        for _ in range(3):
            calls, start = 0, time.perf_counter()
            while True:
                product = matmul(a, b)
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
            product.numpy()
            elapsed = time.perf_counter() - start
            best = max(best, 2 * n**3 * calls / elapsed / 1e9)
        rates[n] = best
    return rates


# FLOP counting.
def adjoint_correction(graph):
    """FLOPs to add to the profiler's count of `graph`'s adjoint batch matmuls.

    The profiler's BatchMatMulV2/V3 statistic reads the contracted size from
    the V1 attribute `transpose_a`, which these ops do not have (theirs is
    `adj_x`): a product with `adj_x` (the weight gradients of `EinsumDense`)
    is counted with the wrong inner size. Returns correct - counted.
    """
    import numpy as np

    correction = 0
    for op in graph.get_operations():
        if op.type in ("BatchMatMulV2", "BatchMatMulV3") and op.get_attr("adj_x"):
            a_shape, outputs = op.inputs[0].shape, np.prod(op.outputs[0].shape.as_list())
            correction += 2 * int(outputs) * (a_shape[-2] - a_shape[-1])
    return correction


def graph_flops(graph):
    """FLOPs of one run of `graph` by the TensorFlow profiler (loop bodies excluded),
    adjoint batch matmuls corrected (see `adjoint_correction`)."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    unknown = [
        f"{op.type} {op.name}"
        for op in graph.get_operations()
        if op.type in HEAVY_OPS
        and (op.type == "Einsum" or not all(t.shape.is_fully_defined() for t in op.inputs))
    ]
    if unknown:
        raise ValueError(f"The profiler would count these ops as 0 FLOPs: {unknown[:5]}")
    options = (option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
               .with_empty_output().build())
    verbosity = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # the v1 profiler's deprecation warnings
    try:
        return model_analyzer.profile(graph, options=options).total_float_ops + adjoint_correction(graph)
    finally:
        tf.get_logger().setLevel(verbosity)


def while_bodies(graph):
    """The body graphs of the `while` loops of `graph` (control flow v2 keeps
    each in a function of its own, which the profiler does not enter)."""
    return [graph._get_function(op.get_attr("body").name).graph
            for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]


def generation_flops(model, images_spec, **options):
    """(outer FLOPs, FLOPs of one loop iteration) of one `generate_tokens` call."""
    import tensorflow as tf

    graph = tf.function(lambda images: model.generate_tokens(images, **options)).get_concrete_function(
        images_spec).graph
    bodies = while_bodies(graph)
    if len(bodies) != 1:
        raise ValueError(f"Expected one generation loop, found {len(bodies)}.")
    return graph_flops(graph), graph_flops(bodies[0])


def train_step_flops(model, batch):
    """(FLOPs, of which adjoint correction) of one forward + backward pass over
    `batch` (`(x, y, sample_weight)`)."""
    import tensorflow as tf

    @tf.function
    def forward_backward(x, y, sample_weight):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, sample_weight)
        return tape.gradient(loss, model.trainable_variables)

    specs = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), batch)
    graph = forward_backward.get_concrete_function(*specs).graph
    return graph_flops(graph), adjoint_correction(graph)


class Analytic:
    """Rough FLOPs from the weights, to check the graph counts against.

    2 FLOPs per weight per token (dense) or output pixel (convolution), 4 x
    width per query-key pair of attention (scores and weighted sum); norms,
    activations and softmax are left out.
    """

    def __init__(self, model):
        import numpy as np

        encoder, decoder = model.image_encoder, model.text_decoder
        shape, self.encoder = (1, model.image_size, model.image_size, 3), 0.0
        for layer in encoder.stem:
            out = tuple(layer.compute_output_shape(shape))
            if hasattr(layer, "kernel") and len(layer.kernel.shape) == 4:
                self.encoder += 2 * np.prod(layer.kernel.shape) * out[1] * out[2]
            shape = out
        if encoder.backbone is not None:
            raise ValueError("The analytic check knows the default convolutional stem only.")
        self.image_tokens = encoder.position_embedding.sequence_length
        self.encoder += 2 * np.prod(encoder.projection.kernel.shape) * self.image_tokens
        self.width = decoder.hidden_dim
        self.layers = decoder.num_layers
        kv = [w for b in decoder.blocks for w in (b.cross_attention.key_dense.kernel,
                                                  b.cross_attention.value_dense.kernel)]
        dense = sum(np.prod(w.shape) for b in decoder.blocks for w in b.trainable_weights if "kernel" in w.path)
        self.cross_kv = sum(np.prod(w.shape) for w in kv)
        # Per token: the blocks' dense layers but the image keys/values, and the tied output layer.
        self.token_dense = dense - self.cross_kv + decoder.vocabulary_size * decoder.hidden_dim

    def image_kv(self):
        return 2.0 * self.cross_kv * self.image_tokens

    def token(self, keys):
        """One decoder position attending to `keys` text positions and the image."""
        return 2.0 * self.token_dense + 4.0 * self.width * self.layers * (keys + self.image_tokens)

    def teacher_forced(self, length):
        """A decoder pass over `length` tokens, image keys/values included."""
        return self.image_kv() + length * self.token(length)

    def generation(self, use_cache, beams, steps, length):
        per_row = self.teacher_forced(length) if not use_cache else self.token(length)
        flops = self.encoder + beams * steps * per_row
        if use_cache:
            flops += beams * self.image_kv()
        return flops


# Timing.
def seconds_of(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def first_call(fn):
    """(seconds of the first call: tracing and compilation, or the error)."""
    start = time.perf_counter()
    try:
        fn()
    except Exception as e:  # noqa: BLE001  XLA reports unsupported graphs in many error types.
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    return time.perf_counter() - start, None


def median_interval(values, confidence=0.9):
    """Distribution-free interval of the median: (low, high) order statistics.

    The k-th smallest and k-th largest of n values enclose the median with
    probability 1 - 2 P(Binomial(n, 1/2) < k); k is the largest that keeps
    this >= `confidence` (at n = 5: min and max, 94%).
    """
    ordered, n = sorted(values), len(values)
    k = 1
    while sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= (1 - confidence) / 2:
        k += 1
    return ordered[k - 1], ordered[n - k]


def interleaved(variants, min_pairs, max_pairs, target_spread):
    """Times the calls of `variants` in rounds until every cache speedup is stable.

    `variants` maps (mode, "cached" | "uncached") to a call; each round calls
    each once, in turn. A mode's speedup is the median over rounds of
    uncached time / cached time of the same round, its spread the width of
    the 90% interval of that median (`median_interval`) over the median.
    Stops after at least `min_pairs` rounds once every spread is below
    `target_spread`, or after `max_pairs`. Returns `({mode: dict(cached=s,
    uncached=s, speedup=, spread=, ratio_range=, ratios=[...])}, rounds)`.
    """
    times = {key: [] for key in variants}
    modes = sorted({mode for mode, _ in variants if (mode, "cached") in variants and (mode, "uncached") in variants})
    rounds = 0
    while True:
        for key, fn in variants.items():
            times[key].append(seconds_of(fn))
        rounds += 1
        results = {}
        for mode in modes:
            ratios = [u / c for c, u in zip(times[(mode, "cached")], times[(mode, "uncached")])]
            speedup = statistics.median(ratios)
            low, high = median_interval(ratios)
            results[mode] = dict(speedup=speedup, spread=(high - low) / speedup, interval=(low, high),
                                 ratio_range=(max(ratios) - min(ratios)) / speedup, ratios=ratios)
        stable = all(r["spread"] < target_spread for r in results.values())
        if rounds >= max_pairs or (rounds >= min_pairs and stable):
            break
    for key, values in times.items():
        results.setdefault(key[0], {})[key[1]] = statistics.median(values)
    return results, rounds


def loop_iterations(token_ids, end_id, length):
    """(iterations of the greedy loop, mean generated tokens per caption)."""
    import numpy as np

    ended = token_ids[:, 1:] == end_id
    per_row = np.where(ended.any(axis=1), ended.argmax(axis=1) + 1, length - 1)
    return int(per_row.max()), float(per_row.mean())


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from mmkeras.data import caption_pipeline
    from mmkeras.data.synthetic_captions import SyntheticCaptions
    from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary
    from training import config as config_lib
    from training import experiment
    from training import loop
    from training import named_experiments
    from training.tasks import caption as caption_task

    tf.get_logger().setLevel("ERROR")  # retracing notes: each generate setting traces once, on purpose
    peak_start = matmul_peak(FLAGS.peak_seconds)
    print("float32 matmul peak at the start: "
          + ", ".join(f"{n}: {rate:.1f}" for n, rate in peak_start.items()) + " GFLOP/s")

    cfg = named_experiments.get_experiment("caption_synthetic")
    batch = FLAGS.batch_size
    synthetic = SyntheticCaptions(seed=0, image_size=cfg.data.image_size, num_train=4 * batch,
                                  num_validation=0, num_test=batch)
    train_records = synthetic.records("train")
    if FLAGS.model_dir:
        model = keras.saving.load_model(os.path.join(FLAGS.model_dir, "model.keras"))
        tokenizer = model.tokenizer
    else:
        keras.utils.set_random_seed(FLAGS.seed)
        tokenizer = build_tokenizer(learn_vocabulary([c for r in train_records for c in r.captions] * 20,
                                                     cfg.data.vocabulary_size))
        cfg = config_lib.override(cfg, [f"data.sequence_length={FLAGS.sequence_length}"])
        model = caption_task.build_model(cfg, tokenizer)
    model.compile(optimizer=experiment.build_optimizer(cfg.train))
    seq_len = model.text_decoder.sequence_length
    length = min(FLAGS.sequence_length, seq_len)
    images = next(iter(caption_pipeline.eval_image_dataset(
        synthetic.records("test"), model.image_size, batch, synthetic)))
    images = tf.convert_to_tensor(images, model.compute_dtype)
    images_spec = tf.TensorSpec(images.shape, images.dtype)
    analytic = Analytic(model)

    methods = {  # name: generate_tokens options
        "greedy": dict(method="greedy", use_cache=True),
        "beam3": dict(method="beam", use_cache=True, num_beams=3),
        "uncached_greedy": dict(method="greedy", use_cache=False),
    }

    def call(name, xla):
        options = methods[name]
        return lambda: model.generate(images, max_length=length, jit_compile=xla, **options)["token_ids"].numpy()

    # Training: the loop's own step. TF rounds come first, before anything in
    # this process runs under XLA: after XLA had compiled and run here, TF's
    # own training steps ran ~25% slower (229 against 306 images/s, rounds
    # within 1-2% either way; measured). Their weights are put back before
    # generation, which runs on the weights as given (see the module docstring).
    # (`python -m training.train` without --jit_compile never runs XLA either.)
    modes = ("tf", "xla") if FLAGS.xla else ("tf",)
    given_weights = model.get_weights()
    train_batch_size = FLAGS.train_batch_size or cfg.data.batch_size
    train_ds = caption_pipeline.caption_dataset(
        train_records, tokenizer, model.image_size, seq_len, train_batch_size, training=True, synthetic=synthetic)
    train_batch = next(iter(train_ds))
    train_flops, train_correction = (flops / train_batch_size for flops in train_step_flops(model, train_batch))
    train_tokens = train_batch[0]["token_ids"].shape[1]
    train_analytic = 3 * (analytic.encoder + analytic.teacher_forced(train_tokens))
    strategy = tf.distribute.get_strategy()
    iterator = iter(train_ds)
    train_compile_s, train_times = {}, {}

    def train_round(step):
        for _ in range(FLAGS.train_steps):
            step(iterator)
        model.optimizer.iterations.numpy()  # waits for the last step

    def time_training(mode):
        step = loop.train_step_function(model, strategy, jit_compile=mode == "xla")
        train_compile_s[mode] = seconds_of(lambda: step(iterator))
        for _ in range(2):
            step(iterator)
        train_times[mode] = [seconds_of(lambda: train_round(step)) for _ in range(FLAGS.repeats)]

    time_training("tf")
    model.set_weights(given_weights)

    # Generation, on the weights as given (see the module docstring).
    outputs, compile_s, failures = {}, {}, {}
    for mode in modes:
        for name in methods:
            fn = call(name, mode == "xla")
            compile_s[(name, mode)], failures[(name, mode)] = first_call(fn)
            if failures[(name, mode)] is None:
                outputs[(name, mode)] = fn()
    cached = outputs[("greedy", "tf")]
    iterations, mean_tokens = loop_iterations(cached, model.end_token_id, length)
    # XLA must not change the tokens; nor must the cache.
    equal = {key: bool(np.array_equal(out, outputs[(key[0], "tf")])) for key, out in outputs.items()}
    cache_equal = bool(np.array_equal(cached, outputs[("uncached_greedy", "tf")]))

    working = {(mode, kind): call(name, mode == "xla")
               for mode in modes for kind, name in (("cached", "greedy"), ("uncached", "uncached_greedy"))
               if (name, mode) in outputs}
    greedy_timing, rounds = interleaved(working, FLAGS.min_pairs, FLAGS.max_pairs, FLAGS.target_spread)
    beam_times = {mode: [] for mode in modes if ("beam3", mode) in outputs}
    for _ in range(FLAGS.repeats):
        for mode in beam_times:
            beam_times[mode].append(seconds_of(call("beam3", mode == "xla")))
    seconds = {}
    for mode in modes:
        timing = greedy_timing.get(mode, {})
        seconds[("greedy", mode)] = timing.get("cached")
        seconds[("uncached_greedy", mode)] = timing.get("uncached")
        seconds[("beam3", mode)] = statistics.median(beam_times[mode]) if mode in beam_times else None

    # FLOPs per call, from the graphs.
    steps = {"greedy": iterations, "uncached_greedy": iterations, "beam3": length - 1}
    gen_flops, gen_analytic, loop_flops = {}, {}, {}
    for name, options in methods.items():
        outer, body = generation_flops(model, images_spec, max_length=length, **options)
        gen_flops[name] = outer + steps[name] * body
        loop_flops[name] = body
        gen_analytic[name] = batch * analytic.generation(
            options["use_cache"], options.get("num_beams", 1), steps[name], length)

    if "xla" in modes:
        time_training("xla")
    train_rate = {mode: FLAGS.train_steps * train_batch_size / statistics.median(times)
                  for mode, times in train_times.items()}

    peak_end = matmul_peak(FLAGS.peak_seconds)
    peak = max(list(peak_start.values()) + list(peak_end.values()))
    print("float32 matmul peak at the end:   "
          + ", ".join(f"{n}: {rate:.1f}" for n, rate in peak_end.items()) + " GFLOP/s")

    figures = {
        "matmul_peak_gflops": peak,
        "matmul_peak_start_gflops": max(peak_start.values()),
        "matmul_peak_end_gflops": max(peak_end.values()),
        "train_batch_size": train_batch_size,
        "train_mflop_per_image": train_flops / 1e6,
        "train_flop_correction_mflop_per_image": train_correction / 1e6,
        "greedy_loop_iterations": iterations,
        "cache_speedup_rounds": rounds,
    }
    print(f"model: {model.count_params()} parameters, image {model.image_size}px, batch {batch}, "
          f"sequence length {length}, vocabulary {model.text_decoder.vocabulary_size}, "
          f"weights {'from ' + FLAGS.model_dir if FLAGS.model_dir else 'fresh'}, "
          f"mean generated tokens per caption {mean_tokens:.1f}, greedy loop iterations {iterations}")
    print(f"matmul peak (best of start and end): {peak:.1f} GFLOP/s")
    print("FLOPs counted from the graphs (TensorFlow profiler) vs a rough analytic estimate:")
    print(f"  train step (forward + backward): {train_flops / 1e6:9.1f} MFLOP/image  "
          f"analytic {train_analytic / 1e6:9.1f} (graph/analytic {train_flops / train_analytic:.2f}); "
          f"the profiler's adjoint batch matmul count corrected by {train_correction / 1e6:+.1f}")
    for name in methods:
        rows = batch * methods[name].get("num_beams", 1)
        print(f"  {name + ':':16s} {gen_flops[name] / batch / 1e6:9.1f} MFLOP/image  "
              f"analytic {gen_analytic[name] / batch / 1e6:9.1f} (graph/analytic "
              f"{gen_flops[name] / gen_analytic[name]:.2f}); loop body {loop_flops[name] / rows / 1e6:.2f} "
              f"MFLOP per row and token x {steps[name]} iterations"
              + (" (an upper bound: beams may end earlier)" if name == "beam3" and iterations < length - 1 else ""))
        figures[f"{name}_mflop_per_image"] = gen_flops[name] / batch / 1e6
    line = f"training (batch {train_batch_size}, training.loop's step):"
    for mode in modes:
        suffix = "" if mode == "tf" else "_xla"
        times = train_times[mode]
        mfu = train_flops * train_rate[mode] / (peak * 1e9)
        figures[f"train_images_per_s{suffix}"] = train_rate[mode]
        figures[f"train_mfu{suffix}"] = mfu
        figures[f"train_first_step_s{suffix}"] = train_compile_s[mode]
        line += (f"  {mode.upper()}: {train_rate[mode]:7.1f} images/s MFU {100 * mfu:5.1f}% (first step "
                 f"{train_compile_s[mode]:.1f} s; rounds (max-min)/median "
                 f"{100 * (max(times) - min(times)) / statistics.median(times):.0f}%)")
    print(line + "  (bar: MFU >= 40%)")
    print("generation (images/s, MFU; XLA = generate(..., jit_compile=True)):")
    for name in methods:
        line = f"  {name + ':':16s}"
        for mode in modes:
            suffix = "" if mode == "tf" else "_xla"
            key = f"{name}_images_per_s{suffix}"
            if failures[(name, mode)] is not None:
                line += f"  {mode.upper()}: FAILED ({failures[(name, mode)]})"
                figures[key] = None
                continue
            rate = batch / seconds[(name, mode)]
            mfu = gen_flops[name] / seconds[(name, mode)] / (peak * 1e9)
            figures[key] = rate
            figures[f"{name}_mfu{suffix}"] = mfu
            figures[f"{name}_first_call_s{suffix}"] = compile_s[(name, mode)]
            line += (f"  {mode.upper()}: {rate:7.1f} images/s MFU {100 * mfu:5.1f}% "
                     f"(first call {compile_s[(name, mode)]:.1f} s"
                     + (f", tokens equal to TF: {equal[(name, mode)]})" if mode == "xla" else ")"))
        print(line + ("  (bar: MFU >= 30% at batch 64)" if name == "greedy" else ""))
    for mode in modes:
        suffix = "" if mode == "tf" else "_xla"
        timing = greedy_timing.get(mode)
        if not timing or "speedup" not in timing:
            print(f"cache speedup {mode.upper()}: not measured (a variant failed)")
            figures[f"cache_speedup{suffix}"] = None
            continue
        stable = timing["spread"] < FLAGS.target_spread
        print(f"cache speedup {mode.upper()}: {timing['speedup']:5.2f}x (bar: >= 4x), median of {rounds} "
              f"interleaved rounds; 90% interval of the median {timing['interval'][0]:.2f}-"
              f"{timing['interval'][1]:.2f}, spread {100 * timing['spread']:.1f}% "
              f"({'stable' if stable else 'NOT stable'} at {100 * FLAGS.target_spread:.0f}%); per-round "
              f"(max-min)/median {100 * timing['ratio_range']:.1f}%; rounds: "
              + " ".join(f"{r:.2f}" for r in timing["ratios"]))
        figures[f"cache_speedup{suffix}"] = timing["speedup"]
        figures[f"cache_speedup_spread{suffix}"] = timing["spread"]
        figures[f"cache_speedup_round_range{suffix}"] = timing["ratio_range"]
    figures["cached_uncached_tokens_equal"] = cache_equal
    print(f"cached and uncached greedy tokens equal: {cache_equal}")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in sorted(figures.items())}))


if __name__ == "__main__":
    app.run(main)
