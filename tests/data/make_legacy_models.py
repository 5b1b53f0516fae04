"""Writes tests/data/main_2026_12_06_*.keras with the pre-reshape main (9341679)."""
import os, sys, numpy as np, keras
import keras_clip
from keras_clip import CLIPModel, CLIPTokenizer
out = sys.argv[1]
caps = ["a red square", "a blue circle", "a green triangle", "two yellow stars", "a smiling face"] * 4
tok = CLIPTokenizer.train_from_captions(caps, vocabulary_size=600, context_length=16)
rng = np.random.default_rng(0)
for preset in ("tiny-vit", "tiny-resnet"):
    keras.utils.set_random_seed(0)
    model = CLIPModel.from_preset(preset, tokenizer=tok, vocabulary_size=tok.vocabulary_size)
    model.compile(optimizer=keras_clip.make_optimizer(model, learning_rate=1e-3, total_steps=10))
    images = rng.uniform(size=(8, 32, 32, 3)).astype("float32")
    ids = np.asarray(tok(caps[:8]))
    model.fit({"images": images, "token_ids": ids}, epochs=1, batch_size=8, verbose=0)
    path = os.path.join(out, f"main_2026_12_06_{preset}.keras")
    model.save(path)
    img = np.asarray(model.encode_image(images))
    txt = np.asarray(model.encode_text(ids))
    np.savez(path.replace(".keras", ".npz"), images=images, token_ids=ids, image_embeddings=img, text_embeddings=txt,
             logit_scale=np.asarray(model.logit_scale.numpy() if hasattr(model.logit_scale,'numpy') else model.logit_scale),
             iterations=int(model.optimizer.iterations.numpy()))
    print(preset, os.path.getsize(path), model.count_params())
