"""`CLIPModel`: two towers, linear projections, a learnable temperature."""

import keras
import numpy as np
from keras import ops

from keras_clip import backends
from keras_clip import distributed
from keras_clip.models import config as configs
from keras_clip.losses import (
    ContrastiveLoss,
    clip_logits,
    l2_normalize,
)
from keras_clip.models.modified_resnet import ModifiedResNet
from keras_clip.models.text_transformer import TextTransformer
from keras_clip.models.vision_transformer import VisionTransformer


@keras.saving.register_keras_serializable(package="keras_clip")
class MaxValue(keras.constraints.Constraint):
    """Clamps a weight to at most `max_value` after every optimiser update."""

    def __init__(self, max_value):
        self.max_value = float(max_value)

    def __call__(self, w):
        return ops.minimum(w, ops.cast(self.max_value, w.dtype))

    def get_config(self):
        return {"max_value": self.max_value}


@keras.saving.register_keras_serializable(package="keras_clip")
class LastValue(keras.metrics.Metric):
    """A metric that reports the last value it was given (e.g. a schedule)."""

    def __init__(self, name="last_value", dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.value = self.add_variable(
            shape=(), initializer="zeros", dtype=dtype, name="value"
        )

    def update_state(self, value):
        self.value.assign(ops.cast(ops.reshape(value, ()), self.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)

    def reset_state(self):
        pass  # The last value stays meaningful across epochs.


_INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")


def _tokenizer_values(tokenizer):
    """The `CLIPConfig` fields the tokenizer knows: `vocabulary_size`,
    `eot_token_id`, `context_length` (a tokenizer without a vocabulary yet
    knows none)."""
    values = {}
    for field in ("vocabulary_size", "eot_token_id", "context_length"):
        try:
            value = getattr(tokenizer, field, None)
        except Exception:  # a tokenizer without a vocabulary yet
            value = None
        if value is not None:
            values[field] = int(value)
    return values


def _contradictions(values, given):
    """`(field, given value, tokenizer's value)` for each field of `given`
    that contradicts the tokenizer's `values`; a larger `vocabulary_size` (a
    padded embedding table) does not."""
    return [
        (field, given[field], value)
        for field, value in values.items()
        if given.get(field) is not None
        and given[field] != value
        and not (field == "vocabulary_size" and given[field] > value)
    ]


def tokenizer_fields(tokenizer, overrides=None):
    """The `CLIPConfig` fields a tokenizer fixes: `vocabulary_size`,
    `eot_token_id` and `context_length` (those it knows).

    An entry of `overrides` that contradicts the tokenizer is a `ValueError`
    naming both; a larger `vocabulary_size` (a padded embedding table) is
    allowed.
    """
    values = _tokenizer_values(tokenizer)
    for field, given, value in _contradictions(values, overrides or {}):
        raise ValueError(
            f"`{field}={given}` contradicts the tokenizer's {field} {value}. "
            f"Leave `{field}` out to take the tokenizer's."
        )
    return values


def _check_tokenizer_fits(config, tokenizer):
    """Refuses a tokenizer whose ids the model would read wrongly: the rule
    of `tokenizer_fields`, with the model's configuration as the given side."""
    if tokenizer is None:
        return
    model_side = {field: getattr(config, field)
                  for field in ("vocabulary_size", "eot_token_id", "context_length")}
    problems = [
        f"the tokenizer's {field} {value} against the model's {given}"
        for field, given, value in _contradictions(_tokenizer_values(tokenizer), model_side)
    ]
    if problems:
        raise ValueError(
            "The tokenizer does not fit the model: " + "; ".join(problems) + ". Build "
            "the model from the tokenizer (`CLIPModel.from_preset(name, tokenizer=tokenizer)`) "
            "or use the model's own tokenizer."
        )


def _check_paired(n_images, n_texts):
    """Training pairs image i with caption i: their counts must agree
    (where both are known)."""
    if n_images is not None and n_texts is not None and n_images != n_texts:
        raise ValueError(
            "Expected as many images as token id rows (one caption per image). "
            f"Received: {n_images} images and {n_texts} token id rows."
        )


@keras.saving.register_keras_serializable(package="keras_clip")
class CLIPModel(keras.Model):
    """CLIP: contrastive language-image pre-training (Radford et al. 2021).

    An image tower (ViT or the paper's modified ResNet) and a causal text
    transformer map into a joint space through bias-free linear projections.
    Embeddings are L2-normalised and compared by cosine similarity scaled by
    a learnable temperature, stored as `logit_scale = log(scale)`, initialised
    to `ln(1 / 0.07)` and clamped at `ln(100)` after every optimiser update.

    `fit` trains with the symmetric contrastive loss over each (global)
    batch, `model.loss`, a `keras_clip.ContrastiveLoss` that `compile` takes
    or builds, and logs `loss`, `i2t_accuracy`, `t2i_accuracy` and
    `logit_scale`.

    Args:
        config: a `keras_clip.CLIPConfig` or its dict.
        tokenizer: optional tokenizer layer saved with the model (its
            vocabulary travels inside the `.keras` file). Its vocabulary
            must fit the model's, with the same end-of-text id and context
            length (`from_preset(name, tokenizer=...)` takes them from it).
        prompt_templates: optional list of prompt templates ("{}" marks the
            label) that this model was trained to read, saved with it;
            `keras_clip.zero_shot` uses them when the caller gives none.

    Call arguments:
        inputs: dict with `"images"`, float32 `(B, H, W, 3)` already
            normalised, and `"token_ids"`, int32 `(B, L)` with
            `L <= context_length`, padded with 0.
        training: whether batch-norm layers use batch statistics. When
            training, the towers run in `model.loss.micro_batches` slices
            and only the embeddings come out (the loss builds its own
            logits, this replica's rows, whole or in chunks).

    Returns:
        dict with `"logits_per_image"` `(B_img, B_txt)` and
        `"logits_per_text"` `(B_txt, B_img)`, float32, and the unit
        `"image_embeddings"` and `"text_embeddings"`.

    Example:

    ```python
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=100))
    model.fit(dataset)  # batches of {"images": ..., "token_ids": ...}
    ```
    """

    def __init__(self, config=None, tokenizer=None, prompt_templates=None, **kwargs):
        super().__init__(**kwargs)
        if config is None:
            config = configs.CLIPConfig()
        elif isinstance(config, dict):
            config = configs.CLIPConfig.from_dict(config)
        elif not isinstance(config, configs.CLIPConfig):
            raise ValueError(
                "`config` must be a CLIPConfig or a dict. "
                f"Received: config of type {type(config).__name__}"
            )
        self.config = config
        _check_tokenizer_fits(config, tokenizer)
        self.tokenizer = tokenizer
        self.prompt_templates = (
            None if prompt_templates is None else [str(t) for t in prompt_templates]
        )
        c = config
        policy = self.dtype_policy
        if c.vision == "vit":
            self.image_encoder = VisionTransformer(
                c.image_size,
                c.patch_size,
                c.vision_width,
                c.vision_layers,
                c.vision_heads,
                mlp_ratio=c.mlp_ratio,
                activation=c.activation,
                name="image_encoder",
                dtype=policy,
            )
            self.image_projection = keras.layers.Dense(
                c.embed_dim,
                use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(
                    stddev=c.vision_width**-0.5
                ),
                name="image_projection",
                dtype=policy,
            )
        else:
            # The attention pool's output projection maps to the joint space.
            self.image_encoder = ModifiedResNet(
                c.image_size,
                c.vision_layers,
                c.vision_width,
                c.vision_heads,
                c.embed_dim,
                name="image_encoder",
                dtype=policy,
            )
            self.image_projection = None
        self.text_encoder = TextTransformer(
            c.vocabulary_size,
            c.context_length,
            c.text_width,
            c.text_layers,
            c.text_heads,
            c.eot_token_id,
            mlp_ratio=c.mlp_ratio,
            activation=c.activation,
            name="text_encoder",
            dtype=policy,
        )
        self.text_projection = keras.layers.Dense(
            c.embed_dim,
            use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=c.text_width**-0.5
            ),
            name="text_projection",
            dtype=policy,
        )
        if c.remat:
            for tower in (self.image_encoder, self.text_encoder):
                for layer in [tower, *tower._flatten_layers()]:
                    if hasattr(layer, "remat"):
                        layer.remat = True
        self.i2t_accuracy = keras.metrics.Mean(name="i2t_accuracy")
        self.t2i_accuracy = keras.metrics.Mean(name="t2i_accuracy")
        self.logit_scale_tracker = LastValue(name="logit_scale")
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        c = self.config
        self.image_encoder.build((None, c.image_size, c.image_size, 3))
        if self.image_projection is not None:
            self.image_projection.build((None, c.vision_width))
        self.text_encoder.build((None, c.context_length))
        self.text_projection.build((None, c.text_width))
        # The temperature always lives in float32, like the loss.
        self.logit_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(c.logit_scale_init),
            constraint=MaxValue(c.logit_scale_max),
            dtype="float32",
            name="logit_scale",
        )
        self.built = True

    @classmethod
    def from_preset(cls, name, tokenizer=None, **overrides):
        """An untrained model of a named configuration.

        Args:
            name: one of `keras_clip.list_presets()` ("RN50", "ViT-B/32",
                "tiny-vit", ...), or open_clip's name of the same
                architecture ("ViT-B-32", "ViT-B-32-quickgelu",
                "RN50-quickgelu"; `configs.get_preset`).
            tokenizer: optional tokenizer to carry. The model then takes its
                `vocabulary_size`, `eot_token_id` and `context_length`
                from it, unless overridden; an override that contradicts
                the tokenizer is a `ValueError` naming both.
            **overrides: `CLIPConfig` fields to change, e.g.
                `vocabulary_size=8000, activation="gelu"`; `dtype` goes to
                the model (a dtype policy name such as "mixed_bfloat16");
                `prompt_templates` to the model.
        """
        dtype = overrides.pop("dtype", None)
        templates = overrides.pop("prompt_templates", None)
        overrides = {**tokenizer_fields(tokenizer, overrides), **overrides}
        config = configs.get_preset(name, **overrides)
        return cls(config=config, tokenizer=tokenizer, prompt_templates=templates,
                   dtype=dtype)

    # ---- input checks ---------------------------------------------------

    def _check_images(self, images):
        shape = tuple(images.shape)
        size = self.config.image_size
        dtype = keras.backend.standardize_dtype(images.dtype)
        if len(shape) != 4:
            raise ValueError(
                "`images` must have rank 4, (batch, height, width, 3). "
                f"Received: images.shape={shape}"
            )
        if shape[-1] != 3:
            raise ValueError(
                "`images` must have 3 channels (RGB, channels last). "
                f"Received: images.shape={shape}"
            )
        if any(d is not None and d != size for d in shape[1:3]):
            raise ValueError(
                f"`images` must be {size}x{size} for this model "
                f"(image_size={size}). Received: images.shape={shape}"
            )
        if "float" not in dtype:
            raise ValueError(
                "`images` must be floating point, already normalised with "
                "the model's mean and std. "
                f"Received: images.dtype={dtype}"
            )

    def _check_token_ids(self, token_ids):
        shape = tuple(token_ids.shape)
        dtype = keras.backend.standardize_dtype(token_ids.dtype)
        if len(shape) != 2:
            raise ValueError(
                "`token_ids` must have rank 2, (batch, sequence_length). "
                f"Received: token_ids.shape={shape}"
            )
        if dtype not in _INTEGER_DTYPES:
            raise ValueError(
                "`token_ids` must be integers (int32). "
                f"Received: token_ids.dtype={dtype}"
            )
        context = self.config.context_length
        if shape[1] is not None and shape[1] > context:
            raise ValueError(
                f"`token_ids` are longer than the context length {context}. "
                f"Received: token_ids.shape={shape}"
            )
        self._check_token_range(token_ids)

    def _check_token_range(self, token_ids):
        # Where the values are known now (NumPy, eager tensors); inside a
        # compiled program they are not, and an id out of range is then
        # whatever the backend's gather does (docs/design.md, "The model").
        known = backends.value_range(token_ids)
        vocabulary = self.config.vocabulary_size
        if known is not None and (known[0] < 0 or known[1] >= vocabulary):
            raise ValueError(
                f"Expected token ids in [0, {vocabulary}) (the model's vocabulary). "
                f"Received: ids from {known[0]} to {known[1]}. Tokenize with the "
                "model's tokenizer (`model.tokenizer`), or build the model from "
                "your tokenizer (`CLIPModel.from_preset(name, tokenizer=...)`)."
            )

    # ---- inference --------------------------------------------------------

    def preprocess(self, images):
        """Model inputs from images of any size, with this model's settings.

        Resizes the shorter side (Pillow, `config.image_interpolation`),
        center-crops to `config.image_size` and normalises with
        `config.image_mean` / `image_std`, exactly as open_clip's evaluation
        transform does.

        Args:
            images: a list of file paths, PIL images or uint8 arrays
                `(H, W, C)`, or a uint8 array `(N, H, W, C)`.

        Returns:
            float32 NumPy array `(N, image_size, image_size, 3)`.
        """
        from keras_clip.data.preprocess import preprocess_images

        c = self.config
        return preprocess_images(
            images, c.image_size, c.image_mean, c.image_std, c.image_interpolation
        )

    def encode_image(self, images, normalize=True, training=False):
        """Image embeddings `(B, embed_dim)`, unit length by default.

        Args:
            images: float `(B, image_size, image_size, 3)`, normalised.
            normalize: L2-normalise (in float32).
            training: batch-norm mode (ResNet).
        """
        self._check_images(images)
        return self._encode_image(images, normalize, training)

    # Fast paths (keras_clip.backends): torch skips the tower's
    # `Layer.__call__` in inference; TF and JAX compile eager inference.
    @backends.fast_path
    def _encode_image(self, images, normalize, training):
        features = self.image_encoder(images, training=training)  # (B, W)
        if self.image_projection is not None:
            features = self.image_projection(features)  # (B, E)
        return l2_normalize(features) if normalize else features

    def encode_text(self, token_ids, normalize=True, training=False):
        """Text embeddings `(B, embed_dim)`, unit length by default.

        Args:
            token_ids: int `(B, L)`, `L <= context_length`, padded with 0;
                or texts (a string or a list of strings), which the model's
                tokenizer turns into ids.
            normalize: L2-normalise (in float32).
        """
        token_ids = self._ids_from_texts(token_ids)
        self._check_token_ids(token_ids)
        return self._encode_text(token_ids, normalize, training)

    def _ids_from_texts(self, token_ids):
        """Token ids for texts given as a string or a list of strings."""
        if isinstance(token_ids, str):
            token_ids = [token_ids]
        texts = isinstance(token_ids, (list, tuple)) and token_ids and all(
            isinstance(t, str) for t in token_ids
        )
        if not texts and not (isinstance(token_ids, np.ndarray) and token_ids.dtype.kind in "US"):
            return token_ids
        if self.tokenizer is None:
            raise ValueError(
                "Expected integer token ids, or texts and a model with a tokenizer. "
                "Received: texts, and `model.tokenizer` is None. Tokenize them first "
                "or attach a tokenizer (`CLIPModel(config, tokenizer=...)`)."
            )
        return np.asarray(self.tokenizer([str(t) for t in np.ravel(token_ids)]))

    @backends.fast_path  # as `_encode_image`
    def _encode_text(self, token_ids, normalize, training):
        features = self.text_encoder(token_ids, training=training)  # (B, W)
        features = self.text_projection(features)  # (B, E)
        return l2_normalize(features) if normalize else features

    def __setattr__(self, name, value):
        if name == "jit_compile":
            # Recorded here, not in a property setter: TF's attribute
            # tracking skips the setter when the value is unchanged
            # (`model.jit_compile = False` where "auto" resolved to False).
            # `compile` sets the resolved value through here too, then puts
            # back what it was asked for.
            super().__setattr__("requested_jit_compile", value)
        super().__setattr__(name, value)

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or not {"images", "token_ids"} <= set(
            inputs
        ):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs)
            raise ValueError(
                "CLIPModel expects a dict with keys 'images' and 'token_ids'. "
                f"Received: {got}"
            )
        # Inference scores any images against any texts; training pairs them.
        if training:
            _check_paired(inputs["images"].shape[0], inputs["token_ids"].shape[0])
        micro = self.loss.micro_batches if training and self.loss is not None else None
        if micro and micro > 1:
            image, text = self._encode_in_micro_batches(inputs, micro)
        else:
            image = self.encode_image(inputs["images"], training=training)
            text = self.encode_text(inputs["token_ids"], training=training)
        if training:
            # The loss builds its own (sharded / chunked) logits: never
            # materialise the full matrix here.
            return {"image_embeddings": image, "text_embeddings": text}
        logits = clip_logits(
            image, text, self.logit_scale, self.config.logit_scale_max
        )  # (B_img, B_txt)
        return {
            "logits_per_image": logits,
            "logits_per_text": ops.transpose(logits),
            "image_embeddings": image,
            "text_embeddings": text,
        }

    def _encode_in_micro_batches(self, inputs, micro):
        """Both towers over `micro` slices, each rematerialised.

        Only the slices' embeddings are kept from the forward pass; the
        backward pass recomputes one slice's activations at a time. The loss
        then sees every embedding of the batch: the gradient of a true big
        batch with the activation memory of one slice (the cached-embedding
        accumulation of GradCache / open_clip's accum-freq).
        """
        images, token_ids = inputs["images"], inputs["token_ids"]
        total = images.shape[0]
        if total is None or total % micro:
            raise ValueError(
                f"Expected a static batch size divisible by micro_batches={micro} "
                f"(batch with drop_remainder=True). Received: batch size {total}"
            )
        size = total // micro

        def towers(x, ids):
            return (
                self.encode_image(x, training=True),
                self.encode_text(ids, training=True),
            )

        towers = keras.remat(towers)
        parts = [
            towers(images[j * size : (j + 1) * size], token_ids[j * size : (j + 1) * size])
            for j in range(micro)
        ]
        return (
            ops.concatenate([p[0] for p in parts], axis=0),
            ops.concatenate([p[1] for p in parts], axis=0),
        )

    # ---- training -----------------------------------------------------

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.fit`, refusing what cannot train a contrastive model.

        A batch of one pair has no negatives (its loss is 0 whatever the
        weights): `batch_size` below 2 is a `ValueError`. For in-memory
        inputs (a dict of arrays) the images and token ids must come in the
        same number and the ids must lie in the model's vocabulary.
        """
        if batch_size is not None and batch_size < 2:
            raise ValueError(
                "Expected `batch_size` >= 2: a contrastive batch of one pair has no "
                f"negatives and learns nothing. Received: batch_size={batch_size}"
            )
        if isinstance(x, dict) and {"images", "token_ids"} <= set(x):
            images, ids = x["images"], x["token_ids"]
            shapes = getattr(images, "shape", None), getattr(ids, "shape", None)
            if None not in shapes and len(shapes[0]) and len(shapes[1]):
                _check_paired(shapes[0][0], shapes[1][0])
                if shapes[0][0] is not None and shapes[0][0] < 2:
                    raise ValueError(
                        "Expected at least 2 image-caption pairs: a contrastive batch "
                        f"of one has no negatives. Received: {shapes[0][0]}"
                    )
            self._check_token_range(ids)
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # Uncompiled (e.g. `compute_loss` called by hand): the paper's loss.
        loss_fn = self.loss if self.loss is not None else ContrastiveLoss()
        scale = ops.exp(
            ops.minimum(self.logit_scale, self.config.logit_scale_max)
        )
        loss, metrics = loss_fn(
            y_pred["image_embeddings"], y_pred["text_embeddings"], scale
        )
        self.i2t_accuracy.update_state(metrics["i2t_accuracy"])
        self.t2i_accuracy.update_state(metrics["t2i_accuracy"])
        self.logit_scale_tracker.update_state(ops.exp(self.logit_scale))
        for extra in self.losses:  # e.g. activity regularisers.
            # Keras's own aggregation: float32 and, under tf.distribute,
            # divided by the replicas as the contrastive loss is.
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def train_step(self, *args, **kwargs):
        if (
            keras.backend.backend() == "torch"
            and distributed.replica_context().active
        ):
            return self._torch_distributed_train_step(*args)
        return super().train_step(*args, **kwargs)

    def _torch_distributed_train_step(self, data):
        """Keras's torch step, with gradients averaged over processes.

        Every rank sees its shard of the global batch; the loss gathers the
        embeddings with a gradient and reports the global batch's value,
        and averaging the parameter gradients makes every rank apply the
        same update (the data-parallel contract that DDP gives plain torch
        modules).
        """
        import torch  # torch's step: the update runs outside autograd.

        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=True)
        self.zero_grad()
        loss = self._compute_loss(x=x, y_pred=y_pred, training=True)
        self._loss_tracker.update_state(loss, sample_weight=x["images"].shape[0])
        self.optimizer.scale_loss(loss).backward()
        weights = self.trainable_weights[:]
        grads = distributed.average_gradients(weights, distributed.replica_context())
        with torch.no_grad():
            self.optimizer.apply(grads, weights)
        return self.compute_metrics(x, None, y_pred, sample_weight=None)

    def compile(
        self,
        optimizer="adamw",
        loss=None,
        exclude_from_weight_decay=True,
        loss_chunk_size=None,
        micro_batches=None,
        label_smoothing=None,
        **kwargs,
    ):
        """Configures training with an optimizer and the contrastive loss.

        Args:
            optimizer: an optimizer; see `keras_clip.make_optimizer` for the
                paper's AdamW with warm-up + cosine schedule.
            loss: a `keras_clip.ContrastiveLoss` holding the loss options
                (label smoothing, chunks, micro-batches), or `None` for one
                built from the three keyword arguments below. Kept as
                `model.loss` and saved in the compile config, so a loaded
                model trains with the same options.
            exclude_from_weight_decay: no decay on gains, biases, embeddings
                or the temperature (open_clip's trainer does decay the 2-D
                token and positional embeddings). Kept as
                `model.exclude_from_weight_decay` and applied again on every
                `compile`, so it survives `load_model`.
            loss_chunk_size: kept for compatibility (and for files saved
                before the loss object): `ContrastiveLoss(chunk_size=...)`.
            micro_batches: kept for compatibility:
                `ContrastiveLoss(micro_batches=...)`.
            label_smoothing: kept for compatibility:
                `ContrastiveLoss(label_smoothing=...)`.
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`,
                `steps_per_execution`).

        Example:

        ```python
        model.compile(
            optimizer=keras_clip.make_optimizer(model, total_steps=1000),
            loss=keras_clip.ContrastiveLoss(label_smoothing=0.1),
        )
        # The same training, with the older keyword arguments:
        model.compile(
            optimizer=keras_clip.make_optimizer(model, total_steps=1000),
            label_smoothing=0.1,
        )
        ```
        """
        options = {
            "loss_chunk_size": loss_chunk_size,
            "micro_batches": micro_batches,
            "label_smoothing": label_smoothing,
        }
        given = {k: v for k, v in options.items() if v is not None}
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if loss is None:
            loss = ContrastiveLoss(
                label_smoothing=0.0 if label_smoothing is None else label_smoothing,
                chunk_size=loss_chunk_size,
                micro_batches=micro_batches,
            )
        elif not isinstance(loss, ContrastiveLoss):
            raise ValueError(
                "Expected `loss` to be a `keras_clip.ContrastiveLoss` or None: "
                "CLIPModel computes its own contrastive loss; do not pass "
                f"`loss` functions of labels. Received: loss={loss!r}"
            )
        elif given:
            raise ValueError(
                "Pass the loss options either in `loss=ContrastiveLoss(...)` "
                "or as keyword arguments, not both. "
                f"Received: loss={loss!r} and {given}"
            )
        # "auto" resolves per backend (False under torch); remember what was
        # asked so a file saved under torch still compiles with XLA elsewhere.
        requested_jit_compile = kwargs.get("jit_compile", "auto")
        super().compile(optimizer=optimizer, **kwargs)
        self.loss = loss
        # What was asked for ("auto", True or False), as opposed to
        # `jit_compile`, what it resolved to on this backend and device.
        self.requested_jit_compile = requested_jit_compile
        self.exclude_from_weight_decay = exclude_from_weight_decay
        # mixed_float16 wraps the optimizer in a LossScaleOptimizer, whose
        # own exclusion list the wrapped optimizer never reads.
        target = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if exclude_from_weight_decay and hasattr(
            target, "exclude_from_weight_decay"
        ):
            target.exclude_from_weight_decay(
                var_list=self.no_weight_decay_variables()
            )

    def no_weight_decay_variables(self):
        """Gains, biases, embeddings and the temperature."""
        embeddings = {
            id(v)
            for layer in self._flatten_layers()
            if isinstance(layer, keras.layers.Embedding)
            for v in layer.weights
        }
        return [
            v
            for v in self.trainable_variables
            if len(v.shape) < 2
            or id(v) in embeddings
            or v.name in ("positional_embedding", "class_embedding")
        ]

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:
            return config
        optimizer = config.get("optimizer")
        if isinstance(optimizer, dict) and str(
            optimizer.get("module", "")
        ).startswith("keras.src.backend."):
            # Under torch, Keras instantiates backend-private optimizer
            # subclasses (keras.src.backend.torch.optimizers...). Record the
            # public class so the file loads and trains on every backend.
            optimizer["module"] = "keras.optimizers"
            optimizer.pop("registered_name", None)
        config["loss"] = keras.saving.serialize_keras_object(self.loss)
        config["exclude_from_weight_decay"] = self.exclude_from_weight_decay
        if "jit_compile" in config:
            config["jit_compile"] = self.requested_jit_compile
        return config

    def compile_from_config(self, config):
        # Files saved before `ContrastiveLoss` carry `loss=None` and the
        # loss options as keyword arguments; `compile` takes both forms.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def input_signature(self):
        """The model's inputs as `keras.InputSpec`s, batch size free:
        `{"images": (None, S, S, 3) float32, "token_ids": (None, L) int32}`."""
        c = self.config
        return {
            "images": keras.InputSpec(shape=(None, c.image_size, c.image_size, 3), dtype="float32"),
            "token_ids": keras.InputSpec(shape=(None, c.context_length), dtype="int32"),
        }

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """`keras.Model.export`, with the model's own input signature by
        default (`input_signature()`), so a built model exports without one,
        whether or not it was called, fitted or used to predict."""
        if input_signature is None:
            input_signature = [self.input_signature()]
        return super().export(filepath, format=format, verbose=verbose,
                              input_signature=input_signature, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["config"] = self.config.to_dict()
        if self.prompt_templates is not None:
            config["prompt_templates"] = list(self.prompt_templates)
        if self.tokenizer is not None:
            config["tokenizer"] = keras.saving.serialize_keras_object(
                self.tokenizer
            )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("tokenizer"), dict):
            config["tokenizer"] = keras.saving.deserialize_keras_object(
                config["tokenizer"]
            )
        return cls(**config)
