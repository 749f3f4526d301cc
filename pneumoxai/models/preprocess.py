"""The in-model preprocessing layers: [0, 1] images to what a backbone's weights expect."""

import keras

from ..validation import Options, check_param

#: What a ``preprocess`` layer maps [0, 1] images to (see :class:`BackbonePreprocess`).
PREPROCESS_MODES = ("caffe", "torch", "tf", "0-255", "0-1")
INPUT_NORMS = ("none", "standardize")


@keras.saving.register_keras_serializable(package="pneumoxai")
class BackbonePreprocess(keras.layers.Layer):
    """Map [0, 1] RGB images to what a model expects.

    Parameters
    ----------
    mode : {"caffe", "torch", "tf", "0-255", "0-1"}
        ``caffe``: RGB->BGR, x255, minus the ImageNet channel means (ResNet50, VGG;
        ``keras.applications.resnet50.preprocess_input``);
        ``torch``: ImageNet mean/std standardisation (DenseNet121);
        ``tf``: [-1, 1] (MobileNet, Inception);
        ``0-255``: x255, the model normalises itself (EfficientNet, or a model that
        starts with ``Rescaling(1/255)``);
        ``0-1``: identity.
    input_norm : {"none", "standardize"}, default="none"
        ``standardize``: each image is first shifted and scaled to mean 0.5 and
        standard deviation 0.2 over its pixels, so exposure and contrast differences
        between scanners and hospitals do not reach the network. Inside the model, so
        explanations see the same input as training.
    """

    _MEANS = {"caffe": (103.939, 116.779, 123.68), "torch": (0.485, 0.456, 0.406)}
    _STDS = (0.229, 0.224, 0.225)

    def __init__(self, mode="caffe", input_norm="none", **kwargs):
        super().__init__(**kwargs)
        if mode == "raw255":  # the name in members saved before "0-255"
            mode = "0-255"
        self.mode = check_param("BackbonePreprocess", "mode", mode, Options(PREPROCESS_MODES))
        self.input_norm = check_param("BackbonePreprocess", "input_norm", input_norm, Options(INPUT_NORMS))

    def call(self, inputs):
        ops = keras.ops
        if self.input_norm == "standardize":
            mean = ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
            # The floor keeps a flat (blank) image finite instead of dividing by zero.
            std = ops.maximum(ops.std(inputs, axis=(1, 2, 3), keepdims=True), 1.0 / 255.0)
            inputs = 0.5 + 0.2 * (inputs - mean) / std
        if self.mode == "0-1":
            return inputs
        if self.mode == "0-255":
            return inputs * 255.0
        if self.mode == "tf":
            return inputs * 2.0 - 1.0
        if self.mode == "caffe":
            bgr = ops.flip(inputs, axis=-1) * 255.0
            return bgr - ops.convert_to_tensor(self._MEANS["caffe"], dtype=inputs.dtype)
        mean = ops.convert_to_tensor(self._MEANS["torch"], dtype=inputs.dtype)
        std = ops.convert_to_tensor(self._STDS, dtype=inputs.dtype)
        return (inputs - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "input_norm": self.input_norm}


class _CallablePreprocess(keras.layers.Layer):
    """A user's preprocessing function as a layer, for :func:`adapt`.

    Unlike ``keras.layers.Lambda`` it keeps the function object in its config, so
    ``keras.models.clone_model`` (which the explainers use) works; such a model cannot
    be saved to a file: use one of :data:`PREPROCESS_MODES` for that.

    Parameters
    ----------
    function : callable
        Maps a float32 tensor of [0, 1] images (n, H, W, 3) to the model's input,
        with ``keras.ops`` (traceable).
    """

    def __init__(self, function, **kwargs):
        super().__init__(**kwargs)
        self.function = function

    def call(self, inputs):
        return self.function(inputs)

    def get_config(self):
        return {**super().get_config(), "function": self.function}

