"""The tiny keras-hub ResNet the encoder, fine-tuning and ensemble tests stand in for a real preset with."""


def tiny_resnet_kwargs(image_size, stackwise_num_filters=(64,), stackwise_num_strides=None):
    """`ResNetBackbone` arguments: one basic block per stack (the first stack keras-hub requires at 64 filters)."""
    stacks = len(stackwise_num_filters)
    return dict(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=list(stackwise_num_filters),
        stackwise_num_blocks=[1] * stacks, stackwise_num_strides=list(stackwise_num_strides or [1] * stacks),
        block_type="basic_block", use_pre_activation=False, image_shape=(image_size, image_size, 3),
    )


def save_tiny_resnet_preset(preset_dir, image_size):
    """Saves a randomly initialised one-stack ResNet as a keras-hub preset folder; returns the folder."""
    import keras_hub

    keras_hub.models.ResNetBackbone(**tiny_resnet_kwargs(image_size)).save_to_preset(str(preset_dir))
    return str(preset_dir)
