"""Small image-caption sets that ship inside registry packages (no downloads).

See `keras_clip/data/datasets/NOTICE` for their licences.
"""

from keras_clip.data.datasets.emoji import EmojiPairs
from keras_clip.data.datasets.emoji import find_noto_font
from keras_clip.data.datasets.emoji import load_noto_emoji
from keras_clip.data.datasets.emoji import load_twemoji
from keras_clip.data.datasets.emoji import noto_dataset
from keras_clip.data.datasets.emoji import twemoji_dataset
