"""A built-in synthetic image captioning data set, rendered on the fly.

Each image shows one to three solid shapes on a dark background: a single shape, two
shapes side by side or stacked, or three shapes in a row or a column. The captions
name every shape's size, colour and kind in a fixed order (left to right, top to
bottom) and the spatial relation between them. The canonical caption is a
deterministic function of what is visible, so that a small CNN + transformer
captioner can learn it on a CPU in minutes. Each image has three differently worded
reference captions, the canonical one first: training on the canonical caption
alone converges fastest, and BLEU against all three references rewards any of the
wordings.
"""

import io
import math

import numpy as np
from PIL import Image
from PIL import ImageDraw

from mmkeras.data.records import CaptionRecord
from mmkeras.data.splits import SPLITS

SYNTHETIC_PREFIX = "synthetic"

# Base RGB colours, chosen far apart in hue and brightness so that they stay distinct
# at 64 px after per-shape jitter, JPEG compression and resizing.
COLORS = {
    "red": (225, 35, 35),
    "green": (40, 180, 55),
    "blue": (45, 85, 245),
    "yellow": (240, 225, 40),
    "purple": (165, 55, 210),
    "white": (240, 240, 240),
    "orange": (250, 135, 20),
    "cyan": (35, 215, 225),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "large")

# Shape sizes as fractions of the image side; the ranges are far apart so that size
# is never ambiguous, and three shapes with at most one large one fit in a row.
_SIZE_RANGES = {"small": (0.19, 0.23), "large": (0.37, 0.41)}
_MARGIN = 0.02
_MIN_GAP = 0.04
_CROSS_JITTER = 0.03
_COLOR_JITTER = 12
_SUPERSAMPLING = 4

# (layout, number of shapes) -> templates; {0}, {1}, {2} are "size colour shape"
# descriptions in reading order (left to right, top to bottom). The first template is
# the canonical caption.
_TEMPLATES = {
    ("single", 1): (
        "a {0}",
        "there is a {0}",
        "a single {0}",
    ),
    ("row", 2): (
        "a {0} left of a {1}",
        "a {1} right of a {0}",
        "there is a {0} to the left of a {1}",
    ),
    ("column", 2): (
        "a {0} above a {1}",
        "a {1} below a {0}",
        "there is a {0} on top of a {1}",
    ),
    ("row", 3): (
        "a {0} , a {1} and a {2} in a row",
        "from left to right a {0} , a {1} and a {2}",
        "from right to left a {2} , a {1} and a {0}",
    ),
    ("column", 3): (
        "a {0} , a {1} and a {2} in a column",
        "from top to bottom a {0} , a {1} and a {2}",
        "from bottom to top a {2} , a {1} and a {0}",
    ),
}
_LAYOUTS = tuple(_TEMPLATES)
_LAYOUT_CUMULATIVE = (0.2, 0.45, 0.7, 0.85, 1.0)
# layout, colour order, shapes, sizes, extents, positions, background, colour jitter.
_NUM_UNIFORMS = 1 + len(COLORS) + 3 + 2 + 3 + 8 + 4 + 9


def encode_png(image):
    """Encodes a uint8 `[height, width, 3]` array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(image, quality=95):
    """Encodes a uint8 `[height, width, 3]` array as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def parse_synthetic_image_id(image_id):
    """Splits `"synthetic:<split>:<index>"` into `(split, index)`."""
    parts = str(image_id).split(":")
    if (
        len(parts) != 3
        or parts[0] != SYNTHETIC_PREFIX
        or parts[1] not in SPLITS
        or not parts[2].isdigit()
    ):
        raise ValueError(
            "A synthetic image id looks like 'synthetic:<split>:<index>' with split "
            f"one of {', '.join(SPLITS)}. Received: image_id={image_id!r}"
        )
    return parts[1], int(parts[2])


