"""Small image-caption sets that ship inside registry packages (no downloads).

See `keras_clip/datasets/NOTICE` for their licences.
"""

from keras_clip.datasets.emoji import EmojiPairs
from keras_clip.datasets.emoji import find_noto_font
from keras_clip.datasets.emoji import load_noto_emoji
from keras_clip.datasets.emoji import load_twemoji
from keras_clip.datasets.emoji import noto_dataset
from keras_clip.datasets.emoji import twemoji_dataset
