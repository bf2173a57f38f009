"""An embedding index of an image folder for a trained `DualEncoder` (used by `training.search`).

The index lives next to the model, in `<model_dir>/search_index/`, one file per
folder. It records what it was built from: the model file's SHA-256 and
every image file's path, size and modification time. `load_or_build`
rebuilds it when either changed, so an index is never silently used with a
different model or over a changed folder.

Files that are not decodable images (other file types, corrupt or truncated
images) are skipped and counted; they never stop the build.
"""

import dataclasses
import hashlib
import json
import os
import time

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
INDEX_VERSION = 1


def file_sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_listing(folder):
    """`[(relative path, size, mtime_ns)]` of every file under `folder`, sorted.

    Every file counts (not only image suffixes): a file that appears,
    disappears or changes makes the listing differ, and the build decides
    what is an image.
    """
    if not os.path.isdir(folder):
        raise ValueError(f"--images: {folder!r} is not a directory.")
    listing = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            stat = os.stat(path)
            listing.append((os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns))
    return listing


def listing_digest(listing):
    return hashlib.sha256(json.dumps(listing).encode("utf-8")).hexdigest()


@dataclasses.dataclass
class ImageIndex:
    """Unit-norm image embeddings of a folder and where they came from."""

    folder: str
    paths: list
    embeddings: np.ndarray
    model_sha256: str
    folder_digest: str
    skipped: list
    build_seconds: float = 0.0
    rebuilt: bool = False

    def search(self, query_embedding, top_k):
        """`[(path, score)]` of the `top_k` images closest to a unit-norm query, best first."""
        if top_k < 1:
            raise ValueError(f"--top_k must be >= 1. Received: top_k={top_k}")
        scores = self.embeddings @ np.asarray(query_embedding, np.float32)
        k = min(top_k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.paths[i], float(scores[i])) for i in top]


def index_path(model_dir, folder):
    """`<model_dir>/search_index/<folder name>-<hash of its absolute path>.npz`."""
    folder = os.path.abspath(folder)
    tag = hashlib.sha256(folder.encode("utf-8")).hexdigest()[:12]
    return os.path.join(model_dir, "search_index", f"{os.path.basename(folder) or 'root'}-{tag}.npz")


def read_index(path):
    """The `ImageIndex` stored at `path`, or None if it is missing or unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("version") != INDEX_VERSION:
                return None
            return ImageIndex(folder=meta["folder"], paths=list(meta["paths"]),
                              embeddings=np.asarray(data["embeddings"], np.float32),
                              model_sha256=meta["model_sha256"], folder_digest=meta["folder_digest"],
                              skipped=list(meta["skipped"]))
    except (OSError, ValueError, KeyError):
        return None


def write_index(path, index):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {"version": INDEX_VERSION, "folder": index.folder, "paths": index.paths,
            "model_sha256": index.model_sha256, "folder_digest": index.folder_digest,
            "skipped": index.skipped}
    tmp = path + ".tmp.npz"
    np.savez(tmp, embeddings=index.embeddings, meta=np.asarray(json.dumps(meta)))
    os.replace(tmp, path)


def decodable_images(folder, listing):
    """`(image paths, skipped [(path, reason)])`: files TensorFlow decodes as images."""
    import tensorflow as tf

    paths, skipped = [], []
    for relative, _, _ in listing:
        path = os.path.join(folder, relative)
        if not relative.lower().endswith(IMAGE_SUFFIXES):
            skipped.append((relative, "not an image file name"))
            continue
        try:
            data = tf.io.read_file(path)
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.OpError, OSError) as e:
            skipped.append((relative, f"cannot be decoded: {str(e).splitlines()[0][:120]}"))
            continue
        paths.append(path)
    return paths, skipped


def build_index(embed_images, folder, listing, model_sha256, batch_size=64):
    """Embeds every decodable image of `folder` with `embed_images(list of paths) -> (n, dim)`."""
    start = time.perf_counter()
    paths, skipped = decodable_images(folder, listing)
    embeddings = [embed_images(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
    embeddings = np.concatenate(embeddings, axis=0).astype(np.float32) if embeddings else np.zeros((0, 0), "float32")
    return ImageIndex(folder=os.path.abspath(folder), paths=paths, embeddings=embeddings,
                      model_sha256=model_sha256, folder_digest=listing_digest(listing),
                      skipped=[f"{p}: {why}" for p, why in skipped],
                      build_seconds=time.perf_counter() - start, rebuilt=True)


def load_or_build(model_dir, folder, embed_images, model_sha256=None, batch_size=64):
    """The folder's index: read from disk if it matches the model and the folder, else (re)built.

    Returns `(index, reason)`; `reason` says why it was rebuilt ("no index",
    "the model changed", "the folder changed") or is None when reused.
    """
    model_sha256 = model_sha256 or file_sha256(os.path.join(model_dir, "model.keras"))
    listing = folder_listing(folder)
    path = index_path(model_dir, folder)
    index = read_index(path)
    if index is None:
        reason = "no index"
    elif index.model_sha256 != model_sha256:
        reason = "the model changed"
    elif index.folder_digest != listing_digest(listing):
        reason = "the folder changed"
    else:
        return index, None
    index = build_index(embed_images, folder, listing, model_sha256, batch_size)
    write_index(path, index)
    return index, reason
