"""Torch fast paths for the CLIP layers and towers.

Eager torch pays Keras's op dispatch on every op of every step (argument
conversion, dtype resolution, layout copies), and `Layer.__call__`'s
bookkeeping on every layer call; at a small model's size that costs more
than the arithmetic. These paths compute each layer's `call` as direct
`torch.nn.functional` calls on the same weights (`functional.py`): same
maths, autograd through them as through any torch code. Each declines
(`NotImplemented`) where the plain Keras code must run: its switch off, a
sublayer with LoRA or quantization, batch norm under `torch.distributed`.
"""

import keras
import torch
import torch.nn.functional as F

from keras_clip.backends import plain_built, register, settings
from keras_clip.backends.torch import functional as fn
from keras_clip.losses import l2_normalize
from keras_clip.models.clip_model import CLIPModel
from keras_clip.models.layers import ResidualAttentionBlock, Transformer
from keras_clip.models.modified_resnet import (
    AttentionPool2d,
    Bottleneck,
    GlobalBatchNormalization,
    ModifiedResNet,
)
from keras_clip.models.text_transformer import TextTransformer, end_of_text_positions
from keras_clip.models.vision_transformer import VisionTransformer


def _register(target, name=None):
    return register(target, "torch", name)


@_register(ResidualAttentionBlock)
def residual_attention_block(block, x):
    """The block as a handful of ATen calls: `F.linear` with the Keras kernel
    transposed as a view (one `addmm`, bias fused), `F.layer_norm` in float32
    as Keras computes it, and `F.scaled_dot_product_attention` on strided
    views of the fused projection (no copies)."""
    attn = block.attn
    if not (
        settings.torch_fused_blocks
        and plain_built(attn.qkv, attn.out_proj, block.mlp_fc, block.mlp_proj)
    ):
        return NotImplemented
    batch, length, width = x.shape
    heads, head_dim = block.num_heads, width // block.num_heads
    qkv = fn.linear(fn.layer_norm(x, block.ln_1), attn.qkv)  # (B, T, 3D)
    qkv = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(
        qkv[0], qkv[1], qkv[2], is_causal=block.causal
    )  # (B, H, T, Dh)
    out = out.transpose(1, 2).reshape(batch, length, width)
    x = x + fn.linear(out, attn.out_proj)  # (B, T, D)
    h = fn.linear(fn.layer_norm(x, block.ln_2), block.mlp_fc)  # (B, T, mlp_ratio * D)
    if block.activation == "quick_gelu":
        h = h * torch.sigmoid(1.702 * h)
    else:
        h = F.gelu(h)
    return x + fn.linear(h, block.mlp_proj)


@_register(Transformer)
def transformer(stack, x):
    """The blocks' `call`s without their `Layer.__call__`s."""
    if stack.remat or not settings.torch_skip_layer_call:
        return NotImplemented
    for block in stack.blocks:
        x = fn.call_sublayer(block, x)  # (B, T, D)
    return x


@_register(GlobalBatchNormalization)
def global_batch_normalization(norm, inputs, training=None, mask=None):
    """One fused batch-norm kernel (`functional.batch_norm`) on the NCHW view."""
    if not (
        settings.torch_fused_blocks
        and mask is None
        and fn.batch_norm_fusable(norm, inputs.ndim)
    ):
        return NotImplemented
    return fn.batch_norm(norm, inputs.movedim(-1, 1), bool(training)).movedim(1, -1)


def _convs_and_norms(block):
    pairs = [
        (block.conv1, block.bn1),
        (block.conv2, block.bn2),
        (block.conv3, block.bn3),
        (block.downsample_conv, block.downsample_bn),
    ]
    return [p for p in pairs if p[0] is not None]


def _fusable(pairs):
    return settings.torch_fused_blocks and all(
        plain_built(conv) and fn.batch_norm_fusable(norm, 4) for conv, norm in pairs
    )


