"""`CLIPModel`: two towers, linear projections, a learnable temperature."""

import keras
import numpy as np
from keras import ops
from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.backend.common.variables import AutocastScope, get_autocast_scope

from keras_clip import distributed
from keras_clip.models import config as configs
from keras_clip.models import layers as clip_layers
from keras_clip.losses import (
    _check_label_smoothing,
    chunked_contrastive_loss,
    clip_logits,
    contrastive_loss,
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


def _project(layer, features):
    """A projection `Dense` (no bias) applied to a tower's features. On
    torch, one `F.linear` instead of the layer's `__call__` (input
    conversion, dtype policy, autocast scope, hooks: ~0.1-0.2 ms per eager
    call, a tenth of a small model's inference); the kernel is cast to the
    features' dtype as the autocast scope would."""
    if clip_layers._TORCH and clip_layers.torch_fusable((layer,)):
        return clip_layers.torch_linear(ops.convert_to_tensor(features), layer)
    return layer(features)


def _tower(tower, inputs, training):
    """`tower(inputs, training=training)`, skipping `Layer.__call__` on torch
    inference.

    On torch each eager `Layer.__call__` of a tower costs ~0.1-0.2 ms
    (torch's module dispatch, then Keras's input conversion, name scope,
    call context, mask and loss bookkeeping over every sublayer), as much
    as a small model's whole batch-1 inference spends outside its kernels.
    For inference of a built tower, only two of its steps change the
    result, and they are done here: float inputs are cast to the compute
    dtype, and under a mixed policy the tower's `call` runs in the autocast
    scope that `__call__` would open (sublayers read their weights through
    it). Training, towers with torch forward hooks (so that hooks
    registered on a tower still fire), symbolic or stateless calls and
    calls inside another autocast scope keep `__call__`.
    """
    if clip_layers._TORCH and not training:
        if isinstance(inputs, np.ndarray):
            inputs = ops.convert_to_tensor(inputs)  # as `__call__` would
        if _plain_torch_call(tower, inputs):
            compute = tower.compute_dtype
            if inputs.is_floating_point() and keras.backend.standardize_dtype(inputs.dtype) != compute:
                inputs = ops.cast(inputs, compute)
            kwargs = {"training": False} if tower._call_has_training_arg else {}
            if compute == tower.variable_dtype:
                return tower.call(inputs, **kwargs)
            with AutocastScope(compute):
                return tower.call(inputs, **kwargs)
    return tower(inputs, training=training)


def _plain_torch_call(layer, inputs):
    """Whether `_tower` may run `layer.call(inputs)` without `__call__`."""
    import torch
    from torch.nn.modules import module as torch_module

    return (
        layer.built
        and layer.autocast
        and isinstance(inputs, torch.Tensor)
        and inputs.device.type != "meta"
        and get_autocast_scope() is None
        and not in_stateless_scope()
        and not (layer._forward_hooks or layer._forward_pre_hooks)
        and not (torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)
    )


@keras.saving.register_keras_serializable(package="keras_clip")
class CLIPModel(keras.Model):
    """CLIP: contrastive language-image pre-training (Radford et al. 2021).

    An image tower (ViT or the paper's modified ResNet) and a causal text
    transformer map into a joint space through bias-free linear projections.
    Embeddings are L2-normalised and compared by cosine similarity scaled by
    a learnable temperature, stored as `logit_scale = log(scale)`, initialised
    to `ln(1 / 0.07)` and clamped at `ln(100)` after every optimiser update.

    `fit` trains with the symmetric contrastive loss over each batch (no
    `loss` is passed to `compile`) and logs `loss`, `i2t_accuracy`,
    `t2i_accuracy` and `logit_scale`.

    Args:
        config: a `keras_clip.CLIPConfig` or its dict.
        tokenizer: optional tokenizer layer saved with the model (its
            vocabulary travels inside the `.keras` file).

    Call arguments:
        inputs: dict with `"images"`, float32 `(B, H, W, 3)` already
            normalised, and `"token_ids"`, int32 `(B, L)` with
            `L <= context_length`, padded with 0.
        training: whether batch-norm layers use batch statistics.

    Returns:
        dict with `"logits_per_image"` `(B_img, B_txt)` and
        `"logits_per_text"` `(B_txt, B_img)`, float32.

    Example:

    ```python
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=100))
    model.fit(dataset)  # batches of {"images": ..., "token_ids": ...}
    ```
    """

    def __init__(self, config=None, tokenizer=None, **kwargs):
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
        self.tokenizer = tokenizer
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
            tokenizer: optional tokenizer to carry.
            **overrides: `CLIPConfig` fields to change, e.g.
                `vocabulary_size=8000, activation="gelu"`; `dtype` goes to
                the model (a dtype policy name such as "mixed_bfloat16").
        """
        dtype = overrides.pop("dtype", None)
        config = configs.get_preset(name, **overrides)
        return cls(config=config, tokenizer=tokenizer, dtype=dtype)

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
        compiled = self._compiled_encoder("image", normalize, images, training)
        if compiled is not None:
            return compiled(images)
        return self._encode_image(images, normalize, training)

    def _encode_image(self, images, normalize, training):
        features = _tower(self.image_encoder, images, training)  # (B, W)
        if self.image_projection is not None:
            features = _project(self.image_projection, features)  # (B, E)
        return l2_normalize(features) if normalize else features

    def encode_text(self, token_ids, normalize=True, training=False):
        """Text embeddings `(B, embed_dim)`, unit length by default.

        Args:
            token_ids: int `(B, L)`, `L <= context_length`, padded with 0.
            normalize: L2-normalise (in float32).
        """
        self._check_token_ids(token_ids)
        compiled = self._compiled_encoder("text", normalize, token_ids, training)
        if compiled is not None:
            return compiled(token_ids)
        return self._encode_text(token_ids, normalize, training)

    def _encode_text(self, token_ids, normalize, training):
        features = _tower(self.text_encoder, token_ids, training)  # (B, W)
        features = _project(self.text_projection, features)  # (B, E)
        return l2_normalize(features) if normalize else features

    def _compiled_encoder(self, tower, normalize, inputs, training):
        """A compiled inference function for one tower, or `None` for eager.

        Called with concrete inputs outside any trace, `encode_image` /
        `encode_text` run as one compiled program (`tf.function` or
        `jax.jit`), as `predict` does, instead of op by op. Eager when
        training, when `run_eagerly` or (JAX) `jit_compile=False` is set,
        inside a trace, and on torch (whose eager kernels are what open_clip
        runs too). On TF the program uses XLA unless `jit_compile=False` was
        asked for (see `_tf_encoder_xla`).
        """
        if training or self.run_eagerly:
            return None
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            if not tf.executing_eagerly() or isinstance(inputs, keras.KerasTensor):
                return None
        elif backend == "jax":
            import jax

            if (
                isinstance(inputs, (jax.core.Tracer, keras.KerasTensor))
                or in_stateless_scope()
                or not self.jit_compile
            ):
                return None
        else:
            return None
        if not self.built:
            return None
        cache = self.__dict__.setdefault("_compiled_encoders", {})
        xla = backend == "tensorflow" and self._tf_encoder_xla()
        key = (tower, bool(normalize), xla)
        if key not in cache:
            cache[key] = self._make_compiled_encoder(tower, bool(normalize), backend, xla)
        return cache[key]

    def _tf_encoder_xla(self):
        """Whether TF's compiled encoders use XLA.

        Yes unless `jit_compile=False` was asked for, through `compile` or
        by setting `model.jit_compile`. Keras's "auto" turns XLA off on
        machines with only CPUs, for `fit` and `predict`; the encoders run
        inference only, where XLA on this 2-core CPU was 1.1-2.8x faster for
        the small models (tiny-vit batch 32: 6.0 -> 3.1 ms images, 5.7 ->
        2.7 ms text) and mostly level or faster for ViT-B/32 and RN50, for
        0.5-2 s more compilation per input shape (README, "Performance
        against open_clip").
        """
        requested = getattr(self, "_requested_jit_compile", "auto")
        return True if requested == "auto" else bool(requested)

    def __setattr__(self, name, value):
        if name == "jit_compile":
            # Recorded here, not in a property setter: TF's attribute
            # tracking skips the setter when the value is unchanged
            # (`model.jit_compile = False` where "auto" resolved to False).
            # `compile` sets the resolved value through here too, then puts
            # back what it was asked for.
            super().__setattr__("_requested_jit_compile", value)
        super().__setattr__(name, value)

    def _make_compiled_encoder(self, tower, normalize, backend, xla=False):
        if tower == "image":
            layers = [self.image_encoder, self.image_projection]

            def encode(x):
                return self._encode_image(x, normalize, False)
        else:
            layers = [self.text_encoder, self.text_projection]

            def encode(x):
                return self._encode_text(x, normalize, False)

        if backend == "tensorflow":
            import tensorflow as tf

            return tf.function(encode, jit_compile=xla, reduce_retracing=True)
        import jax

        variables = [v for layer in layers if layer is not None for v in layer.variables]

        def stateless(values, x):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return encode(x)

        jitted = jax.jit(stateless)
        return lambda x: jitted([v.value for v in variables], x)

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or not {"images", "token_ids"} <= set(
            inputs
        ):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs)
            raise ValueError(
                "CLIPModel expects a dict with keys 'images' and 'token_ids'. "
                f"Received: {got}"
            )
        micro = getattr(self, "_micro_batches", None)
        if training and micro and micro > 1:
            image, text = self._encode_in_micro_batches(inputs, micro)
        else:
            image = self.encode_image(inputs["images"], training=training)
            text = self.encode_text(inputs["token_ids"], training=training)
        if training and (
            getattr(self, "_loss_chunk_size", None)
            or distributed.replica_context().active
        ):
            # The loss builds its own (sharded / chunked) logits: never
            # materialise the full matrix here.
            return {"image_embeddings": image, "text_embeddings": text}
        logits = clip_logits(
            image, text, self.logit_scale, self.config.logit_scale_max
        )  # (B_img, B_txt)
        return {
            "logits_per_image": logits,
            "logits_per_text": ops.transpose(logits),
            # Unit embeddings, for the loss across replicas / in chunks.
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

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        context = distributed.replica_context()
        chunk = getattr(self, "_loss_chunk_size", None)
        smoothing = getattr(self, "_label_smoothing", 0.0)
        if context.active or chunk:
            image = y_pred["image_embeddings"]
            text = y_pred["text_embeddings"]
            local = ops.shape(image)[0]
            # Global negatives: this replica's rows against the whole batch.
            all_image = distributed.all_gather(image, context)
            all_text = distributed.all_gather(text, context)
            labels = context.index * local + ops.arange(local, dtype="int32")
            scale = ops.exp(
                ops.minimum(self.logit_scale, self.config.logit_scale_max)
            )
            if chunk:
                loss, i2t, t2i = chunked_contrastive_loss(
                    image, text, scale, chunk, labels, all_image, all_text,
                    label_smoothing=smoothing,
                )
            else:
                loss, i2t, t2i = contrastive_loss(
                    *distributed.sharded_logits(
                        image, text, all_image, all_text, scale
                    ),
                    labels=labels,
                    label_smoothing=smoothing,
                )
        else:
            loss, i2t, t2i = contrastive_loss(
                y_pred["logits_per_image"], y_pred["logits_per_text"],
                label_smoothing=smoothing,
            )
        if context.active and context.backend == "torch":
            # Report the global batch's accuracies on every rank.
            i2t, t2i = distributed.all_reduce_mean(
                [ops.stop_gradient(i2t) + 0.0, ops.stop_gradient(t2i) + 0.0], context
            )
        self.i2t_accuracy.update_state(i2t)
        self.t2i_accuracy.update_state(t2i)
        self.logit_scale_tracker.update_state(ops.exp(self.logit_scale))
        for extra in self.losses:  # e.g. activity regularisers.
            loss = loss + ops.cast(ops.sum(extra), "float32")
        # tf.distribute sums replica gradients: differentiate loss / replicas.
        return distributed.scale_loss(loss, context)

    def train_step(self, *args, **kwargs):
        if keras.backend.backend() == "torch":
            context = distributed.replica_context()
            if context.active:
                return self._torch_distributed_train_step(context, *args)
        return super().train_step(*args, **kwargs)

    def _torch_distributed_train_step(self, context, data):
        """Keras's torch step, with gradients averaged over processes.

        Every rank sees its shard of the global batch; the loss gathers the
        embeddings with a gradient, and averaging the parameter gradients
        makes every rank apply the same update (the data-parallel contract
        that DDP gives plain torch modules).
        """
        import torch

        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=True)
        self.zero_grad()
        loss = self._compute_loss(x=x, y_pred=y_pred, training=True)
        # The logged loss is the global one: the mean over ranks.
        logged = distributed.all_reduce_mean([loss.detach().clone()], context)[0]
        self._loss_tracker.update_state(logged, sample_weight=x["images"].shape[0])
        if self.optimizer is not None:
            loss = self.optimizer.scale_loss(loss)
        loss.backward()
        weights = self.trainable_weights[:]
        grads = [v.value.grad for v in weights]
        grads = [g if g is not None else torch.zeros_like(v.value) for g, v in zip(grads, weights)]
        distributed.all_reduce_mean(grads, context)
        with torch.no_grad():
            self.optimizer.apply(grads, weights)
        return self.compute_metrics(x, None, y_pred, sample_weight=None)

    def compile(
        self,
        optimizer="adamw",
        exclude_from_weight_decay=True,
        loss_chunk_size=None,
        micro_batches=None,
        label_smoothing=0.0,
        **kwargs,
    ):
        """Configures training; takes no `loss` (the model owns its loss).

        Args:
            optimizer: an optimizer; see `keras_clip.make_optimizer` for the
                paper's AdamW with warm-up + cosine schedule.
            exclude_from_weight_decay: no decay on gains, biases, embeddings
                or the temperature (open_clip's trainer does decay the 2-D
                token and positional embeddings). Applied again on every
                `compile`, so it survives `load_model`.
            loss_chunk_size: int or `None`; computes the loss in blocks of
                this many rows, each recomputed in the backward pass, so at
                most `(loss_chunk_size, global batch)` logits are alive at a
                time (`keras_clip.losses.chunked_contrastive_loss`). Same
                value and gradients; for very large batches. Measured to
                save memory on torch; under XLA (TF, JAX) the unrolled blocks
                do not yet (README, "Scaling out").
            micro_batches: int or `None`; negative-preserving gradient
                accumulation: each batch runs through the towers in this many
                slices whose activations are recomputed in the backward pass,
                and the loss sees all of the batch's negatives. Same loss and
                gradients as the whole batch at once, with the activation
                memory of one slice. (Keras's optimizer-level
                `gradient_accumulation_steps` instead averages the gradients
                of separate small batches: fewer negatives, a different loss.)
            label_smoothing: float in [0, 1); both cross-entropies aim at
                `1 - label_smoothing` on the positive plus
                `label_smoothing` spread over the whole (global) batch's
                columns. 0, the paper's loss, by default; the demo uses
                0.2 (README, "Further tries").
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`,
                `steps_per_execution`).
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "CLIPModel computes its own contrastive loss; do not pass "
                f"`loss` to compile(). Received: loss={kwargs['loss']!r}"
            )
        kwargs.pop("loss", None)
        # "auto" resolves per backend (False under torch); remember what was
        # asked so a file saved under torch still compiles with XLA elsewhere.
        requested_jit_compile = kwargs.get("jit_compile", "auto")
        for name, value in (
            ("loss_chunk_size", loss_chunk_size),
            ("micro_batches", micro_batches),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"Expected `{name}` to be a positive int or None. "
                    f"Received: {value!r}"
                )
        self._label_smoothing = _check_label_smoothing(label_smoothing)
        self._loss_chunk_size = loss_chunk_size
        self._micro_batches = micro_batches
        super().compile(optimizer=optimizer, **kwargs)
        self._requested_jit_compile = requested_jit_compile
        self._exclude_from_weight_decay = exclude_from_weight_decay
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
        config["exclude_from_weight_decay"] = self._exclude_from_weight_decay
        config["loss_chunk_size"] = getattr(self, "_loss_chunk_size", None)
        config["micro_batches"] = getattr(self, "_micro_batches", None)
        config["label_smoothing"] = getattr(self, "_label_smoothing", 0.0)
        if "jit_compile" in config:
            config["jit_compile"] = self._requested_jit_compile
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        config = super().get_config()
        config["config"] = self.config.to_dict()
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
