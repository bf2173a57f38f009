"""`python -m serving.client`: query an mmkeras model from the command line.

One result line per input, tab-separated:

    python -m serving.client --server=localhost:8500 --model=captioner \\
        --image=a.jpg --image=b.jpg
    a.jpg<TAB>a dog runs on the grass<TAB>0.8123

    python -m serving.client --server=localhost:8501 --rest --model=captioner --image=a.jpg
    python -m serving.client --model=vqa --image=a.png --text="what color is the shape?"

Which kind of model it is (captioner, classifier / VQA, dual encoder) is read
from the model's signatures. `python -m serving.client_cli` is the same command.
"""

import argparse
import sys

import numpy as np

from serving.client import DEFAULT_GRPC_SERVER
from serving.client import DEFAULT_REST_SERVER
from serving.client import DEFAULT_SIGNATURE
from serving.client import EMBED_IMAGES_SIGNATURE
from serving.client import EMBED_TEXTS_SIGNATURE
from serving.client import PredictionClient
from serving.client import ServingClientError


def _model_kind(signatures, signature):
    if EMBED_IMAGES_SIGNATURE in signatures or EMBED_TEXTS_SIGNATURE in signatures:
        if signature in (DEFAULT_SIGNATURE, EMBED_IMAGES_SIGNATURE, EMBED_TEXTS_SIGNATURE):
            return "dual_encoder"
    spec = signatures.get(signature)
    if spec is None:
        raise SystemExit(
            f"Signature {signature!r} not found. Available: {', '.join(sorted(signatures))}"
        )
    if "captions" in spec["outputs"]:
        return "captioner"
    if "labels" in spec["outputs"]:
        return "classifier"
    if "embeddings" in spec["outputs"]:
        return "dual_encoder"
    raise SystemExit(f"Signature {signature!r} is not an mmkeras signature: {spec}")


def _format_vector(vector):
    return " ".join(f"{v:.6f}" for v in vector)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m serving.client",
        description="Query an mmkeras model served by TensorFlow Serving or serving.server.",
    )
    parser.add_argument(
        "--server",
        default=None,
        help=f"host:port (default {DEFAULT_GRPC_SERVER}, or {DEFAULT_REST_SERVER} with --rest)",
    )
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    parser.add_argument(
        "--text",
        action="append",
        default=[],
        help="text (repeatable): the question/text paired with each image for a "
        "classifier (one text is used for all images), or texts to embed",
    )
    parser.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    parser.add_argument("--signature", default=DEFAULT_SIGNATURE, help="signature name")
    parser.add_argument("--version", type=int, default=None, help="model version (default latest)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args(argv)
    if not args.image and not args.text:
        parser.error("give at least one --image or --text")

    images = []
    for path in args.image:
        try:
            with open(path, "rb") as f:
                images.append(f.read())
        except OSError as e:
            parser.error(f"--image={path}: {e.strerror or e}")
    names = args.image

    with PredictionClient(args.server, rest=args.rest, timeout=args.timeout) as client:
        try:
            kind = _model_kind(client.signatures(args.model, args.version), args.signature)
            if kind == "captioner":
                if not images:
                    parser.error("a captioner needs --image")
                for name, (caption, score) in zip(
                    names, client.caption(args.model, images, args.signature, args.version)
                ):
                    print(f"{name}\t{caption}\t{score:.4f}")
            elif kind == "classifier":
                if not images or not args.text:
                    parser.error("a classifier needs --image and --text")
                results = client.classify(
                    args.model, images, args.text, args.signature, args.version
                )
                for name, result in zip(names, results):
                    if np.ndim(result.class_id) == 0:
                        probability = float(result.probabilities[result.class_id])
                        class_ids = result.class_id
                    else:  # multi-label: the chosen ids and the highest probability
                        class_ids = ",".join(str(i) for i in np.flatnonzero(result.class_id))
                        probability = float(np.max(result.probabilities))
                    print(f"{name}\t{result.label}\t{class_ids}\t{probability:.4f}")
            else:
                if images:
                    signature = args.signature
                    if signature == DEFAULT_SIGNATURE:
                        signature = EMBED_IMAGES_SIGNATURE
                    embeddings = client.embed_images(args.model, images, signature, args.version)
                    for name, vector in zip(names, embeddings):
                        print(f"{name}\t{_format_vector(vector)}")
                if args.text:
                    embeddings = client.embed_texts(args.model, args.text, version=args.version)
                    for text, vector in zip(args.text, embeddings):
                        print(f"{text}\t{_format_vector(vector)}")
        except ServingClientError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