class SyntheticCaptions:
    """A deterministic synthetic captioning data set rendered on the fly.

    Images show one to three non-overlapping solid shapes (5 kinds, 8 colours, 2
    clearly different sizes, distinct colours within an image) on a dark background
    with light noise: a single shape, two shapes side by side or stacked, or three
    shapes in a row or a column, at continuously jittered positions. Each image has
    three reference captions; the first, canonical one names the shapes in reading
    order, e.g. `"a small red circle left of a large blue square"`.

    Everything is a function of `(seed, split, index)`: the split is part of the
    random seed, so splits never share an image, and captions do not depend on
    `image_size`.

    Args:
        seed: non-negative int; the data set is deterministic for a seed.
        image_size: side of the square images in pixels, 32 to 128.
        num_train: number of training examples.
        num_validation: number of validation examples.
        num_test: number of test examples.
        noise_stddev: standard deviation of the Gaussian pixel noise, 0 to 20.

    Example:

    >>> data = SyntheticCaptions(seed=0, image_size=64, num_train=10)
    >>> image, captions = data.render("train", 3)
    >>> image.shape, image.dtype
    ((64, 64, 3), dtype('uint8'))
    >>> len(data.records("train"))
    10
    """

    def __init__(
        self,
        seed=0,
        image_size=64,
        num_train=20000,
        num_validation=500,
        num_test=500,
        noise_stddev=3.0,
    ):
        if not _is_int(seed) or seed < 0:
            raise ValueError(
                f"`seed` must be a non-negative int. Received: seed={seed!r}"
            )
        if not _is_int(image_size) or not 32 <= image_size <= 128:
            raise ValueError(
                "`image_size` must be an int from 32 to 128. "
                f"Received: image_size={image_size!r}"
            )
        for name, value, minimum in (
            ("num_train", num_train, 1),
            ("num_validation", num_validation, 0),
            ("num_test", num_test, 0),
        ):
            if not _is_int(value) or value < minimum:
                raise ValueError(
                    f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}"
                )
        if not 0 <= noise_stddev <= 20:
            raise ValueError(
                "`noise_stddev` must be from 0 to 20. "
                f"Received: noise_stddev={noise_stddev!r}"
            )
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.num_train = int(num_train)
        self.num_validation = int(num_validation)
        self.num_test = int(num_test)
        self.noise_stddev = float(noise_stddev)

    def num_examples(self, split):
        """The number of examples in `split`."""
        self._check_split(split)
        return {
            "train": self.num_train,
            "validation": self.num_validation,
            "test": self.num_test,
        }[split]

    def captions(self, split, index):
        """The reference captions of one example, canonical first, without rendering."""
        _, captions = self._scene(split, index)
        return captions

    def scene(self, split, index):
        """What one example shows, without rendering (for questions about it).

        Returns:
            `{"layout": "single" | "row" | "column", "objects": [...]}`, the
            objects in reading order (left to right, top to bottom), each a dict
            with `size`, `color`, `shape`, `center` (`(x, y)`) and `extent` (the
            side), as fractions of the image side.
        """
        scene, _ = self._scene(split, index)
        return {
            "layout": scene["layout"],
            "objects": [
                {"size": size, "color": color, "shape": shape, "center": center,
                 "extent": extent}
                for (size, color, shape), (_, extent, center, _) in zip(
                    scene["names"], scene["objects"]
                )
            ],
        }

    def render(self, split, index):
        """Renders one example.

        Returns:
            `(image, captions)`: a uint8 `[image_size, image_size, 3]` array and the
            tuple of reference captions, canonical first.
        """
        scene, captions = self._scene(split, index)
        return self._draw(scene), captions

    def render_image(self, image_id):
        """Renders the image of a `"synthetic:<split>:<index>"` id."""
        split, index = parse_synthetic_image_id(image_id)
        return self.render(split, index)[0]

    def records(self, split):
        """The `CaptionRecord`s of `split`; images are `"synthetic:<split>:<index>"`."""
        return [
            CaptionRecord(
                image=f"{SYNTHETIC_PREFIX}:{split}:{index}",
                captions=self.captions(split, index),
                origin=f"synthetic {split} example {index} (seed {self.seed})",
            )
            for index in range(self.num_examples(split))
        ]

    def vocabulary(self):
        """Every word that a caption can contain, sorted."""
        words = set(SIZES) | set(COLORS) | set(SHAPES)
        for templates in _TEMPLATES.values():
            for template in templates:
                words.update(w for w in template.split() if not w.startswith("{"))
        return sorted(words)

    def _check_split(self, split):
        if split not in SPLITS:
            raise ValueError(
                f"`split` must be one of {', '.join(SPLITS)}. Received: split={split!r}"
            )

    def _scene(self, split, index):
        """Samples the scene of one example; everything but the pixel noise.

        All scene parameters come from one vector of uniforms, transformed in plain
        Python: a numpy call per parameter would make `records()` of 20,000
        examples take seconds instead of a fraction of one.
        """
        size = self.num_examples(split)
        if not _is_int(index) or not 0 <= index < size:
            raise ValueError(
                f"`index` must be an int in [0, {size}) for split {split!r}. "
                f"Received: index={index!r}"
            )
        rng = np.random.default_rng([self.seed, SPLITS.index(split), int(index)])
        u = iter(rng.random(_NUM_UNIFORMS).tolist())

        draw = next(u)
        layout, count = _LAYOUTS[-1]
        for candidate, cumulative in zip(_LAYOUTS, _LAYOUT_CUMULATIVE):
            if draw < cumulative:
                layout, count = candidate
                break
        # Distinct colours within an image: the first `count` of a random order.
        color_keys = [(next(u), name) for name in COLORS]
        color_names = [name for _, name in sorted(color_keys)[:count]]
        shape_draws = [next(u) for _ in range(3)]
        shape_names = [SHAPES[int(v * len(SHAPES))] for v in shape_draws[:count]]
        size_draws = [next(u), next(u)]
        if count == 3:
            # Only one large shape fits beside two small ones.
            large = [False] * 3
            if size_draws[0] < 0.5:
                large[int(size_draws[1] * 3)] = True
        else:
            large = [v < 0.5 for v in size_draws[:count]]
        sizes = [SIZES[int(is_large)] for is_large in large]
        extent_draws = [next(u) for _ in range(3)]
        extents = []
        for name, v in zip(sizes, extent_draws):
            low, high = _SIZE_RANGES[name]
            extents.append(low + v * (high - low))

        position_draws = [next(u) for _ in range(8)]
        if layout == "single":
            centers = [
                tuple(
                    _MARGIN + extents[0] / 2 + v * (1 - 2 * _MARGIN - extents[0])
                    for v in position_draws[:2]
                )
            ]
        else:
            # Along the axis: shapes in reading order, the slack split among the
            # gaps by a flat Dirichlet draw (normalised exponentials); across it: a
            # common centre line with small jitter, so the arrangement is clearly
            # a row or a column and never diagonal.
            slack = 1 - 2 * _MARGIN - sum(extents) - (count - 1) * _MIN_GAP
            weights = [-math.log1p(-v) for v in position_draws[: count + 1]]
            gaps = [slack * w / sum(weights) for w in weights]
            along = []
            start = _MARGIN + gaps[0]
            for i in range(count):
                along.append(start + extents[i] / 2)
                start += extents[i] + _MIN_GAP + gaps[i + 1]
            half = max(extents) / 2 + _CROSS_JITTER
            line = _MARGIN + half + position_draws[4] * (1 - 2 * (_MARGIN + half))
            across = [
                line + (2 * v - 1) * _CROSS_JITTER
                for v in position_draws[5 : 5 + count]
            ]
            if layout == "row":
                centers = list(zip(along, across))
            else:
                centers = list(zip(across, along))

        gray = 25 + 35 * next(u)
        background = tuple(
            int(round(min(max(gray + 12 * next(u) - 6, 0), 255))) for _ in range(3)
        )
        fills = []
        for name in color_names:
            jitter = [
                int((2 * _COLOR_JITTER + 1) * next(u)) - _COLOR_JITTER
                for _ in range(3)
            ]
            fills.append(
                tuple(min(max(c + j, 0), 255) for c, j in zip(COLORS[name], jitter))
            )
        scene = {
            "rng": rng,
            "background": background,
            "objects": list(zip(shape_names, extents, centers, fills)),
            "layout": layout,
            "names": list(zip(sizes, color_names, shape_names)),
        }
        descriptions = [
            f"{s} {c} {k}" for s, c, k in zip(sizes, color_names, shape_names)
        ]
        captions = tuple(
            template.format(*descriptions) for template in _TEMPLATES[(layout, count)]
        )
        return scene, captions

    def _draw(self, scene):
        side = self.image_size * _SUPERSAMPLING
        canvas = Image.new("RGB", (side, side), scene["background"])
        draw = ImageDraw.Draw(canvas)
        for shape, extent, (cx, cy), fill in scene["objects"]:
            cx, cy, half = cx * side, cy * side, extent * side / 2
            x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
            if shape == "circle":
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif shape == "square":
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            elif shape == "triangle":
                draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
            elif shape == "diamond":
                draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
            elif shape == "cross":
                arm = extent * side * 0.17
                draw.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)
                draw.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
        # Supersampling then box-filtering gives anti-aliased edges, as in a photo.
        image = np.asarray(
            canvas.reduce(_SUPERSAMPLING), dtype=np.float32
        )
        if self.noise_stddev > 0:
            image = image + scene["rng"].normal(0, self.noise_stddev, image.shape)
        return np.clip(np.round(image), 0, 255).astype(np.uint8)

