"""Agreement of `mmkeras.metrics.meteor` with pycocoevalcap's Java METEOR 1.5.

    python benchmarks/meteor_agreement.py [--num_images=1000] [--seed=0]

The sample is built from Flickr8k-1k (`captions.txt`, five human captions per
image): for every image the first caption is the hypothesis and the other four
are the references. A second, perturbed hypothesis per image makes the scores
span a range: in turn its words are shuffled, a third of them dropped, both,
or the caption is replaced by the first caption of another image. All captions
go through `normalize_caption` first, as `caption_metrics` does, and both
implementations score the same strings.

Prints the corpus scores of both, the mean absolute, largest and Pearson
agreement of the sentence scores and the share of sentences scored equal,
lower and higher here (over all hypotheses, the human and the perturbed ones), how many sentences the Java aligner matched with its synonym
or paraphrase stages (which this implementation does not have) and the
agreement on the other sentences, the agreement with the same jar run with
only its exact and stem stages (`-m "exact stem"`: what this implementation
reproduces), the time each implementation took, and ends with one JSON line of
the figures. Needs Java and pycocoevalcap (test extra).
"""

import csv
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_string(
    "data_dir",
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "shared", "data", "flickr8k-1k",
    ),
    "Folder holding captions.txt (CSV with header image,caption).",
)
flags.DEFINE_integer("num_images", 1000, "Images to use (sorted by file name).")
flags.DEFINE_integer("seed", 0, "Seed of the perturbations.")
FLAGS = flags.FLAGS

# Java METEOR sufficient statistics: 4 lengths, then (test content, reference
# content, test function, reference function) matches per stage in the order
# exact, stem, synonym, paraphrase, then chunks and the two match totals.
_SYNONYM_AND_PARAPHRASE = slice(12, 20)


def java_meteor(hypotheses, references, extra_args=()):
    """Sentence and corpus scores of the pycocoevalcap jar, with extra options.

    Speaks the jar's stdio protocol as pycocoevalcap's wrapper does (one SCORE
    line per sentence for its statistics, then one EVAL line for the scores).
    """
    import subprocess

    import pycocoevalcap.meteor.meteor as pycoco_meteor

    command = ["java", "-jar", "-Xmx2G", pycoco_meteor.METEOR_JAR, "-", "-", "-stdio",
               "-l", "en", "-norm", *extra_args]
    process = subprocess.Popen(command, cwd=os.path.dirname(pycoco_meteor.__file__),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               encoding="utf-8")
    stats = []
    for hypothesis, image_references in zip(hypotheses, references):
        process.stdin.write(" ||| ".join(["SCORE", *image_references, hypothesis]) + "\n")
        process.stdin.flush()
        stats.append(process.stdout.readline().strip())
    process.stdin.write(" ||| ".join(["EVAL", *stats]) + "\n")
    process.stdin.flush()
    scores = [float(process.stdout.readline()) for _ in hypotheses]
    corpus = float(process.stdout.readline())
    process.stdin.close()
    process.wait()
    return corpus, scores