@_register(Bottleneck)
def bottleneck(block, x, training=None):
    """The block on the NCHW view of its NHWC input: `F.conv2d` with each
    kernel as `(out, in, kh, kw)`, the fused batch norm, `F.avg_pool2d`.

    Keras's torch `Conv2D` copies its input twice per call (into contiguous
    NCHW, then into channels-last memory) and its pooling transposes too;
    here no layout copies are made."""
    if not _fusable(_convs_and_norms(block)):
        return NotImplemented
    training = bool(training)
    x = x.movedim(-1, 1)  # (B, C, H, W), a view
    identity = x
    # In place on each batch norm's fresh output (its backward needs its
    # input, not its output), as open_clip's `ReLU(inplace=True)`.
    out = torch.relu_(fn.conv_bn(block.conv1, block.bn1, x, training))
    out = torch.relu_(fn.conv_bn(block.conv2, block.bn2, out, training, padding=1))
    if block.pool is not None:
        out = F.avg_pool2d(out, block.stride)
    out = fn.conv_bn(block.conv3, block.bn3, out, training)  # (B, 4F, H/s, W/s)
    if block.downsample_conv is not None:
        if block.downsample_pool is not None:
            identity = F.avg_pool2d(identity, block.stride)
        identity = fn.conv_bn(
            block.downsample_conv, block.downsample_bn, identity, training
        )
    return torch.relu_(out.add_(identity)).movedim(1, -1)


@_register(AttentionPool2d)
def attention_pool(pool, x):
    """At the small maps this pool sees, Keras's eager dispatch of its ~12
    ops costs more than the attention: direct torch calls."""
    if not (
        settings.torch_fused_blocks
        and plain_built(pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj)
    ):
        return NotImplemented
    batch, n = x.shape[0], pool.spatial_size**2
    heads, head_dim = pool.num_heads, pool.width // pool.num_heads
    x = x.reshape(batch, n, pool.width)  # (B, N, C)
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
    x = x + fn.value(pool.positional_embedding, x).to(x.dtype)  # (B, N+1, C)

    def heads_first(h, length):  # (B, T, C) -> (B, H, T, Dh)
        return h.view(batch, length, heads, head_dim).transpose(1, 2)

    q = heads_first(fn.linear(x[:, :1], pool.q_proj), 1)
    k = heads_first(fn.linear(x, pool.k_proj), n + 1)
    v = heads_first(fn.linear(x, pool.v_proj), n + 1)
    out = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, Dh)
    return fn.linear(out.transpose(1, 2).reshape(batch, pool.width), pool.c_proj)


def _stem_pairs(tower):
    convs = [layer for layer in tower.stem if isinstance(layer, keras.layers.Conv2D)]
    norms = [
        layer for layer in tower.stem if isinstance(layer, GlobalBatchNormalization)
    ]
    return list(zip(convs, norms))


@_register(ModifiedResNet)
def modified_resnet(tower, images, training=None):
    """The stem as direct calls on the NCHW view (as `bottleneck` runs a
    block), then the blocks' and the pool's `call`s."""
    remat = getattr(tower, "remat", False)
    pairs = _stem_pairs(tower)
    fused_stem = _fusable(pairs)
    if not fused_stem and (remat or not settings.torch_skip_layer_call):
        return NotImplemented
    if fused_stem:
        x = images.movedim(-1, 1)
        for conv, norm in pairs:
            x = torch.relu_(
                fn.conv_bn(
                    conv, norm, x, bool(training), stride=conv.strides[0], padding=1
                )
            )
        x = F.avg_pool2d(x, 2).movedim(1, -1)  # (B, S/4, S/4, width)
    else:
        x = tower.stem_call(images, training)
    for block in tower.blocks:
        if remat:
            x = keras.remat(lambda y, b=block: b(y, training=training))(x)
        else:
            x = fn.call_sublayer(block, x, training=training)
    return fn.call_sublayer(tower.attnpool, x)  # (B, output_dim)


