"""The `--data` spec: the one parser of the strings that name a data set.

`training.train --data=...`, `training.prepare_data --data=...` and the caption
and classification loaders all parse their spec here, so a form accepted by one
is accepted (or refused with the same message) by all.

    >>> parse_data_spec("flickr8k:../shared/data/flickr8k-1k")
    DataSpec(kind='flickr8k', args=('../shared/data/flickr8k-1k',), text='flickr8k:../shared/data/flickr8k-1k')
    >>> parse_data_spec("coco:ann/captions_train2017.json:train2017").args
    ('ann/captions_train2017.json', 'train2017')
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataKind:
    """One form of data spec: its name, argument names and what it holds."""

    name: str
    args: tuple
    description: str

    @property
    def form(self):
        return ":".join((self.name,) + self.args)


# Every data kind mmkeras reads. A task accepts a subset (see `parse_data_spec`).
DATA_KINDS = {
    kind.name: kind
    for kind in (
        DataKind("synthetic", (), "the built-in synthetic shapes (captions, or VQA questions for classify/vqa)"),
        DataKind("flickr8k", ("DIR",), "Flickr8k captions (captions.txt or Flickr8k.token.txt)"),
        DataKind("coco", ("CAPTIONS_JSON", "IMAGE_DIR"), "COCO or Karpathy-split caption JSON"),
        DataKind("csv", ("FILE",), "a CSV manifest (a .jsonl/.ndjson suffix reads it as JSONL)"),
        DataKind("jsonl", ("FILE",), "a JSONL manifest"),
        DataKind("tfrecord", ("DIR",), "TFRecord shards written by training.prepare_data"),
        DataKind("easy_vqa", (), "the easy-vqa data set from its PyPI package"),
        DataKind("flickr8k_match", ("DIR",), "Flickr8k image-caption matching (does this caption describe this image?)"),
    )
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A parsed data spec.

    Args:
        kind: a key of `DATA_KINDS`, lower case.
        args: the spec's arguments (paths), as many as the kind names.
        text: the spec as the user wrote it, for messages.
    """

    kind: str
    args: tuple
    text: str

    @property
    def path(self):
        """The first argument (the file or folder), or None."""
        return self.args[0] if self.args else None


def describe_kinds(kinds=None):
    """One line per accepted form, e.g. for `--help` and error messages."""
    kinds = kinds or tuple(DATA_KINDS)
    return "\n".join(f"  {DATA_KINDS[k].form}: {DATA_KINDS[k].description}" for k in kinds)


def _error(spec, problem, kinds):
    return ValueError(f"{problem} Accepted forms:\n{describe_kinds(kinds)}\nReceived: data={spec!r}")


def parse_data_spec(spec, kinds=None):
    """Parses a data spec such as `flickr8k:DIR` or `coco:CAPTIONS_JSON:IMAGE_DIR`.

    Args:
        spec: the spec string.
        kinds: the kinds the caller accepts (default: all of `DATA_KINDS`).

    Returns:
        A `DataSpec`.

    Raises:
        ValueError: naming the spec, what is wrong and the accepted forms.
    """
    kinds = tuple(kinds or DATA_KINDS)
    text = str(spec).strip()
    name, colon, rest = text.partition(":")
    name = name.strip().lower()
    if name not in DATA_KINDS:
        raise _error(spec, f"Unknown data kind {name!r}.", kinds)
    if name not in kinds:
        raise _error(spec, f"Data kind {name!r} is not usable here.", kinds)
    kind = DATA_KINDS[name]
    if not kind.args:
        if colon and rest:
            raise _error(spec, f"Data kind {name!r} takes no arguments.", kinds)
        return DataSpec(name, (), text)
    if not rest:
        raise _error(spec, f"Data kind {name!r} needs {':'.join(kind.args)}.", kinds)
    if len(kind.args) == 1:
        return DataSpec(name, (rest,), text)
    # coco:CAPTIONS_JSON:IMAGE_DIR. A Windows drive letter or an odd file name
    # may contain ':', so split after the JSON file name when there is one.
    cut = rest.lower().find(".json:")
    if cut >= 0:
        first, second = rest[: cut + 5], rest[cut + 6:]
    else:
        first, _, second = rest.partition(":")
    if not first or not second:
        raise _error(spec, f"Data kind {name!r} needs {':'.join(kind.args)}.", kinds)
    return DataSpec(name, (first, second), text)
