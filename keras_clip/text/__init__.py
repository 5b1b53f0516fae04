"""Text: CLIP's byte-level BPE tokenizer (eager and in `tf.data` graphs), its
cleaning rules, and BPE training on a caption set.

The eager tokenizer needs no TensorFlow; the in-graph one needs TensorFlow and
tensorflow-text and is imported only when used.
"""

from keras_clip.text.tokenizer import CLIPTokenizer
