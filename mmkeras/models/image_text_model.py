"""What every image+text model (fusion classifier, dual encoder) saves and rebuilds the same way."""

import keras


class ImageTextModel(keras.Model):
    """Base of the models with an `image_encoder`, a `text_encoder` and a `text_preprocessor`.

    Subclasses set `image_encoder`, `text_encoder`, `text_preprocessor` and
    `image_size`, and build from `{"images": shape, "token_ids": shape}`.
    This base gives them one build config, the input `sequence_length`, and a
    `from_config` that deserializes the layers named in `NESTED_LAYERS`.
    """

    NESTED_LAYERS = ("image_encoder", "text_encoder", "text_preprocessor")

    @property
    def sequence_length(self):
        if self.text_preprocessor is not None:
            return self.text_preprocessor.sequence_length
        return self.text_encoder.sequence_length

    def get_build_config(self):
        return {"images_shape": [None, self.image_size, self.image_size, 3],
                "token_ids_shape": [None, self.sequence_length]}

    def build_from_config(self, config):
        self.build({"images": tuple(config["images_shape"]), "token_ids": tuple(config["token_ids_shape"])})

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in cls.NESTED_LAYERS:
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        return cls(**config)