def read_captions(data_dir, num_images):
    captions = {}
    with open(os.path.join(data_dir, "captions.txt"), newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            captions.setdefault(row["image"], []).append(row["caption"])
    images = sorted(captions)[:num_images]
    return [captions[image] for image in images]


def perturb(words, kind, rng, other_caption):
    if kind == "other_image":
        return other_caption
    words = list(words)
    if kind in ("drop", "shuffle_and_drop") and len(words) > 1:
        keep = sorted(rng.sample(range(len(words)), max(1, round(len(words) * 2 / 3))))
        words = [words[index] for index in keep]
    if kind in ("shuffle", "shuffle_and_drop"):
        rng.shuffle(words)
    return " ".join(words)


def build_sample(image_captions, seed):
    from mmkeras.metrics import normalize_caption

    rng = random.Random(seed)
    kinds = ("shuffle", "drop", "shuffle_and_drop", "other_image")
    normalized = [[normalize_caption(caption) for caption in captions] for captions in image_captions]
    human = [captions[0] for captions in normalized]
    references = [captions[1:] for captions in normalized]
    perturbed = []
    for index, hypothesis in enumerate(human):
        other = human[(index + 1 + rng.randrange(len(human) - 1)) % len(human)]
        perturbed.append(perturb(hypothesis.split(), kinds[index % len(kinds)], rng, other))
    return human + perturbed, references + references


def agreement(ours, theirs):
    import numpy as np

    difference = ours - theirs
    return {
        "mean_abs_diff": float(np.mean(np.abs(difference))),
        "max_abs_diff": float(np.max(np.abs(difference))),
        "mean_diff": float(np.mean(difference)),
        "pearson_r": float(np.corrcoef(ours, theirs)[0, 1]),
        "fraction_equal": float(np.mean(np.abs(difference) < 1e-9)),
        "fraction_lower": float(np.mean(difference <= -1e-9)),
        "fraction_higher": float(np.mean(difference >= 1e-9)),
    }


def main(argv):
    del argv
    import numpy as np
    from pycocoevalcap.meteor.meteor import Meteor

    from mmkeras.metrics.meteor import meteor

    image_captions = read_captions(FLAGS.data_dir, FLAGS.num_images)
    if any(len(captions) < 2 for captions in image_captions):
        raise ValueError("Every image needs at least two captions (one hypothesis, one reference).")
    hypotheses, references = build_sample(image_captions, FLAGS.seed)
    num_human = len(image_captions)

    start = time.perf_counter()
    corpus_ours, ours = meteor(hypotheses, references, return_per_image=True)
    seconds_ours = time.perf_counter() - start

    java = Meteor()
    gts = {index: refs for index, refs in enumerate(references)}
    res = {index: [hypothesis] for index, hypothesis in enumerate(hypotheses)}
    start = time.perf_counter()
    corpus_java, theirs = java.compute_score(gts, res)
    seconds_java = time.perf_counter() - start
    theirs = np.asarray(theirs, dtype=np.float64)
    # Per-sentence statistics (the wrapper's own SCORE call) show which stages
    # the Java aligner used; private API, read only here.
    uses_extra_stages = np.asarray([
        any(float(value) for value in java._stat(hyp, refs).split()[_SYNONYM_AND_PARAPHRASE])
        for hyp, refs in zip(hypotheses, references)
    ])

    human, perturbed = slice(0, num_human), slice(num_human, None)
    figures = {
        "num_hypotheses": len(hypotheses),
        "corpus_ours": corpus_ours,
        "corpus_java": float(corpus_java),
        "corpus_ours_human": meteor(hypotheses[human], references[human]),
        "corpus_java_human": float(java.compute_score(
            {i: gts[i] for i in range(num_human)}, {i: res[i] for i in range(num_human)})[0]),
        "java_mean_sentence": float(np.mean(theirs)),
        "java_sentence_std": float(np.std(theirs)),
        "fraction_java_synonym_or_paraphrase": float(np.mean(uses_extra_stages)),
        "corpus_diff": corpus_ours - float(corpus_java),
        "seconds_ours": seconds_ours,
        "seconds_java": seconds_java,
    }
    figures.update({f"all_{k}": v for k, v in agreement(ours, theirs).items()})
    figures.update({f"human_{k}": v for k, v in agreement(ours[human], theirs[human]).items()})
    figures.update(
        {f"perturbed_{k}": v for k, v in agreement(ours[perturbed], theirs[perturbed]).items()})
    exact_and_stem = ~uses_extra_stages
    figures.update({f"no_java_synonym_paraphrase_{k}": v for k, v in
                    agreement(ours[exact_and_stem], theirs[exact_and_stem]).items()})
    corpus_java_exact_stem, java_exact_stem = java_meteor(hypotheses, references, ["-m", "exact stem"])
    figures["corpus_java_exact_stem_modules"] = corpus_java_exact_stem
    figures.update({f"java_exact_stem_modules_{k}": v for k, v in
                    agreement(ours, np.asarray(java_exact_stem)).items()})

    print(f"{len(hypotheses)} hypotheses ({num_human} human, {num_human} perturbed), "
          f"4 references each; Java sentence scores: mean {figures['java_mean_sentence']:.4f}, "
          f"std {figures['java_sentence_std']:.4f}")
    print(f"corpus METEOR:        ours {corpus_ours:.4f}   Java {corpus_java:.4f}   "
          f"(difference {corpus_ours - corpus_java:+.4f})")
    print(f"  human captions:     ours {figures['corpus_ours_human']:.4f}   "
          f"Java {figures['corpus_java_human']:.4f}")
    print(f"{'sentence scores':26s}{'mean |diff|':>12s}{'max |diff|':>12s}{'mean diff':>12s}"
          f"{'Pearson r':>11s}{'equal':>8s}{'lower':>8s}{'higher':>8s}")
    for label, prefix in (("all", "all"), ("human", "human"), ("perturbed", "perturbed"),
                          ("no Java syn/para match", "no_java_synonym_paraphrase"),
                          ('jar -m "exact stem"', "java_exact_stem_modules")):
        print(f"  {label:24s}{figures[prefix + '_mean_abs_diff']:12.4f}"
              f"{figures[prefix + '_max_abs_diff']:12.4f}{figures[prefix + '_mean_diff']:+12.4f}"
              f"{figures[prefix + '_pearson_r']:11.4f}{figures[prefix + '_fraction_equal']:8.1%}"
              f"{figures[prefix + '_fraction_lower']:8.1%}{figures[prefix + '_fraction_higher']:8.1%}")
    print(f'jar with -m "exact stem": corpus {corpus_java_exact_stem:.6f} (ours {corpus_ours:.6f})')
    print(f"Java used synonym/paraphrase matches in {figures['fraction_java_synonym_or_paraphrase']:.1%} "
          f"of the sentences")
    print(f"time: ours {seconds_ours:.2f} s, Java {seconds_java:.2f} s "
          f"(ratio {seconds_ours / seconds_java:.2f}; Java excludes its start-up)")
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in sorted(figures.items())}))


if __name__ == "__main__":
    app.run(main)