@_register(VisionTransformer)
def vision_transformer(tower, images):
    """The tower's own ops as direct torch calls around the blocks: the patch
    convolution as one `F.conv2d` on the NCHW view of the images; its
    `(B, D, G, G)` output flattened to `(B, G * G, D)` orders patches row by
    row as the Keras path does."""
    if not (
        settings.torch_fused_blocks
        and plain_built(tower.patch_embedding, tower.ln_pre, tower.ln_post)
    ):
        return NotImplemented
    images = keras.ops.convert_to_tensor(images)
    kernel = fn.conv_kernel(tower.patch_embedding, images)
    x = F.conv2d(images.movedim(-1, 1), kernel, stride=tower.patch_size)  # (B, D, G, G)
    x = x.flatten(2).transpose(1, 2)  # (B, N, D)
    cls = fn.value(tower.class_embedding, x).to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)  # (B, N + 1, D)
    x = x + fn.value(tower.positional_embedding, x).to(x.dtype)
    x = fn.layer_norm(x, tower.ln_pre)
    x = fn.call_sublayer(tower.transformer, x)  # (B, N + 1, D)
    return fn.layer_norm(x[:, 0], tower.ln_post)  # (B, D)


def _end_of_text_positions(token_ids, eot_token_id):
    is_eot = token_ids == eot_token_id
    first_eot = is_eot.int().argmax(dim=1)
    last_token = token_ids.shape[1] - 1 - (token_ids != 0).int().flip(1).argmax(dim=1)
    return torch.where(is_eot.any(dim=1), first_eot, last_token).int()


@_register(end_of_text_positions)
def end_of_text_positions_torch(token_ids, eot_token_id):
    """The same rule as direct torch calls (Keras's eager dispatch of the
    eight ops costs more than they compute)."""
    if not settings.torch_fused_blocks or isinstance(token_ids, keras.KerasTensor):
        return NotImplemented
    return _end_of_text_positions(keras.ops.convert_to_tensor(token_ids), eot_token_id)


@_register(TextTransformer)
def text_transformer(tower, token_ids):
    """Token lookup, positions, end-of-text pooling and the final layer norm
    as direct torch calls around the blocks."""
    if not (
        settings.torch_fused_blocks
        and plain_built(tower.token_embedding, tower.ln_final)
    ):
        return NotImplemented
    token_ids = keras.ops.convert_to_tensor(token_ids)
    length = token_ids.shape[1]
    table = fn.value(tower.token_embedding.embeddings, token_ids)
    dtype = getattr(torch, tower.token_embedding.compute_dtype)
    x = F.embedding(token_ids, table).to(dtype)  # (B, L, D)
    x = x + fn.value(tower.positional_embedding, x)[:length].to(x.dtype)
    x = fn.call_sublayer(tower.transformer, x)  # (B, L, D)
    positions = _end_of_text_positions(token_ids, tower.eot_token_id)
    x = x[torch.arange(x.shape[0], device=x.device), positions]  # (B, D)
    return fn.layer_norm(x, tower.ln_final)


def _project(layer, features):
    """A bias-free projection `Dense` as one `F.linear` (the kernel cast to
    the features' dtype, as the autocast scope would)."""
    if settings.torch_fused_blocks and plain_built(layer):
        return fn.linear(keras.ops.convert_to_tensor(features), layer)
    return layer(features)


def _encode(tower, projection, inputs, normalize, training):
    if isinstance(inputs, keras.KerasTensor) or not (
        settings.torch_skip_tower_call or settings.torch_fused_blocks
    ):
        return NotImplemented  # a symbolic call runs through `__call__`s
    features = fn.tower_call(tower, inputs, training)  # (B, W)
    if projection is not None:
        features = _project(projection, features)  # (B, E)
    return l2_normalize(features) if normalize else features


@_register(CLIPModel._encode_image, "torch.encode_image")
def encode_image(model, images, normalize, training):
    """The tower's `call` without `Layer.__call__` in inference
    (`functional.tower_call`), the projection as one `F.linear`."""
    return _encode(
        model.image_encoder, model.image_projection, images, normalize, training
    )


@_register(CLIPModel._encode_text, "torch.encode_text")
def encode_text(model, token_ids, normalize, training):
    """As `encode_image`."""
    return _encode(
        model.text_encoder, model.text_projection, token_ids, normalize, training
    )
